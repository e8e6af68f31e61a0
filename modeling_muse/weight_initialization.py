"""How every MuSE weight starts: the initialisation its own library gives it.

transformers' for the text encoder and a transformers vision tower (their own `_init_weights`), timm's for a timm
tower (a whole architecture at once: zero-initialised last batch norms of residual blocks, a ViT's position
embeddings), torch's for the PixelCNN++ decoder's weight-normalised convolutions, pytorch-crf's for the CRF, and
transformers' generic one with MuSE's choices (docs/design.md) for the rest. `MuSEPreTrainedModel._init_weights` and
`initialize_weights` call these.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from torchcrf import CRF
from transformers import initialization as init

from .caption_decoder import UNIFORM_INIT_RANGE
from .cross_transformer import CrossTransformer
from .image_encoder import INITIALISED_BY_TIMM, ImageEncoder

__all__ = ["initialize_module", "initialize_timm_towers"]


def initialize_module(module: nn.Module, generic_init: Callable[[nn.Module], None]) -> None:
    """Initialise ``module``'s own parameters and buffers; ``generic_init`` is transformers' generic
    `PreTrainedModel._init_weights`, for the modules MuSE has no rule of its own for."""
    if getattr(module, INITIALISED_BY_TIMM, False):
        # Given by `initialize_timm_towers`, for the whole backbone at once.
        return
    if parametrize.is_parametrized(module, "weight"):
        # torch.nn.utils.parametrizations.weight_norm (the PixelCNN++ decoder): torch's default initialisation of
        # the direction v, and the magnitude g = ||v|| that weight_norm starts from, so that weight = v at first.
        weight_norm = module.parametrizations.weight
        direction, magnitude = weight_norm.original1, weight_norm.original0
        init.kaiming_uniform_(direction, a=math.sqrt(5))
        init.copy_(magnitude, torch.norm_except_dim(direction, 2, weight_norm[0].dim))
        if getattr(module, "bias", None) is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(direction)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(module.bias, -bound, bound)
        return
    uniform_range = getattr(module, UNIFORM_INIT_RANGE, None)
    if uniform_range is not None:
        # Layers that ask for a small uniform initialisation (the caption decoder's word embeddings and output
        # layer), with a zero bias.
        init.uniform_(module.weight, -uniform_range, uniform_range)
        if getattr(module, "bias", None) is not None:
            init.zeros_(module.bias)
        return
    generic_init(module)
    if isinstance(module, CrossTransformer):
        # Paper section 4: the cls vectors use Kaiming initialisation.
        for cls_vector in (module.text_cls, module.image_cls):
            if cls_vector is not None:
                init.kaiming_normal_(cls_vector)
    elif isinstance(module, nn.LSTMCell):
        for name, parameter in module.named_parameters():
            (init.xavier_uniform_ if "weight" in name else init.zeros_)(parameter)
    elif isinstance(module, CRF):
        # pytorch-crf's own initialisation, which the generic one would otherwise skip.
        init.uniform_(module.start_transitions, -0.1, 0.1)
        init.uniform_(module.end_transitions, -0.1, 0.1)
        init.uniform_(module.transitions, -0.1, 0.1)


@torch.no_grad()
def initialize_timm_towers(model: nn.Module) -> None:
    """timm's initial values for the parameters and buffers of ``model``'s timm image towers that were not loaded
    (`ImageEncoder.timm_initial_state`); `initialize_module` skips the towers' modules one by one, because timm
    initialises an architecture as a whole."""
    for module in model.modules():
        if not (isinstance(module, ImageEncoder) and module.is_timm):
            continue
        tensors = module.backbone.state_dict(keep_vars=True)
        # A checkpoint that holds the whole tower (every load of a saved model) leaves nothing to initialise:
        # building a second backbone for its initial values would only cost time and memory.
        if all(getattr(tensor, "_is_hf_initialized", False) for tensor in tensors.values()):
            continue
        initial = module.timm_initial_state()
        for name, tensor in tensors.items():
            init.copy_(tensor, initial[name])
