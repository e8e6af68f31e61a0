"""Checkpoints (exact resume), the output folder, and the best model kept in it.

A checkpoint folder appears atomically (written as ``<name>.incomplete``, then renamed), so a run killed while saving
never leaves a half-written checkpoint behind for ``latest`` to pick. The best model by validation F1 is kept in
``output_dir`` during training, with a ``best_model.json`` marker written last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from processing_muse import MuSEProcessor

__all__ = [
    "BEST_MODEL_MARKER",
    "MODEL_CARD_FILE",
    "PROGRESS_FILE",
    "RESULTS_FILE",
    "TrainingProgress",
    "checkpoint_folders",
    "find_latest_checkpoint",
    "is_checkpoint_name",
    "load_best_weights",
    "prepare_output_dir",
    "resume",
    "save_checkpoint",
    "save_model",
]

logger = get_logger(__name__)

BEST_MODEL_MARKER = "best_model.json"
PROGRESS_FILE = "training_progress.json"
_CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")
_INCOMPLETE_SUFFIX = ".incomplete"
# What a finished run leaves beside its model; a fresh run into the same folder removes them first, so that they
# never describe a model they did not come from.
RESULTS_FILE = "all_results.json"
MODEL_CARD_FILE = "README.md"
EARLIER_RUN_FILES = (RESULTS_FILE, MODEL_CARD_FILE)


def is_checkpoint_name(name: str) -> bool:
    """Whether ``name`` is a checkpoint folder's name (``step_N``, ``epoch_N``, or one being written)."""
    return bool(_CHECKPOINT_NAME.match(name.removesuffix(_INCOMPLETE_SUFFIX)))


@dataclass
class TrainingProgress:
    """Where training stands; saved in every checkpoint as ``training_progress.json``.

    Attributes:
        completed_steps: optimizer steps done.
        epoch: the epoch in progress (0-based); after an epoch's end, the next one.
        epoch_step: optimizer steps done within ``epoch``; a resumed run skips these batches.
        history: validation metrics after each finished epoch.
        best: the kept model's validation metrics, its ``epoch`` (1-based) and ``step``; empty before the first
            evaluation.
    """

    completed_steps: int = 0
    epoch: int = 0
    epoch_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | os.PathLike, file_name: str = PROGRESS_FILE) -> None:
        Path(folder, file_name).write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike, file_name: str = PROGRESS_FILE) -> TrainingProgress:
        return cls(**json.loads(Path(folder, file_name).read_text()))


def _complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete ``step_N``/``epoch_N`` checkpoints of ``output_dir``, oldest first.

    Ordered by optimizer steps; an epoch checkpoint comes after a step checkpoint of the same step: it was saved later,
    after validation.
    """
    candidates = []
    folder = Path(output_dir)
    if folder.is_dir():
        for child in folder.iterdir():
            match = _CHECKPOINT_NAME.match(child.name)
            if match and (child / PROGRESS_FILE).is_file():
                progress = TrainingProgress.load(child)
                candidates.append(((progress.completed_steps, match.group(1) == "epoch"), child))
    return [path for _, path in sorted(candidates)]


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete ``step_N``/``epoch_N`` checkpoint of ``output_dir`` with the most optimizer steps, or None."""
    checkpoints = _complete_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint folder of ``output_dir``, complete or not."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return [child for child in folder.iterdir() if child.is_dir() and is_checkpoint_name(child.name)]


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str,
    name: str,
    progress: TrainingProgress,
    total_limit: int | None = None,
) -> Path:
    """`accelerator.save_state` (model, optimizer, scheduler, RNG states, step) plus the progress, atomically.

    With ``total_limit``, only the newest ``total_limit`` complete checkpoints are kept afterwards.
    """
    final = Path(output_dir) / name
    partial = final.with_name(name + _INCOMPLETE_SUFFIX)
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        progress.save(partial)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        if total_limit is not None:
            for older in _complete_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(older)
    accelerator.wait_for_everyone()
    logger.info("Saved checkpoint %s", final)
    return final


def prepare_output_dir(accelerator: Accelerator, args: argparse.Namespace) -> Path | None:
    """Decide between a fresh start and a resume; return the checkpoint to resume from, if any.

    A fresh start refuses an output_dir that holds checkpoints of an earlier run (``latest`` would mix runs)
    unless ``--overwrite_output_dir`` is given, which deletes them. A run that does not train leaves the folder as
    it is.
    """
    output_dir = Path(args.output_dir)
    checkpoint = None
    if not args.do_train:
        # Evaluating or predicting only adds result files; the folder may well be the evaluated model's own.
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        return None
    if args.resume_from_checkpoint == "latest":
        checkpoint = find_latest_checkpoint(output_dir)
        if checkpoint is None:
            logger.info("--resume_from_checkpoint latest: no checkpoint in %s yet, starting afresh.", output_dir)
    elif args.resume_from_checkpoint is not None:
        checkpoint = Path(args.resume_from_checkpoint)
        if not (checkpoint / PROGRESS_FILE).is_file():
            raise SystemExit(
                f"--resume_from_checkpoint {checkpoint}: not a checkpoint of these scripts (no {PROGRESS_FILE}); give "
                f"an output_dir/step_N or output_dir/epoch_N folder, or 'latest'."
            )
    if checkpoint is None:
        stale = checkpoint_folders(output_dir)
        if stale and not args.overwrite_output_dir:
            names = ", ".join(sorted(folder.name for folder in stale))
            raise SystemExit(
                f"--output_dir {output_dir} already holds checkpoints of an earlier run ({names}): pass "
                f"--resume_from_checkpoint latest to continue it, or --overwrite_output_dir to start over."
            )
        earlier_results = [output_dir / name for name in EARLIER_RUN_FILES if (output_dir / name).is_file()]
        if earlier_results:
            logger.warning(
                "--output_dir %s holds the model of an earlier run: this run replaces it (its %s are deleted now, "
                "the model and processor files are overwritten after this run's first epoch). Pass another "
                "--output_dir to keep it.",
                output_dir,
                " and ".join(path.name for path in earlier_results),
            )
        if stale:
            names = ", ".join(sorted(folder.name for folder in stale))
            logger.warning("--overwrite_output_dir: deleting the checkpoints %s", names)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for folder in stale:
                shutil.rmtree(folder)
            for path in earlier_results:
                path.unlink()
            Path(output_dir, BEST_MODEL_MARKER).unlink(missing_ok=True)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return checkpoint


def resume(accelerator: Accelerator, checkpoint: Path, output_dir: str) -> TrainingProgress:
    """Load a checkpoint into the prepared objects and return its progress.

    The best model in ``output_dir`` may have been saved by the interrupted run after this checkpoint; its marker is
    then the authority on which model is kept, so the best-so-far is never lost nor silently replaced by a worse one.
    """
    accelerator.load_state(str(checkpoint))
    progress = TrainingProgress.load(checkpoint)
    marker = Path(output_dir, BEST_MODEL_MARKER)
    if marker.is_file():
        kept = json.loads(marker.read_text())
        if not progress.best or kept["metrics"]["f1"] > progress.best["metrics"]["f1"]:
            progress.best = kept
    logger.info(
        "Resumed from %s: %d optimizer steps done, continuing epoch %d after its first %d steps.",
        checkpoint,
        progress.completed_steps,
        progress.epoch + 1,
        progress.epoch_step,
    )
    return progress


def save_model(
    accelerator: Accelerator, model: nn.Module, processor: MuSEProcessor, output_dir: str, best: dict[str, Any]
) -> None:
    """Save the model (safetensors) and processor into ``output_dir``, then the marker describing them."""
    accelerator.wait_for_everyone()
    # get_state_dict gathers the full weights where they are sharded (FSDP, DeepSpeed); else it is the model's own.
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(
        output_dir, state_dict=state_dict, is_main_process=accelerator.is_main_process, save_function=accelerator.save
    )
    if accelerator.is_main_process:
        processor.save_pretrained(output_dir)
        # Written last and atomically: a marker always describes complete model files.
        marker = Path(output_dir, BEST_MODEL_MARKER)
        partial = marker.with_name(marker.name + _INCOMPLETE_SUFFIX)
        partial.write_text(json.dumps(best, indent=2))
        partial.replace(marker)
    accelerator.wait_for_everyone()


def load_best_weights(accelerator: Accelerator, model: nn.Module, output_dir: str) -> None:
    """Put the kept (best) model's weights from ``output_dir`` into the prepared ``model``."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    # from_pretrained undoes whatever save_pretrained did to the checkpoint (tied or renamed weights).
    best = type(unwrapped).from_pretrained(output_dir)
    if accelerator.is_fsdp2:
        # Parameters are shards (DTensors): torch's loader cuts each process's share out of the full weights.
        set_model_state_dict(unwrapped, best.state_dict(), options=StateDictOptions(full_state_dict=True))
    else:
        unwrapped.load_state_dict(best.state_dict())
