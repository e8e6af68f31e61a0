"""The command line of `run_mner.py` and `run_msa.py`, one concern per module:

- `command_line`: the argument dataclasses read by `transformers.HfArgumentParser`, the parser and argument files;
- `defaults`: what an argument left unset becomes (quick start on a bundled sample, the paper's settings elsewhere);
- `resolution`: `parse_args`, which resolves the defaults and checks the arguments into the run's namespace;
- `tasks`: what distinguishes the two tasks (`TaskInfo`) and their datasets.
"""

from .command_line import (
    LORA_ARGUMENTS,
    MUSE_ARGUMENTS,
    DataArguments,
    ModelArguments,
    MuSEArguments,
    PeftArguments,
    RunArguments,
    build_parser,
    read_args_file,
)
from .defaults import (
    OFFLINE_TEXT_MODEL_HUB_ID,
    PAPER_DEFAULTS,
    QUICKSTART_DEFAULTS,
    TEXT_ENCODER_DEFAULTS,
    offline_text_model_path,
    text_encoder_hub_id,
)
from .resolution import LoadedConfigs, parse_args, resolve_defaults
from .tasks import DATASET_TITLES, MNER_DATASETS, MSA_DATASETS, TaskInfo

__all__ = [
    "DATASET_TITLES",
    "LORA_ARGUMENTS",
    "MNER_DATASETS",
    "MSA_DATASETS",
    "MUSE_ARGUMENTS",
    "OFFLINE_TEXT_MODEL_HUB_ID",
    "PAPER_DEFAULTS",
    "QUICKSTART_DEFAULTS",
    "TEXT_ENCODER_DEFAULTS",
    "DataArguments",
    "LoadedConfigs",
    "ModelArguments",
    "MuSEArguments",
    "PeftArguments",
    "RunArguments",
    "TaskInfo",
    "build_parser",
    "offline_text_model_path",
    "parse_args",
    "read_args_file",
    "resolve_defaults",
    "text_encoder_hub_id",
]
