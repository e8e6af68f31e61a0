"""ImageEncoder (paper eq. 2): I_e = ImageEncoder(I), shape (B, P*P, d)."""

from __future__ import annotations

import timm
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ImageEncoder", "create_vision_backbone"]


def create_vision_backbone(model_name: str, model_kwargs: dict, pretrained: bool = False) -> nn.Module:
    """A timm backbone that returns its last feature map (no classifier, no global pooling).

    ``pretrained=True`` downloads timm's weights for ``model_name`` (needs the Hugging Face Hub or a timm
    cache); nothing is downloaded otherwise.
    """
    return timm.create_model(model_name, pretrained=pretrained, num_classes=0, global_pool="", **model_kwargs)


class ImageEncoder(nn.Module):
    """A CNN backbone whose last feature map is average-pooled to P x P, flattened and projected to d.

    Spec section 1: 224x224 input -> feature map (C, h, w) -> adaptive average pool to (C, P, P) -> P*P tokens
    -> Linear(C -> d).
    """

    def __init__(
        self,
        model_name: str,
        model_kwargs: dict,
        image_grid_size: int,
        hidden_size: int,
        trainable_stages: int | None = None,
    ):
        super().__init__()
        self.backbone = create_vision_backbone(model_name, model_kwargs)
        # timm's own initialisation suits its architectures (Kaiming for convolutions); the flag keeps
        # transformers' generic `_init_weights` from overwriting it.
        for module in self.backbone.modules():
            module._is_hf_initialized = True
        self.image_grid_size = image_grid_size
        self.projection = nn.Linear(self.backbone.num_features, hidden_size)
        if trainable_stages is not None:
            self.freeze_all_but_last_stages(trainable_stages)

    def freeze_all_but_last_stages(self, trainable_stages: int) -> None:
        """Freeze the backbone up to its last ``trainable_stages`` feature stages (timm ``feature_info``).

        Parameters are taken in registration order, which for timm's CNNs is the order of the forward
        pass: everything from the first parameter of the first trainable stage on stays trainable.
        """
        stage_names = [stage["module"] for stage in self.backbone.feature_info]
        parameters = list(self.backbone.named_parameters())
        if trainable_stages >= len(stage_names):
            first_trainable = 0
        elif trainable_stages == 0:
            first_trainable = len(parameters)
        else:
            prefix = stage_names[len(stage_names) - trainable_stages] + "."
            first_trainable = next(i for i, (name, _) in enumerate(parameters) if name.startswith(prefix))
        for index, (_, parameter) in enumerate(parameters):
            parameter.requires_grad = index >= first_trainable

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(pixel_values)
        grid = F.adaptive_avg_pool2d(features, self.image_grid_size)
        tokens = grid.flatten(2).transpose(1, 2)
        return self.projection(tokens)
