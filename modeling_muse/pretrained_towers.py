"""Building a fresh MuSE around pretrained towers (`MuSEPreTrainedModel.from_text_vision_pretrained`)."""

from __future__ import annotations

import logging
from typing import Any

from .configuration_muse import MuSEConfig
from .image_encoder import load_pretrained_vision_backbone, resolve_vision_tower
from .text_encoder import load_pretrained_text_backbone

__all__ = ["build_around_pretrained_towers"]

logger = logging.getLogger(__name__)


def build_around_pretrained_towers(
    cls: type,
    text_model_name_or_path: str,
    vision_model_name_or_path: str,
    *,
    pretrained_vision: bool = True,
    text_model_kwargs: dict | None = None,
    vision_model_kwargs: dict | None = None,
    **config_kwargs: Any,
):
    """A ``cls`` (a MuSE model class) whose towers carry their pretrained weights; see
    `MuSEPreTrainedModel.from_text_vision_pretrained` for the arguments."""
    text_backbone = load_pretrained_text_backbone(text_model_name_or_path, **(text_model_kwargs or {}))
    tower = resolve_vision_tower(vision_model_name_or_path)
    vision_fields = tower.config_fields()
    if tower.library == "timm" and vision_model_kwargs:
        vision_fields["vision_model_kwargs"] = {**vision_fields.get("vision_model_kwargs", {}), **vision_model_kwargs}
    config = MuSEConfig(text_config=text_backbone.config, **vision_fields, **config_kwargs)
    model = cls(config)
    muse = model.base_muse
    if muse.text_encoder is not None:
        muse.text_encoder.backbone.load_state_dict(text_backbone.state_dict())
    if pretrained_vision and muse.image_encoder is not None:
        extra = vision_model_kwargs if tower.library == "transformers" else {}
        vision_backbone = load_pretrained_vision_backbone(tower, config.vision_model_kwargs, **(extra or {}))
        muse.image_encoder.backbone.load_state_dict(vision_backbone.state_dict())
    logger.warning(
        "MuSE was built around pretrained towers (%s, %s); its projections, CrossTransformer, fusion layer "
        "and head are newly initialised: train the model before using it for predictions.",
        text_model_name_or_path,
        vision_model_name_or_path,
    )
    return model
