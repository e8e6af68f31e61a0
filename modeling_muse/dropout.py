"""Dropout for the two regularizer decoders (caption decoder, PixelCNN++): torch's, with a cheaper mask on CPUs.

torch draws a CPU dropout mask with ``bernoulli_``, one double-precision draw per element; ``uniform_`` fills the same
tensor in 0.5 to 0.9 of that time on the 2-core reference CPU, and in the decoders, whose dropout covers every
activation of every block, that shows: ``python bench/dropout_speed.py`` measures their forward+backward at 0.83 to
0.91 of the time with torch's dropout. On CPUs the mask is therefore ``uniform_() >= p``, which keeps each element
with probability 1 - p as ``bernoulli_`` does; elsewhere (CUDA's fused dropout kernel is not slow) this is
``torch.nn.functional.dropout`` itself. The CrossTransformer keeps torch's dropout: there the same benchmark found
no difference beyond its noise (0.98 to 1.04).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Dropout", "dropout"]


class _UniformMaskDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: Tensor, p: float) -> Tensor:
        keep = torch.empty_like(inputs).uniform_() >= p
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return inputs.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad_output.mul(keep).mul_(ctx.scale), None


def dropout(inputs: Tensor, p: float, training: bool) -> Tensor:
    """``torch.nn.functional.dropout(inputs, p, training)``: zero each element with probability ``p`` and scale the
    rest by ``1 / (1 - p)``, in training only."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be between 0 and 1, got {p}")
    if not training or p == 0.0:
        return inputs
    if inputs.device.type != "cpu" or p == 1.0:
        return F.dropout(inputs, p, training=True)
    return _UniformMaskDropout.apply(inputs, p)


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` drawing its CPU masks as :func:`dropout` does (same arguments, no parameters)."""

    def forward(self, inputs: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(inputs, self.p, self.training, inplace=True)
        return dropout(inputs, self.p, self.training)
