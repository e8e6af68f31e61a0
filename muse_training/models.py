"""The model of a run: a fresh MuSE around pretrained towers, or a trained MuSE (``--model_name_or_path``) whose head
follows the data's label set."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

import datasets
from accelerate.logging import get_logger

from modeling_muse import MuSEConfig, MuSEPreTrainedModel
from modeling_muse.modeling import ConfigurationWeightsMismatchError

from .arguments import LoadedConfigs
from .logs import held_back, pass_on, silenced

__all__ = [
    "align_labels",
    "build_model",
    "enable_gradient_checkpointing",
    "load_model",
    "model_label_names",
    "problem_type_of",
]

logger = get_logger(__name__)

# Where transformers logs its report of the weights a checkpoint lacks or has in excess.
_TRANSFORMERS_LOADING_LOGGER = "transformers.modeling_utils"
# The training-only parts of MuSEModel.regularizers (paper eqs. 3-6) as the scripts name them.
_DECODER_PARTS = {
    "caption_decoder": "caption decoder",
    "image_projection": "noisy image projection",
    "generation_decoder": "PixelCNN++ decoder",
    "text_projection": "noisy text projection",
}


def _decoder_part(key: str) -> str | None:
    """The training-only part a state-dict key belongs to, or None for any other weight."""
    parts = key.split(".")
    for index, part in enumerate(parts[:-1]):
        if part == "regularizers" and parts[index + 1] in _DECODER_PARTS:
            return parts[index + 1]
    return None


def _tensor_counts(keys: Sequence[str]) -> str:
    """``"caption decoder (12 tensors), PixelCNN++ decoder (96 tensors)"``: the parts ``keys`` belong to."""
    counts = {part: 0 for part in _DECODER_PARTS}
    for key in keys:
        counts[_decoder_part(key)] += 1
    return ", ".join(f"{_DECODER_PARTS[part]} ({count} tensors)" for part, count in counts.items() if count)


def problem_type_of(config: MuSEConfig) -> str:
    """A sequence-classification model's problem type: ``config.problem_type``, or, unset, what its loss infers
    from one output (regression) or several (single-label classification; `MuSEForSequenceClassification.task_loss`)."""
    if config.problem_type is not None:
        return config.problem_type
    return "regression" if config.num_labels == 1 else "single_label_classification"


def model_label_names(model: MuSEPreTrainedModel) -> list[str]:
    """The model's labels in id order."""
    return [model.config.id2label[index] for index in range(model.config.num_labels)]


def align_labels(
    raw_datasets: datasets.DatasetDict, column: str, label_names: Sequence[str], num_proc: int | None = None
) -> datasets.DatasetDict:
    """The splits with ``column`` (a ``ClassLabel``, or a list of them) renumbered to ``label_names``' order, in
    ``num_proc`` processes (``--preprocessing_num_workers``).

    For a trained model whose labels are the data's in another order: the model keeps its head, the data follows.
    """
    labeled = [split for split in raw_datasets if column in raw_datasets[split].column_names]
    if not labeled:
        return raw_datasets
    feature = raw_datasets[labeled[0]].features[column]
    is_list = not isinstance(feature, datasets.ClassLabel)
    current = list((feature.feature if is_list else feature).names)
    if current == list(label_names):
        return raw_datasets
    new_id = {index: list(label_names).index(name) for index, name in enumerate(current)}
    target = datasets.ClassLabel(names=list(label_names))

    def renumber(batch: dict[str, list]) -> dict[str, list]:
        values = batch[column]
        batch[column] = [[new_id[tag] for tag in tags] for tags in values] if is_list else [new_id[v] for v in values]
        return batch

    aligned = {}
    for split, dataset in raw_datasets.items():
        if split not in labeled:
            aligned[split] = dataset
            continue
        features = dataset.features.copy()
        features[column] = datasets.List(target) if is_list else target
        # A streamed split (IterableDataset) maps lazily, without a progress description or worker processes.
        held = {"desc": f"{split}: the model's label ids", "num_proc": num_proc} if isinstance(dataset, datasets.Dataset) else {}
        aligned[split] = dataset.map(renumber, batched=True, features=features, **held)
    return type(raw_datasets)(aligned)


def load_model(
    args: argparse.Namespace,
    model_class: type[MuSEPreTrainedModel],
    label_names: Sequence[str] | None,
    head_modules: Sequence[str],
    problem_type: str | None = None,
) -> MuSEPreTrainedModel:
    """The run's model (`build_model`), with gradient checkpointing on for ``--gradient_checkpointing``, and with LoRA
    for ``--use_peft`` (`muse_training.lora.lora_model_for_run`, a `peft.PeftModel`)."""
    model = build_model(args, model_class, label_names, head_modules, problem_type, args.loaded_configs)
    if getattr(args, "gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
        logger.info("Gradient checkpointing: activations are recomputed in the backward pass.")
    if getattr(args, "use_peft", False):
        from .lora import lora_model_for_run

        model = lora_model_for_run(args, model, head_modules)
    return model


def enable_gradient_checkpointing(model: MuSEPreTrainedModel) -> None:
    """Switch on activation checkpointing through transformers' entry point (``activation_checkpointing_enable``,
    called ``gradient_checkpointing_enable`` before transformers 5.x deprecated that name)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def build_model(
    args: argparse.Namespace,
    model_class: type[MuSEPreTrainedModel],
    label_names: Sequence[str] | None,
    head_modules: Sequence[str],
    problem_type: str | None = None,
    loaded_configs: LoadedConfigs | None = None,
) -> MuSEPreTrainedModel:
    """The run's model, labelled with ``label_names`` (for regression, the one output's name).

    ``loaded_configs``: the configurations `parse_args` loaded (the text encoder's, or the trained model's), which the
    model is built from instead of loading them again; without them they are loaded here.

    Without ``--model_name_or_path``: a fresh MuSE around the pretrained towers (`from_text_vision_pretrained`). With
    it: that trained model, all of it, when its head fits the data (the same labels in any order: the caller aligns
    the data with `model_label_names`; the same ``problem_type``, a sequence-classification model's
    ``config.problem_type``, when one is given); otherwise its ``head_modules`` are replaced by newly initialised
    ones for ``label_names`` and ``problem_type``, with a warning naming the old and the new head.
    """
    if label_names is None and args.model_name_or_path is None:
        raise SystemExit("The data has no labels, so they must come from a trained model: give --model_name_or_path.")
    id2label = dict(enumerate(label_names or ()))
    if args.model_name_or_path is None:
        text_config = loaded_configs and loaded_configs.text_config
        problem = {"problem_type": problem_type} if problem_type is not None else {}
        # This script trains the new layers right away, so the reminder to train them before predicting does not apply.
        with silenced("modeling_muse.pretrained_towers"):
            return model_class.from_text_vision_pretrained(
                args.text_model_name_or_path,
                args.vision_model_name_or_path,
                pretrained_vision=args.pretrained_vision,
                text_model_kwargs={"config": copy.deepcopy(text_config)} if text_config is not None else None,
                id2label=id2label,
                label2id={label: index for index, label in id2label.items()},
                **problem,
                **args.muse_config,
            )
    # An adapter folder's weights go onto its base model (`load_model`), which is loaded here.
    source = getattr(args, "peft_base_model", None) or args.model_name_or_path
    model = _load_trained_model(args, source, model_class, loaded_configs and loaded_configs.model_config)
    old_names, old_problem = model_label_names(model), problem_type_of(model.config)
    same_problem = problem_type is None or old_problem == problem_type
    # A regression head's one output fits any target; its name is the model's.
    # Data without labels (new posts to tag) takes the trained model's.
    same_labels = label_names is None or sorted(old_names) == sorted(label_names) or problem_type == "regression"
    if same_problem and same_labels:
        return model
    old_head = f"the labels {old_names}" + (f" ({old_problem})" if problem_type is not None else "")
    new_head = f"{list(label_names)}" + (f" ({problem_type})" if problem_type is not None else "")
    if getattr(args, "use_peft", False):
        raise SystemExit(
            f"--use_peft: the model {source} was trained for {old_head}, the data has {new_head}. A LoRA adapter "
            f"keeps its base model's head, so its labels (and problem type) must be the data's (labels in any "
            f"order); train without --use_peft to replace the head."
        )
    logger.warning(
        "--model_name_or_path %s was trained for %s, the data has %s: its head (%s) is replaced by a newly "
        "initialised one for the data's labels (the rest of the model is kept).",
        args.model_name_or_path,
        old_head,
        new_head,
        ", ".join(head_modules),
    )
    return _with_new_head(model, model_class, id2label, head_modules, problem_type)


def _load_trained_model(
    args: argparse.Namespace,
    source: str,
    model_class: type[MuSEPreTrainedModel],
    loaded_config: MuSEConfig | None,
) -> MuSEPreTrainedModel:
    """The trained MuSE model of ``source`` (``--model_name_or_path``, or the base model of the adapter given there),
    with its training-only decoders built afresh for training when it was saved without them."""
    # A copy: the flags set below belong to this model, not to the configuration parse_args checked.
    config = copy.deepcopy(loaded_config) if loaded_config is not None else MuSEConfig.from_pretrained(source)
    # A model saved for serving has no decoders; eq. 14 still weights them, so training builds them afresh.
    rebuilds_decoders = args.do_train and not config.include_regularizers
    config.include_regularizers = config.include_regularizers or args.do_train
    ignore_mismatched_sizes = getattr(args, "ignore_mismatched_sizes", False)
    # transformers reports each weight it initialises (some 85 lines for the decoders); the decoders' are told here
    # in one line, and its report is shown only when it says more than that.
    try:
        with held_back(_TRANSFORMERS_LOADING_LOGGER) as loading_report:
            model, loading = model_class.from_pretrained(
                source, config=config, output_loading_info=True, ignore_mismatched_sizes=ignore_mismatched_sizes
            )
    except ConfigurationWeightsMismatchError as error:
        raise SystemExit(
            f"--model_name_or_path {source}: {error} On the command line: --ignore_mismatched_sizes."
        ) from error
    decoder_keys = [key for key in loading["missing_keys"] if _decoder_part(key) is not None]
    if rebuilds_decoders and decoder_keys:
        logger.warning(
            "--model_name_or_path %s was saved without its training-only decoders: newly initialised %s (save with "
            "--keep_regularizers to continue them).",
            source,
            _tensor_counts(decoder_keys),
        )
    only_decoders_missing = len(decoder_keys) == len(loading["missing_keys"]) and not loading["unexpected_keys"]
    explained = rebuilds_decoders and only_decoders_missing
    pass_on(
        _TRANSFORMERS_LOADING_LOGGER,
        [record for record in loading_report if not (explained and "LOAD REPORT" in record.getMessage())],
    )
    return model


def _with_new_head(
    model: MuSEPreTrainedModel,
    model_class: type[MuSEPreTrainedModel],
    id2label: dict[int, str],
    head_modules: Sequence[str],
    problem_type: str | None,
) -> MuSEPreTrainedModel:
    """``model`` with its ``head_modules`` newly initialised for ``id2label`` (and ``problem_type``), every other
    weight kept."""
    config = model.config
    config.id2label, config.label2id = id2label, {label: index for index, label in id2label.items()}
    if problem_type is not None:
        config.problem_type = problem_type
    with silenced("modeling_muse.modeling"):
        relabelled = model_class(config)
    heads = tuple(f"{head}." for head in head_modules)
    kept = {name: value for name, value in model.state_dict().items() if not name.startswith(heads)}
    missing, unexpected = relabelled.load_state_dict(kept, strict=False)
    stray = [name for name in missing if not name.startswith(heads)]
    if stray or unexpected:
        raise RuntimeError(f"Relabelling the model left weights unmatched: missing {stray}, unexpected {unexpected}.")
    return relabelled
