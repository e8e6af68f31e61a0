"""From the parsed command line to a checked run: which data source, what unset arguments become
(`resolve_defaults`, from the tables of `defaults`), the checks across arguments, and the `MuSEConfig` fields the run
sets, validated against the text encoder's configuration before any data or weights are loaded.

The configurations loaded for those checks (the text encoder's, or the trained model's) are handed on in
`LoadedConfigs`, so that `muse_training.models.build_model` builds the model from them instead of loading them again.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig

from configuration_muse import ABLATION_VARIANTS, MuSEConfig
from datasets_scripts.mvsa import LABEL_FILE
from datasets_scripts.umt import UMT_SPLIT_FILES

from ..lora import DEFAULT_LORA_ALPHA, DEFAULT_LORA_DROPOUT, DEFAULT_LORA_R, adapter_base_model
from .command_line import (
    ARGS_FILE_SUFFIXES,
    CHECKPOINT_ARGUMENTS,
    DATA_FILE_ARGUMENTS,
    LORA_ARGUMENTS,
    MUSE_ARGUMENTS,
    build_parser,
    read_args_file,
)
from .defaults import PAPER_DEFAULTS, QUICKSTART_DEFAULTS, TEXT_ENCODER_DEFAULTS, offline_text_model_path
from .tasks import MNER_DATASETS, MSA_DATASETS, SAMPLE_DATASETS, SAMPLES_WITHOUT_IMAGES, TaskInfo

__all__ = ["LoadedConfigs", "muse_config_overrides", "parse_args", "resolve_defaults"]

# Arguments that must be positive integers when given.
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
    "shuffle_buffer_size",
    "preprocessing_num_workers",
)


@dataclass(frozen=True)
class LoadedConfigs:
    """The configurations `parse_args` loaded to check the run, for `build_model` to build the model from.

    Attributes:
        text_config: the text encoder's configuration (a fresh MuSE), else None.
        model_config: the trained MuSE's configuration (``--model_name_or_path``, or the base model of an adapter
            folder given there), else None.
    """

    text_config: PreTrainedConfig | None = None
    model_config: MuSEConfig | None = None


def parse_args(task: TaskInfo, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (or an argument file), and fill unset arguments with `resolve_defaults`.

    Returns one namespace holding every argument, plus ``task``, ``data_source`` (``"paper"`` for the paper's datasets
    and samples, ``"dataset"`` for a Hub id or folder, ``"files"`` for --train_file etc.), ``is_quickstart``,
    ``defaults_used`` (what was filled in), ``peft_base_model`` (the base model of an adapter folder given as
    --model_name_or_path, else None), ``muse_config`` (the `MuSEConfig` fields this run sets) and ``loaded_configs``
    (the configurations loaded to check them, `LoadedConfigs`). Every problem is reported through ``parser.error``,
    naming the argument and the fix.
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
    args.muse_config, args.loaded_configs = muse_config_overrides(parser, args, explicit)
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
    if args.streaming and args.data_source == "paper":
        parser.error(
            f"--streaming reads your own data (--dataset_name <folder or Hub id>, --train_file etc.); the paper's "
            f"dataset {args.dataset_name} is converted once and held: drop --streaming."
        )
    if args.label_names is not None and args.data_source == "paper":
        parser.error(
            f"--label_names names the labels of your own streamed data; the paper's dataset {args.dataset_name} "
            f"has its own: drop --label_names."
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
    if args.return_entity_level_metrics and args.task != "mner":
        parser.error(
            "--return_entity_level_metrics reports NER's entity types (run_mner.py); run_msa.py reports every "
            "label's F1 anyway: drop it."
        )
    if args.ignore_mismatched_sizes and args.model_name_or_path is None:
        parser.error("--ignore_mismatched_sizes applies to the model of --model_name_or_path, which is not given.")
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
    parser: argparse.ArgumentParser, args: argparse.Namespace, explicit: set[str]
) -> tuple[dict[str, Any], LoadedConfigs]:
    """The `MuSEConfig` fields this run sets, and the configurations loaded to check them.

    ``explicit``: the arguments given on the command line or in the argument file (before `resolve_defaults`).

    Precedence: a value given on the command line (or in the argument file), then the ``--variant``'s overrides,
    then (on a bundled sample) the quick-start value; anything else keeps MuSEConfig's default. A value that
    contradicts the variant is an error. The result is validated against the text encoder's configuration here, so
    that a bad value stops the run before any data or weights are loaded. A trained MuSE model
    (``--model_name_or_path``) keeps its own configuration: setting its architecture here is an error.
    """
    variant = ABLATION_VARIANTS[args.variant]
    given = {name: getattr(args, name) for name in MUSE_ARGUMENTS if name in explicit}
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
    return overrides, LoadedConfigs(text_config=text_config)


def _check_checkpoint(
    parser: argparse.ArgumentParser, args: argparse.Namespace, given: dict[str, Any], explicit: set[str]
) -> tuple[dict[str, Any], LoadedConfigs]:
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
    return {}, LoadedConfigs(model_config=config)
