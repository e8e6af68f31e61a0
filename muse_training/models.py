"""The model of a run: a fresh MuSE around pretrained towers, or a trained MuSE (``--model_name_or_path``) whose head
follows the data's label set."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import datasets
from accelerate.logging import get_logger

from modeling_muse import MuSEConfig, MuSEPreTrainedModel

from .logs import silenced

__all__ = ["align_labels", "build_model", "enable_gradient_checkpointing", "load_model", "model_label_names"]

logger = get_logger(__name__)


def model_label_names(model: MuSEPreTrainedModel) -> list[str]:
    """The model's labels in id order."""
    return [model.config.id2label[index] for index in range(model.config.num_labels)]


def align_labels(raw_datasets: datasets.DatasetDict, column: str, label_names: Sequence[str]) -> datasets.DatasetDict:
    """The splits with ``column`` (a ``ClassLabel``, or a list of them) renumbered to ``label_names``' order.

    For a trained model whose labels are the data's in another order: the model keeps its head, the data follows.
    """
    feature = raw_datasets[next(iter(raw_datasets))].features[column]
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
        features = dataset.features.copy()
        features[column] = datasets.List(target) if is_list else target
        aligned[split] = dataset.map(renumber, batched=True, features=features, desc=f"{split}: the model's label ids")
    return datasets.DatasetDict(aligned)


def load_model(
    args: argparse.Namespace,
    model_class: type[MuSEPreTrainedModel],
    label_names: Sequence[str],
    head_modules: Sequence[str],
) -> MuSEPreTrainedModel:
    """The run's model (`build_model`), with gradient checkpointing on for ``--gradient_checkpointing``, and with LoRA
    for ``--use_peft`` (`muse_training.lora.lora_model_for_run`, a `peft.PeftModel`)."""
    model = build_model(args, model_class, label_names, head_modules)
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
    label_names: Sequence[str],
    head_modules: Sequence[str],
) -> MuSEPreTrainedModel:
    """The run's model, labelled with ``label_names``.

    Without ``--model_name_or_path``: a fresh MuSE around the pretrained towers (`from_text_vision_pretrained`). With
    it: that trained model, all of it, when its labels are the data's (in any order: the caller aligns the data with
    `model_label_names`); otherwise its ``head_modules`` are replaced by newly initialised ones for ``label_names``,
    with a warning naming the old and the new labels.
    """
    id2label = dict(enumerate(label_names))
    label2id = {label: index for index, label in id2label.items()}
    if args.model_name_or_path is None:
        # This script trains the new layers right away, so the reminder to train them before predicting does not apply.
        with silenced("modeling_muse.pretrained_towers"):
            return model_class.from_text_vision_pretrained(
                args.text_model_name_or_path,
                args.vision_model_name_or_path,
                pretrained_vision=args.pretrained_vision,
                id2label=id2label,
                label2id=label2id,
                **args.muse_config,
            )
    # An adapter folder's weights go onto its base model (`load_model`), which is loaded here.
    source = getattr(args, "peft_base_model", None) or args.model_name_or_path
    config = MuSEConfig.from_pretrained(source)
    if args.do_train and not config.include_regularizers:
        # A model saved for serving has no decoders; eq. 14 still weights them, so training builds them afresh.
        config.include_regularizers = True
        if config.has_caption_decoder or config.has_generation_decoder:
            logger.warning(
                "--model_name_or_path %s was saved without its training-only decoders (image captioning, "
                "PixelCNN++): they start newly initialised (save with --keep_regularizers to continue them).",
                source,
            )
    model = model_class.from_pretrained(source, config=config)
    old_names = model_label_names(model)
    if sorted(old_names) == sorted(label_names):
        return model
    if getattr(args, "use_peft", False):
        raise SystemExit(
            f"--use_peft: the model {source} was trained for the labels {old_names}, the data has {list(label_names)}. "
            f"A LoRA adapter keeps its base model's head, so its labels must be the data's (in any order); train "
            f"without --use_peft to replace the head."
        )
    logger.warning(
        "--model_name_or_path %s was trained for the labels %s, the data has %s: its head (%s) is replaced by a "
        "newly initialised one for the data's labels (the rest of the model is kept).",
        args.model_name_or_path,
        old_names,
        list(label_names),
        ", ".join(head_modules),
    )
    config = model.config
    config.id2label, config.label2id = id2label, label2id
    with silenced("modeling_muse.modeling"):
        relabelled = model_class(config)
    kept = {
        name: value
        for name, value in model.state_dict().items()
        if not name.startswith(tuple(f"{head}." for head in head_modules))
    }
    missing, unexpected = relabelled.load_state_dict(kept, strict=False)
    stray = [name for name in missing if not name.startswith(tuple(f"{head}." for head in head_modules))]
    if stray or unexpected:
        raise RuntimeError(f"Relabelling the model left weights unmatched: missing {stray}, unexpected {unexpected}.")
    return relabelled
