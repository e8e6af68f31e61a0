"""Evaluation: a split's predictions, labels and task loss, gathered over processes without duplicates."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from processing_muse import MuSEProcessor

from .checkpoints import TrainingProgress, load_best_weights

__all__ = ["EvaluationOutput", "evaluate_model", "evaluate_with_and_without_pictures", "use_best_model"]


@dataclass
class EvaluationOutput:
    """A whole split's predictions and labels, gathered over processes without duplicates, and its mean task loss
    (``labels`` None and ``loss`` NaN for a split without labels: new posts, tagged only)."""

    predictions: np.ndarray
    labels: np.ndarray | None
    loss: float
    scores: np.ndarray | None = None


@torch.no_grad()
def evaluate_model(
    accelerator: Accelerator,
    model: nn.Module,
    dataloader: DataLoader,
    predictions_of: Callable[[Any], torch.Tensor],
    losses_of: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    scores_of: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] | None = None,
    placeholder_pixel_values: torch.Tensor | None = None,
) -> EvaluationOutput:
    """Run ``model`` over ``dataloader`` in eval mode and gather predictions, labels and per-post task losses.

    Args:
        predictions_of: model outputs -> predictions, one row per post.
        losses_of: (model outputs, batch) -> the task loss of each post, ``(batch,)``; NaN where a post has none.
            Per post, not the batch mean: in a multi-process run the last batches are padded with repeated posts,
            which `gather_for_metrics` drops, and a batch mean would still carry them.
        scores_of: (model outputs, batch) -> what the predictions file reports with each prediction, one row per
            post (a confidence per position, or a probability per class); None computes nothing more.
        placeholder_pixel_values: ``(1, 3, H, W)``, the placeholder picture as the processor prepares it; given, it
            stands in for every post's picture: the posts scored without what their pictures add.
    """
    model.eval()
    stores: list[list[np.ndarray]] = [[], [], [], []]
    labeled = True
    for batch in dataloader:
        if placeholder_pixel_values is not None:
            pictures = batch["pixel_values"]
            placeholder = placeholder_pixel_values.to(device=pictures.device, dtype=pictures.dtype)
            batch = {**batch, "pixel_values": placeholder.expand(len(pictures), -1, -1, -1)}
        outputs = model(**batch)
        labeled = "labels" in batch
        # A split without labels (new posts) stands its predictions in for them, so that the stores keep their places.
        predictions = predictions_of(outputs)
        per_position = [predictions, batch["labels"] if labeled else predictions]
        if scores_of is not None:
            per_position.append(scores_of(outputs, batch).detach().float())
        if per_position[0].dim() == 2:
            # Each batch is padded to its own longest post, so processes may hold different widths.
            per_position = [accelerator.pad_across_processes(values, dim=1, pad_index=-100) for values in per_position]
        losses = losses_of(outputs, batch).detach().float() if labeled else predictions.new_full(
            (predictions.shape[0],), float("nan"), dtype=torch.float32)
        per_position.insert(2, losses)
        gathered = accelerator.gather_for_metrics(tuple(per_position))
        for store, values in zip(stores, gathered, strict=False):
            store.append(values.cpu().numpy())
    predictions, labels, losses, scores = stores
    losses = np.concatenate(losses)
    mean_loss = float(np.nanmean(losses)) if not np.isnan(losses).all() else float("nan")
    return EvaluationOutput(
        _concatenate_rows(predictions),
        _concatenate_rows(labels) if labeled else None,
        mean_loss,
        _concatenate_rows(scores) if scores else None,
    )


def evaluate_with_and_without_pictures(
    accelerator: Accelerator,
    model: nn.Module,
    dataloader: DataLoader,
    processor: MuSEProcessor,
    predictions_of: Callable[[Any], torch.Tensor],
    losses_of: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    scores_of: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> tuple[EvaluationOutput, EvaluationOutput]:
    """`evaluate_model` on the posts with their pictures (with ``scores_of``), then with the pictures withheld
    (`muse_training.image_effect`): each replaced by the grey placeholder picture as ``processor`` prepares it, the
    picture a post without an image gets in the data and in the pipelines' ``return_image_effect``. A model without
    an image branch (the only-T variant) ignores pictures: its second evaluation would repeat the first, which is
    returned twice instead."""
    with_pictures = evaluate_model(accelerator, model, dataloader, predictions_of, losses_of, scores_of)
    if not getattr(accelerator.unwrap_model(model).config, "use_image", True):
        return with_pictures, with_pictures
    placeholder = processor.placeholder_pixel_values()
    without = evaluate_model(
        accelerator, model, dataloader, predictions_of, losses_of, placeholder_pixel_values=placeholder
    )
    return with_pictures, without


def _concatenate_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate batches along the first axis, padding per-position values (batches of different widths) with
    -100, the label value that marks a position without a word."""
    if arrays[0].ndim == 1:
        return np.concatenate(arrays)
    width = max(array.shape[1] for array in arrays)
    padded = [np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=-100) for array in arrays]
    return np.concatenate(padded)


def use_best_model(accelerator: Accelerator, model: nn.Module, progress: TrainingProgress, args: argparse.Namespace) -> None:
    """After training, put the kept (best) model's weights into ``model``; nothing is loaded when the kept model was
    saved at the last step (``model`` holds its weights already) or when nothing was trained."""
    if progress.best and progress.best["step"] != progress.completed_steps:
        load_best_weights(accelerator, model, args.output_dir)
