"""ImageEncoder (paper eq. 2): I_e = ImageEncoder(I), shape (B, P*P, d)."""

from __future__ import annotations

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn
from torch.nn import functional as F

from .hub import hub_unreachable_reason

__all__ = ["ImageEncoder", "create_vision_backbone", "load_pretrained_vision_backbone"]

# The file names under which timm publishes weights on the Hub, in the order timm tries them.
_TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def create_vision_backbone(model_name: str, model_kwargs: dict, pretrained: bool = False) -> nn.Module:
    """A timm backbone that returns its last feature map (no classifier, no global pooling).

    ``pretrained=True`` downloads timm's weights for ``model_name`` (needs the Hugging Face Hub or a timm
    cache); nothing is downloaded otherwise.
    """
    return timm.create_model(model_name, pretrained=pretrained, num_classes=0, global_pool="", **model_kwargs)


def load_pretrained_vision_backbone(model_name: str, model_kwargs: dict) -> nn.Module:
    """`create_vision_backbone` with timm's pretrained weights, from the local Hugging Face cache when they are there.

    Without a cached copy the weights are downloaded; when the Hub cannot be reached (``HF_HUB_OFFLINE=1`` or no
    connection) this fails at once, naming the backbone and ``pretrained_vision=False``, instead of after a minute
    of retries with a generic error.
    """
    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
    if not hub_id:
        raise ValueError(
            f"vision_model_name={model_name!r}: timm publishes no pretrained weights for it on the Hugging Face Hub; "
            f"choose a backbone that has them (e.g. 'resnet152') or pass pretrained_vision=False."
        )
    for file_name in _TIMM_WEIGHT_FILES:
        cached = try_to_load_from_cache(hub_id, file_name)
        if isinstance(cached, str):
            return timm.create_model(
                model_name, pretrained=True, pretrained_cfg_overlay={"file": cached}, num_classes=0, global_pool="",
                **model_kwargs,
            )
    switch = "pretrained_vision=False (command line: --no-pretrained_vision) to start the backbone from random weights"
    reason = hub_unreachable_reason()
    if reason is not None:
        raise OSError(
            f"vision_model_name={model_name!r}: timm's pretrained weights ({hub_id} on the Hugging Face Hub) are not in "
            f"the local cache and cannot be downloaded: {reason}. Download them once with a connection, or pass "
            f"{switch}."
        )
    try:
        return create_vision_backbone(model_name, model_kwargs, pretrained=True)
    except OSError as error:
        raise OSError(
            f"vision_model_name={model_name!r}: downloading timm's pretrained weights ({hub_id}) failed: {error}. "
            f"Check the connection, or pass {switch}."
        ) from error


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
        # Channels-last images take oneDNN's (and cuDNN's) faster convolution layouts, which the whole backbone then
        # keeps; the pooled grid comes out with its P*P tokens already contiguous rows.
        features = self.backbone.forward_features(pixel_values.contiguous(memory_format=torch.channels_last))
        grid = F.adaptive_avg_pool2d(features, self.image_grid_size)
        tokens = grid.flatten(2).transpose(1, 2)
        return self.projection(tokens)
