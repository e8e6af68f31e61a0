"""LoRA adapters for MuSE (``--use_peft``) with the `peft` library: which layers get low-rank updates, which are trained
in full, and how an adapter folder is saved, found and loaded back onto its base MuSE model.

A LoRA run adapts a trained MuSE model (``--model_name_or_path``) to new data. The frozen base weights W of each
targeted Linear layer get a trainable update, W x + (alpha / r) B A x with A (r x in) and B (out x r) (Hu et al.,
*LoRA*, eq. 3); by default the targets are the CrossTransformer's attention and feed-forward projections (qkv,
attention_output, intermediate, output; eqs. 8-13) and the text encoder's attention query and value (eq. 1). The
parts that are small and task-specific are trained in full and saved with the adapter (peft's ``modules_to_save``):
the task head (the NER emission layer and its CRF, or the sentiment classifier) and the fusion layer. The image tower
is left out unless ``--lora_target_modules`` names its layers.

The embedding regularizers (the caption decoder and PixelCNN++ with their noisy projections, eqs. 3-6) stay trainable
in full, as in full training, but are not part of the adapter: they are training-only (`MuSEModel` never runs them
outside training), so what the adapter serves does not depend on them, and saving them would make the adapter as
large as a third of the model at the paper's size. Trained with the embeddings they regularize, L_it and L_ti keep
their meaning in eq. 14 (each decoder learns to read the adapted embedding); frozen decoders of the old data would
instead pull the adapted embeddings back towards it. Checkpoints for resuming (``--checkpointing_steps``) hold them,
since `accelerate.Accelerator.save_state` saves the whole model.

`peft` is an optional dependency (the ``peft`` extra): it is imported only where an adapter is built or loaded.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from accelerate.logging import get_logger
from torch import nn

from modeling_muse import MuSEModel, MuSEPreTrainedModel
from modeling_muse.hub import is_hub_id

from .markdown import code_block, code_span

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "CROSS_TRANSFORMER_TARGETS",
    "DEFAULT_LORA_ALPHA",
    "DEFAULT_LORA_DROPOUT",
    "DEFAULT_LORA_R",
    "PEFT_INSTALL",
    "AdapterCounts",
    "adapter_base_model",
    "adapter_card_section",
    "adapter_counts",
    "apply_lora",
    "build_lora_config",
    "default_target_modules",
    "is_adapter_model",
    "load_adapter",
    "load_adapter_weights",
    "lora_model_for_run",
    "lora_modules_to_save",
    "require_peft",
    "save_adapter",
    "text_encoder_targets",
]

logger = get_logger(__name__)

PEFT_INSTALL = 'pip install "muse-hf[peft]"'
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
DEFAULT_LORA_R = 8
DEFAULT_LORA_ALPHA = 16
# MuSE's own dropout (the CrossTransformer's and the text encoder's) is 0.1, and LoRA adapts it on small datasets (a
# few thousand posts): 0.1 is the LoRA paper's setting for models of this size; 0.05 is usual for far larger ones.
DEFAULT_LORA_DROPOUT = 0.1
# The Linear layers of a CrossTransformerLayer: attention in and out (eq. 7's MHA), feed-forward in and out (FFN).
CROSS_TRANSFORMER_TARGETS = ("qkv", "attention_output", "intermediate", "output")
# Attention query/value names of text encoders that peft's own table (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
# does not list, tried in this order: DistilBERT's, the *_proj convention, T5's.
_FALLBACK_TEXT_TARGETS = (("query", "value"), ("q_lin", "v_lin"), ("q_proj", "v_proj"), ("q", "v"))


def require_peft() -> ModuleType:
    """The `peft` module, or an `ImportError` that says how to install it."""
    try:
        import peft
    except ImportError as error:
        raise ImportError(
            f"LoRA adapters (--use_peft, or an adapter folder as --model_name_or_path) need the peft library: "
            f"{PEFT_INSTALL}."
        ) from error
    return peft


def is_adapter_model(model: nn.Module) -> bool:
    """Whether ``model`` is a `peft.PeftModel` (told without importing peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _muse_prefix(model: MuSEPreTrainedModel) -> str:
    # Module paths inside a task model start with "muse."; inside a bare MuSEModel they start at its children.
    return "" if isinstance(model, MuSEModel) else f"{model.base_model_prefix}."


def text_encoder_targets(model: MuSEPreTrainedModel) -> tuple[str, ...]:
    """The leaf names of the text encoder's attention query and value Linear layers.

    peft's default LoRA targets for the encoder's ``model_type`` when it lists them (BERT, RoBERTa, XLM-R: ``query``,
    ``value``; DeBERTa-v2: ``query_proj``, ``value_proj``), else the first pair of common names that the encoder has.
    An encoder with none of them is an error naming ``--lora_target_modules``.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    backbone = model.base_muse.text_encoder.backbone
    linear_names = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if isinstance(module, nn.Linear)}
    model_type = model.config.text_config.model_type
    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    candidates = [tuple(known)] if known else list(_FALLBACK_TEXT_TARGETS)
    for names in candidates:
        if set(names) <= linear_names:
            return tuple(names)
    raise ValueError(
        f"The text encoder ({model_type}, {type(backbone).__name__}) has no Linear layers named "
        f"{' or '.join('/'.join(names) for names in candidates)} to put LoRA on (its Linear layers are "
        f"{sorted(linear_names)}): name its attention projections with --lora_target_modules."
    )


def default_target_modules(model: MuSEPreTrainedModel) -> str:
    """The default LoRA targets as one regular expression that peft matches against full module paths.

    The CrossTransformer layers' qkv, attention_output, intermediate and output, and the text encoder's query and
    value (`text_encoder_targets`), each anchored at its own module path, so that the image tower's layers of the same
    names (a ViT's ``qkv``, a transformers tower's ``query``) are never matched.
    """
    prefix = re.escape(_muse_prefix(model))
    patterns = []
    if model.base_muse.cross_transformer is not None:
        patterns.append(rf"{prefix}cross_transformer\.layers\.\d+\.(?:{'|'.join(CROSS_TRANSFORMER_TARGETS)})")
    if model.base_muse.text_encoder is not None:
        names = "|".join(re.escape(name) for name in text_encoder_targets(model))
        patterns.append(rf"{prefix}text_encoder\.backbone\.(?:.+\.)?(?:{names})")
    if not patterns:
        raise ValueError(
            "This MuSE model has neither a CrossTransformer nor a text encoder for the default LoRA targets: name the "
            "layers with --lora_target_modules."
        )
    return patterns[0] if len(patterns) == 1 else "(?:" + "|".join(patterns) + ")"


def lora_modules_to_save(model: MuSEPreTrainedModel, head_modules: Sequence[str]) -> list[str]:
    """The modules trained in full and saved with the adapter: the task head(s) and the fusion layer.

    peft picks a ``modules_to_save`` entry wherever a module path *ends with* it, so a name that also ends a path
    inside it (the sentiment head ``classifier`` holds a Linear ``classifier``) would wrap both; such a module is
    given by its sub-modules with parameters instead.
    """
    paths = [name for name, _ in model.named_modules()]
    wanted = [*head_modules, f"{_muse_prefix(model)}fusion"]
    selected: list[str] = []
    while wanted:
        path = wanted.pop(0)
        module = model.get_submodule(path)
        if sum(other.endswith(path) for other in paths) == 1:
            selected.append(path)
            continue
        children = [f"{path}.{name}" for name, child in module.named_children() if any(True for _ in child.parameters())]
        if any(True for _ in module.parameters(recurse=False)) or not children:
            raise ValueError(f"{path!r} cannot be told apart from other module paths ending the same way for peft.")
        wanted = children + wanted
    return selected


def build_lora_config(
    model: MuSEPreTrainedModel,
    head_modules: Sequence[str],
    r: int = DEFAULT_LORA_R,
    alpha: float = DEFAULT_LORA_ALPHA,
    dropout: float = DEFAULT_LORA_DROPOUT,
    target_modules: Sequence[str] | str | None = None,
) -> Any:
    """The `peft.LoraConfig` of a MuSE model: `default_target_modules` unless ``target_modules`` is given, and
    `lora_modules_to_save`.

    ``target_modules`` (``--lora_target_modules``): module names as peft matches them (a module whose path is the
    name or ends with ``.<name>``, e.g. ``qkv`` anywhere, image tower included, or a full path), or one regular
    expression matched against whole module paths. Each must match a module of ``model``.
    """
    peft = require_peft()
    if isinstance(target_modules, (list, tuple)) and len(target_modules) == 1 and _is_pattern(target_modules[0]):
        target_modules = target_modules[0]
    if target_modules is None:
        targets: list[str] | str = default_target_modules(model)
    elif isinstance(target_modules, str):
        targets = target_modules
        if not any(re.fullmatch(targets, name) for name, _ in model.named_modules()):
            raise ValueError(f"--lora_target_modules {targets!r} matches no module path of the model.")
    else:
        targets = list(target_modules)
        paths = [name for name, _ in model.named_modules()]
        unmatched = [t for t in targets if not any(p == t or p.endswith(f".{t}") for p in paths)]
        if unmatched:
            raise ValueError(
                f"--lora_target_modules: {unmatched} name no module of the model; give module names such as "
                f"{', '.join(CROSS_TRANSFORMER_TARGETS)} or full paths (muse.cross_transformer.layers.0.qkv), or one "
                f"regular expression."
            )
    return peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=lora_modules_to_save(model, head_modules),
        bias="none",
        # No peft task type: peft's token/sequence classification wrappers call the model with inputs_embeds and
        # without pixel_values, and add their own modules_to_save; MuSE's forward is called as it is.
        task_type=None,
    )


def _is_pattern(text: str) -> bool:
    return re.fullmatch(r"[\w.]+", text) is None


def _train_regularizers(peft_model: nn.Module) -> None:
    # Trained in full as in full training but kept out of the adapter (see the module docstring).
    regularizers = peft_model.get_base_model().base_muse.regularizers
    if regularizers is not None:
        regularizers.requires_grad_(True)


def _freeze_batch_norm_statistics(model: nn.Module) -> None:
    """Run every batch norm whose weights are frozen (the image tower's) with the base's running statistics, in
    training too, and never update them.

    Those statistics are buffers of the base model, which the adapter does not hold: updated by a LoRA run's training
    batches, they would make the trained model differ from base + adapter. Used as they are, they belong to the
    frozen base like its weights do (torchvision's FrozenBatchNorm2d makes the same choice for frozen backbones).
    """

    def evaluate_statistics(module: nn.Module, args: tuple) -> None:
        module.training = False

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            if not getattr(module, "_muse_frozen_statistics", False):
                module.register_forward_pre_hook(evaluate_statistics)
                module._muse_frozen_statistics = True


def apply_lora(model: MuSEPreTrainedModel, config: Any) -> nn.Module:
    """``model`` as a `peft.PeftModel` with the LoRA ``config`` (`build_lora_config`): everything frozen except the
    LoRA matrices, the ``modules_to_save`` and the regularizers; frozen batch norms keep the base's statistics
    (`_freeze_batch_norm_statistics`)."""
    peft = require_peft()
    try:
        peft_model = peft.get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(f"LoRA cannot be put on the model with these targets ({error}); see --lora_target_modules.") from error
    _train_regularizers(peft_model)
    _freeze_batch_norm_statistics(peft_model)
    return peft_model


def load_adapter(base: MuSEPreTrainedModel, adapter: str, is_trainable: bool = False) -> nn.Module:
    """The adapter folder or Hub repository ``adapter`` put onto ``base`` (`peft.PeftModel.from_pretrained`)."""
    peft = require_peft()
    peft_model = peft.PeftModel.from_pretrained(base, adapter, is_trainable=is_trainable)
    if is_trainable:
        _train_regularizers(peft_model)
        _freeze_batch_norm_statistics(peft_model)
    return peft_model


def lora_model_for_run(args: argparse.Namespace, model: MuSEPreTrainedModel, head_modules: Sequence[str]) -> nn.Module:
    """The model of a ``--use_peft`` run: the adapter of ``--model_name_or_path`` (an adapter folder) put onto its base
    ``model``, trainable when the run trains; else ``model`` with a new adapter (`build_lora_config` with
    ``--lora_r``, ``--lora_alpha``, ``--lora_dropout``, ``--lora_target_modules``). A bad target stops the run with
    its reason."""
    try:
        if args.peft_base_model is not None:
            peft_model = load_adapter(model, args.model_name_or_path, is_trainable=bool(args.do_train))
            origin = f"the adapter {args.model_name_or_path} on {args.peft_base_model}"
        else:
            config = build_lora_config(
                model, head_modules, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules
            )
            peft_model = apply_lora(model, config)
            origin = f"a new adapter (r={args.lora_r}, alpha={args.lora_alpha}, dropout={args.lora_dropout})"
    except ValueError as error:
        raise SystemExit(str(error)) from error
    counts = adapter_counts(peft_model)
    logger.info(
        "LoRA: %s; the adapter holds %d parameters (%d LoRA, %d trained in full: %s), %d are trained, of %d.",
        origin,
        counts["adapter"],
        counts["lora"],
        counts["modules_to_save"],
        ", ".join(sorted(peft_model.peft_config["default"].modules_to_save or ())),
        counts["trainable"],
        counts["base"] + counts["lora"],
    )
    return peft_model


def adapter_base_model(name_or_path: str | None) -> str | None:
    """The base model (``base_model_name_or_path`` of ``adapter_config.json``) when ``name_or_path`` is an adapter
    folder or an adapter's Hub repository; None for anything else (a full model, or a Hub repository that cannot be
    reached, which loading it then reports)."""
    if name_or_path is None:
        return None
    folder = Path(name_or_path)
    if folder.is_dir():
        path = folder / ADAPTER_CONFIG_FILE
        if not path.is_file():
            return None
    elif is_hub_id(name_or_path):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

        try:
            path = Path(hf_hub_download(name_or_path, ADAPTER_CONFIG_FILE))
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
            return None
    else:
        return None
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a valid adapter configuration ({error}).") from error
    if not base:
        raise ValueError(
            f"{path} names no base_model_name_or_path: set it to the MuSE model (folder or Hub id) the adapter was "
            f"trained on."
        )
    return base


def save_adapter(
    model: nn.Module, output_dir: str, state_dict: dict[str, torch.Tensor] | None, is_main_process: bool
) -> None:
    """Write the adapter (``adapter_config.json``, ``adapter_model.safetensors``: the LoRA matrices and the
    ``modules_to_save``) into ``output_dir``; ``state_dict`` is the full model's where it had to be gathered.

    No full model of an earlier run is there for the Auto classes to load in its place: a fresh run starts in an empty
    output folder or deletes an earlier run's files first (`muse_training.checkpoints.prepare_output_dir`).
    """
    model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=is_main_process)


def load_adapter_weights(model: nn.Module, folder: str) -> None:
    """Put the adapter weights saved in ``folder`` into the `peft.PeftModel` ``model`` (the kept best model)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder, ADAPTER_WEIGHTS_FILE)))
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise RuntimeError(f"{folder}/{ADAPTER_WEIGHTS_FILE} holds weights the model does not have: {unexpected[:5]}")


def adapter_card_section(model: nn.Module, task: Any, location: str, base: str | None) -> list[str]:
    """The model card's lines on a LoRA adapter (``model``, a `peft.PeftModel`): what it holds, its configuration,
    and how it loads onto ``base`` (the MuSE model's Hub id or folder name) with and without this package."""
    config = model.peft_config["default"]
    counts = adapter_counts(model)
    auto_class = type(model.get_base_model()).__name__.replace("MuSE", "AutoModel", 1)
    targets = config.target_modules if isinstance(config.target_modules, str) else sorted(config.target_modules)
    base = base or "the base MuSE model"
    snippet = [
        "from peft import PeftModel",
        f"from transformers import {auto_class}",
        "",
        # JSON strings are Python string literals: a name's quotes and line breaks stay inside them.
        f"base = {auto_class}.from_pretrained({json.dumps(base)}, trust_remote_code=True)",
        f"model = PeftModel.from_pretrained(base, {json.dumps(location)}).eval()",
    ]
    return [
        "## LoRA adapter",
        "",
        f"This is a LoRA adapter (peft) of the MuSE model {code_span(base)}, not a whole model: {counts['adapter']:,} "
        f"parameters, {counts['lora']:,} in the low-rank matrices and {counts['modules_to_save']:,} in the modules "
        f"trained in full ({', '.join(code_span(name) for name in config.modules_to_save)}), where the base has "
        f"{counts['base']:,}. LoRA rank r = {config.r}, alpha = {config.lora_alpha}, dropout = "
        f"{config.lora_dropout}, on the layers matching {code_span(targets)}. The training-only regularizer decoders "
        f"were trained with it and are not part of it. It needs `peft` ({PEFT_INSTALL} with the MuSE repository).",
        "",
        *code_block("\n".join(snippet), "python"),
        "",
        "With `peft` installed, transformers also puts the adapter onto the base named in `adapter_config.json` by "
        "itself: the code below loads this folder like a whole model.",
        "",
    ]


class AdapterCounts(dict):
    """Parameter counts of a `peft.PeftModel`: ``lora`` (the A and B matrices), ``modules_to_save`` (their trained
    copies), ``adapter`` (the two together: what the adapter file holds), ``trainable``, and ``base`` (the model
    without the LoRA matrices and the copies)."""


def adapter_counts(model: nn.Module) -> AdapterCounts:
    """`AdapterCounts` of ``model``, counted from its parameters' names."""
    counts = AdapterCounts(lora=0, modules_to_save=0, trainable=0, base=0)
    for name, parameter in model.named_parameters():
        size = parameter.numel()
        if ".lora_" in name:
            counts["lora"] += size
        elif ".modules_to_save." in name:
            counts["modules_to_save"] += size
        else:
            counts["base"] += size
        if parameter.requires_grad:
            counts["trainable"] += size
    counts["adapter"] = counts["lora"] + counts["modules_to_save"]
    return counts
