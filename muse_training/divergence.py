"""A diverged run stops with an error instead of saving: a NaN or infinite loss term, weight or validation loss.

The loss terms of eq. 14 are watched on every training batch without synchronising the device per step (the first
batch with a non-finite term is recorded on the device); the record is read where the loop synchronises anyway (every
``--logging_steps``) and before anything is saved, so that no checkpoint and no "best so far" model ever holds what a
diverged step produced.
"""

from __future__ import annotations

import argparse
import math
from itertools import chain
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from .checkpoints import TrainingProgress

__all__ = ["LOSS_TERM_TITLES", "NonFiniteLossGuard", "check_validation_loss", "check_weights_finite"]

# The loss terms of the MuSE outputs (eq. 14) and how the error names them.
LOSS_TERM_TITLES = {
    "task_loss": "task loss",
    "caption_loss": "caption loss L_it",
    "generation_loss": "generation loss L_ti",
    "loss": "total loss",
}


def _hint(args: argparse.Namespace) -> str:
    return (
        f"The training diverged: lower --learning_rate (now {args.learning_rate:g}) and --head_learning_rate (now "
        f"{args.head_learning_rate:g}), or check the data (labels or regression targets far outside the usual range)."
    )


def _saved_so_far(progress: TrainingProgress, args: argparse.Namespace) -> str:
    kept = (
        f"the best model so far (epoch {progress.best['epoch']}, step {progress.best['step']}) in {args.output_dir}"
        if progress.best
        else "no model was kept yet"
    )
    return f"Nothing non-finite was saved: {kept}, and every checkpoint is from before it."


class NonFiniteLossGuard:
    """Records the first training batch whose loss terms include a NaN or an infinity, on the device.

    `update` adds no device synchronisation; `check` (a collective: every process calls it at the same point) stops
    the run naming the optimizer step, the epoch and the terms of that batch.
    """

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        device = accelerator.device
        # -1 until a batch has a non-finite term; then that batch's optimizer step and epoch (both 1-based).
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.epoch = torch.full((), -1, dtype=torch.long, device=device)
        self.values = torch.zeros(len(LOSS_TERM_TITLES), device=device)

    def update(self, outputs: Any, step: int, epoch: int) -> None:
        """Look at one batch's loss terms; ``step`` and ``epoch`` (1-based) are those of the optimizer step it is
        part of."""
        terms = [getattr(outputs, name, None) for name in LOSS_TERM_TITLES]
        values = torch.stack(
            [term.detach().float().reshape(()) if term is not None else self.values.new_zeros(()) for term in terms]
        )
        first = ~torch.isfinite(values).all() & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.epoch = torch.where(first, epoch, self.epoch)
        self.values = torch.where(first, values, self.values)

    def check(self, progress: TrainingProgress, args: argparse.Namespace) -> None:
        """Stop the run (`SystemExit`) if any process has seen a non-finite loss term."""
        record = torch.cat([torch.stack([self.step, self.epoch]).float(), self.values])
        gathered = self.accelerator.gather(record[None])
        seen = gathered[gathered[:, 0] >= 0]
        if len(seen) == 0:
            return
        first = seen[seen[:, 0].argmin()].tolist()
        step, epoch, values = int(first[0]), int(first[1]), first[2:]
        bad = [f"{title} {value}" for title, value in zip(LOSS_TERM_TITLES.values(), values, strict=True)
               if not math.isfinite(value)]  # fmt: skip
        raise SystemExit(
            f"Training stopped at optimizer step {step} (epoch {epoch}): the loss is not finite ({', '.join(bad)}). "
            f"{_hint(args)} {_saved_so_far(progress, args)}"
        )


def _local(tensor: torch.Tensor) -> torch.Tensor:
    # A sharded parameter (FSDP2's DTensor) is checked through this process's shard.
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def check_weights_finite(
    accelerator: Accelerator, model: nn.Module, progress: TrainingProgress, args: argparse.Namespace
) -> None:
    """Stop the run (`SystemExit`) when a parameter or floating-point buffer of ``model`` (batch-norm statistics
    included) is NaN or infinite on any process: called before a checkpoint or the best model is saved. A collective.
    """
    unwrapped = accelerator.unwrap_model(model)
    tensors = [
        (name, tensor)
        for name, tensor in chain(unwrapped.named_parameters(), unwrapped.named_buffers())
        if tensor.is_floating_point()
    ]
    finite = torch.stack([torch.isfinite(_local(tensor).detach()).all() for _, tensor in tensors])
    if int(accelerator.reduce((~finite).sum(), "sum")) == 0:
        return
    names = [name for (name, _), ok in zip(tensors, finite.tolist(), strict=True) if not ok]
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise SystemExit(
        f"Training stopped after optimizer step {progress.completed_steps} (epoch {progress.epoch + 1}): weights "
        f"are no longer finite ({listed or 'on another process'}). {_hint(args)} {_saved_so_far(progress, args)}"
    )


def check_validation_loss(
    metrics: dict[str, Any], epoch: int, progress: TrainingProgress, args: argparse.Namespace
) -> None:
    """Stop the run (`SystemExit`) when the validation loss after ``epoch`` (1-based) is NaN or infinite, before the
    model that gave it can be kept as the best."""
    if math.isfinite(metrics["loss"]):
        return
    raise SystemExit(
        f"Training stopped after epoch {epoch} (optimizer step {progress.completed_steps}): the validation loss is "
        f"not finite ({metrics['loss']}). {_hint(args)} {_saved_so_far(progress, args)}"
    )
