"""What a run shows: logging set-up, the running means of the loss terms, and the one summary line per epoch.

The console of a run holds its set-up lines, one line per data split, one progress bar, one summary line per epoch,
the test report and where the results are. Step-level values go to the progress bar and to the trackers
(``--with_tracking``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import datasets
import torch
import transformers
from accelerate import Accelerator

__all__ = ["LOSS_TERMS", "LossMeter", "configure_logging", "epoch_summary", "held_back", "pass_on", "silenced"]

# Loss terms of the MuSE outputs and their names in the logs.
LOSS_TERMS = {
    "loss": "loss",
    "task_loss": "task",
    "caption_loss": "L_it",
    "generation_loss": "L_ti",
    "generation_bits_per_dim": "L_ti_bits_per_dim",
}
_PROJECT_LOGGERS = ("datasets_scripts", "processing_muse", "modeling_muse", "muse_training")


def configure_logging(accelerator: Accelerator) -> None:
    """Only the main process talks; no library progress bars besides the training bar.

    transformers' bars (loading the text encoder, writing the model at every save, reading back the best model) and
    datasets' bars would each interleave with the training bar for something that takes a second.
    """
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        for name in _PROJECT_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def silenced(logger_name: str) -> Iterator[None]:
    """Drop the warnings of ``logger_name`` inside the block (errors still show); for a warning that does not apply
    to how the scripts use a library call."""
    quieted = logging.getLogger(logger_name)
    level = quieted.level
    quieted.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quieted.setLevel(level)


@contextmanager
def held_back(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Hold back the records that ``logger_name`` itself logs inside the block, in the list this yields: the caller
    then drops them or passes them on with `pass_on`. If the block raises, they are passed on first."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    quieted = logging.getLogger(logger_name)
    quieted.addFilter(hold)
    try:
        yield held
    except BaseException:
        # Unfiltered first, or the records passed on would be held back again.
        quieted.removeFilter(hold)
        pass_on(logger_name, held)
        raise
    finally:
        quieted.removeFilter(hold)


def pass_on(logger_name: str, records: list[logging.LogRecord]) -> None:
    """Log records held back by `held_back` as they would have been."""
    for record in records:
        logging.getLogger(logger_name).handle(record)


class LossMeter:
    """Running means of the loss terms and the throughput over a window of batches (all processes together)."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0
        self.samples = 0
        self.start = time.perf_counter()

    def update(self, outputs: Any, batch_size: int) -> None:
        for name in LOSS_TERMS:
            value = getattr(outputs, name, None)
            if value is not None:
                # Kept as tensors: no device synchronisation per step.
                self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
        self.batches += 1
        self.samples += batch_size

    def summary(self) -> dict[str, float]:
        """Means over the window and all processes, and samples per second; resets the window.

        A collective operation: every process calls it at the same point.
        """
        names = sorted(self.sums)
        means = self.accelerator.reduce(torch.stack([self.sums[name] for name in names]) / self.batches, "mean")
        samples = self.accelerator.reduce(torch.tensor(self.samples, device=self.accelerator.device), "sum")
        elapsed = time.perf_counter() - self.start
        result = {LOSS_TERMS[name]: float(value) for name, value in zip(names, means, strict=True)}
        result["samples_per_second"] = float(samples) / elapsed
        self.reset()
        return result


def epoch_summary(
    epoch: int,
    num_epochs: int,
    training: dict[str, float] | None,
    validation: dict[str, Any],
    metric_names: Sequence[str],
    seconds: float,
    saved_to: str | None,
) -> str:
    """The line that sums up an epoch: its training loss terms, the validation scores, the time, the best model."""
    parts = [f"epoch {epoch}/{num_epochs}"]
    if training is not None:
        order = ["loss", "task", "L_it", "L_ti", "L_ti_bits_per_dim"]
        parts += [f"{name} {training[name]:.4f}" for name in order if name in training]
        parts.append(f"{training['samples_per_second']:.1f} samples/s")
    scores = " ".join(f"{name} {validation[name]:.4f}" for name in (*metric_names, "loss"))
    parts.append(f"validation {scores}")
    parts.append(f"{seconds:.0f} s")
    parts.append(f"best so far: saved to {saved_to}" if saved_to else "not better than the best so far")
    return " | ".join(parts)
