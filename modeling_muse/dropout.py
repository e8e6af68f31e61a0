"""Dropout for MuSE's layers (CrossTransformer, decoders, text encoder): torch's, with a cheaper CPU mask.

torch draws a CPU dropout mask with ``bernoulli_``, one draw of its Mersenne Twister and a double-precision comparison
per element: 10-14 ns per element on the 2-core reference CPU, several percent of a MuSE training step. Here the
random bits come from NumPy's PCG64 (seeded from torch's generator, so ``torch.manual_seed`` still fixes every mask),
each 64-bit draw gives two 32-bit integers, and an element is kept when its integer is at least ``round(p * 2**32)``
above the smallest int32, i.e. with probability ``1 - p`` to 2**-32 (``bernoulli_`` resolves p to 2**-53, float32
``uniform_`` to 2**-24). The kept elements are scaled by ``1 / (1 - p)`` as torch's are. ``python
bench/dropout_speed.py`` times the mask, one CrossTransformer layer and both decoders against torch's dropout.

MuSE's dropout sits wherever the paper's layers have one: the CrossTransformer's attention weights, attention output
and feed-forward sub-module, the caption decoder's LSTM output, every PixelCNN++ gated block, and the text encoder's
``nn.Dropout`` modules (swapped in by text_encoder.py; its attention-weight dropout, applied inside transformers'
attention, and the heads keep torch's). On other devices (CUDA's fused dropout kernel is not slow) and at ``p == 1``
this is ``torch.nn.functional.dropout`` itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Dropout", "dropout", "dropout_mask"]

_INT32_MIN = -(2**31)


def dropout_mask(shape: torch.Size, p: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """A CPU tensor of ``shape`` holding ``1 / (1 - p)`` with probability ``1 - p`` (to 2**-32) and 0 otherwise, for
    each element independently: what torch's CPU dropout multiplies its input by, drawn more cheaply.

    The random bits come from NumPy's PCG64, seeded with one draw from torch's default CPU generator, so
    ``torch.manual_seed`` fixes the masks and every mask gets a fresh seed.
    """
    count = shape.numel()
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    draws = np.random.PCG64(seed).random_raw((count + 1) // 2)
    dropped_values = min(round(p * 2**32), 2**32 - 1)
    keep = torch.from_numpy(draws.view(np.int32))[:count].view(shape) >= _INT32_MIN + dropped_values
    # One pass from the comparison to the scaled mask, which forward and backward then apply with one product each.
    return torch.where(keep, torch.tensor(1.0 / (1.0 - p), dtype=dtype), 0.0)


class _MaskedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: Tensor, p: float) -> Tensor:
        mask = dropout_mask(inputs.shape, p, inputs.dtype)
        ctx.save_for_backward(mask)
        return inputs * mask

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None


def dropout(inputs: Tensor, p: float, training: bool) -> Tensor:
    """``torch.nn.functional.dropout(inputs, p, training)``: zero each element with probability ``p`` and scale the
    rest by ``1 / (1 - p)``, in training only."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be between 0 and 1, got {p}")
    if not training or p == 0.0:
        return inputs
    if inputs.device.type != "cpu" or p == 1.0:
        return F.dropout(inputs, p, training=True)
    return _MaskedDropout.apply(inputs, p)


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` drawing its CPU masks as :func:`dropout` does (same arguments, no parameters)."""

    def forward(self, inputs: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(inputs, self.p, self.training, inplace=True)
        return dropout(inputs, self.p, self.training)
