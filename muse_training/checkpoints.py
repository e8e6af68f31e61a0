"""Checkpoints (exact resume), the output folder, and the best model kept in it.

A checkpoint folder appears atomically (written as ``<name>.incomplete``, then renamed), so a run killed while saving
never leaves a half-written checkpoint behind for ``latest`` to pick. The best model by validation F1 is kept in
``output_dir`` during training, with a ``best_model.json`` marker written last. That model is the one served, so it
leaves out the training-only decoders unless ``--keep_regularizers`` asks for them; checkpoints keep everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import RNG_STATE_NAME
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from datasets_scripts.errors import file_id_problem
from modeling_muse.reporting import first_then_count
from processing_muse import MuSEProcessor

from .checkpoint_files import (
    READ_ONLY_PLAIN_VALUES,
    UnsafeCheckpointFile,
    check_pickled_files,
    load_weights_only,
    weights_only_loading,
)
from .lora import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, is_adapter_model, load_adapter_weights, save_adapter
from .predictions import PARTIAL_SUFFIX, PREDICTIONS_FILE

__all__ = [
    "ARGUMENTS_FILE",
    "BEST_MODEL_MARKER",
    "LAUNCH_FILES",
    "MODEL_CARD_FILE",
    "PROGRESS_FILE",
    "RESULTS_FILE",
    "RUN_FILES",
    "TrainingProgress",
    "checkpoint_folders",
    "find_latest_checkpoint",
    "is_checkpoint_name",
    "load_best_weights",
    "marker_files",
    "prepare_output_dir",
    "regularizer_weights_prefix",
    "resume",
    "run_files",
    "save_checkpoint",
    "save_model",
    "training_arguments",
]

logger = get_logger(__name__)

BEST_MODEL_MARKER = "best_model.json"
PROGRESS_FILE = "training_progress.json"
ARGUMENTS_FILE = "training_arguments.json"
# Arguments that may differ between an interrupted run and its resumption: where results go, what is logged,
# uploaded and evaluated, how data is read. Every other argument decides what is trained and must stay the same.
RESUME_FREE_ARGUMENTS = frozenset(
    {
        "resume_from_checkpoint", "overwrite_output_dir", "output_dir", "logging_steps", "with_tracking", "report_to",
        "push_to_hub", "push_predictions", "hub_model_id", "hub_token", "hub_private_repo", "checkpointing_steps",
        "save_total_limit",
        "dataloader_num_workers", "dataset_cache_dir", "do_eval", "do_predict", "per_device_eval_batch_size",
        "max_eval_samples", "ignore_changed_arguments", "keep_freed_memory", "gradient_checkpointing",
        "defaults_used", "preprocessing_num_workers",
    }
)  # fmt: skip
_CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")
_INCOMPLETE_SUFFIX = ".incomplete"
RESULTS_FILE = "all_results.json"
MODEL_CARD_FILE = "README.md"
# A run's own files in output_dir, the only ones a run ever deletes or uploads: the checkpoint folders, the files
# named here, and those the best-model marker lists (what `save_model` wrote: processor, tokenizer and code files).
RUN_FILES = (
    RESULTS_FILE, MODEL_CARD_FILE, PREDICTIONS_FILE, BEST_MODEL_MARKER, "config.json", "model.safetensors.index.json",
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
)  # fmt: skip
_MODEL_WEIGHTS = re.compile(r"^model(-\d+-of-\d+)?\.safetensors$")
# What the launch puts beside them, never deleted: reproduce.py's argument file and console log of a run.
LAUNCH_FILES = ("args.yaml", "train.log")
# Files that may change while a model is saved (the console log, the marker) yet are never part of the model, so
# never listed by its marker nor uploaded with it; the predictions (the test posts' text) go up only when asked.
_NEVER_MODEL_FILES = frozenset({*LAUNCH_FILES, BEST_MODEL_MARKER, PREDICTIONS_FILE, RESULTS_FILE})


def is_run_file_name(name: str) -> bool:
    """Whether a run of these scripts writes a file of this name at the top of its output folder."""
    return name in RUN_FILES or bool(_MODEL_WEIGHTS.match(name))


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
        """The progress saved in ``folder``; a damaged file stops the run naming it and the way out."""
        path = Path(folder, file_name)
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
            raise SystemExit(
                f"{path} is damaged ({type(error).__name__}: {str(error)[:200]}), so the checkpoint {Path(folder)} "
                f"cannot be resumed from or ordered among the others: delete that folder (the other checkpoints stay "
                f"usable), or start afresh with --overwrite_output_dir."
            ) from error


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


def training_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The run's arguments that decide what is trained (all but `RESUME_FREE_ARGUMENTS`), as JSON values."""
    values = {
        name: value
        for name, value in sorted(vars(args).items())
        if name not in RESUME_FREE_ARGUMENTS and isinstance(value, (str, int, float, bool, list, dict, type(None)))
    }
    return json.loads(json.dumps(values))


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str,
    name: str,
    progress: TrainingProgress,
    total_limit: int | None = None,
    arguments: dict[str, Any] | None = None,
) -> Path:
    """`accelerator.save_state` (model, optimizer, scheduler, RNG states, step) plus the progress and the run's
    ``arguments`` (`training_arguments`), atomically.

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
        if arguments is not None:
            (partial / ARGUMENTS_FILE).write_text(json.dumps(arguments, indent=2))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        if total_limit is not None:
            for older in _complete_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(older)
    accelerator.wait_for_everyone()
    logger.info("Saved checkpoint %s", final)
    return final


def marker_files(output_dir: str | os.PathLike) -> list[str]:
    """The files the best-model marker of ``output_dir`` lists as written with the kept model (`save_model`): plain
    names of files in that folder; none when there is no readable marker."""
    try:
        listed = json.loads(Path(output_dir, BEST_MODEL_MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return []
    if not isinstance(listed, list):
        return []
    # The marker is a file in a folder anyone may have edited: a name that leaves the folder is never taken.
    return [
        name for name in listed
        if isinstance(name, str) and file_id_problem(name) is None and name not in _NEVER_MODEL_FILES
    ]


def run_files(output_dir: str | os.PathLike, task: str) -> tuple[list[Path], list[Path]]:
    """The entries of ``output_dir`` that are a run's own (checkpoint folders; and, in a folder that holds an earlier
    run's best-model marker or checkpoints, `RUN_FILES`, model weights and the files the marker lists), and all the
    others, which these scripts did not write; `LAUNCH_FILES` and the trackers' folder (``run_<task>``) are neither.
    A symbolic link is never a run's own, nor is a ``README.md`` in a folder no run has used."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return [], []
    listed = set(marker_files(folder))
    earlier_run = (folder / BEST_MODEL_MARKER).is_file() or find_latest_checkpoint(folder) is not None
    own, foreign = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name in LAUNCH_FILES or entry.name == f"run_{task}":
            continue
        if entry.is_symlink():
            is_own = False
        elif entry.is_dir():
            is_own = is_checkpoint_name(entry.name) and (
                entry.name.endswith(_INCOMPLETE_SUFFIX) or (entry / PROGRESS_FILE).is_file()
            )
        else:
            # A file being written when a run was killed keeps its final name with a suffix.
            name = entry.name.removesuffix(_INCOMPLETE_SUFFIX).removesuffix(PARTIAL_SUFFIX)
            is_own = earlier_run and (name in RUN_FILES or name in listed or bool(_MODEL_WEIGHTS.match(name)))
        (own if is_own else foreign).append(entry)
    return own, foreign


def prepare_output_dir(accelerator: Accelerator, args: argparse.Namespace) -> Path | None:
    """Decide between a fresh start and a resume; return the checkpoint to resume from, if any.

    As in transformers' examples, a fresh training run needs an empty or new output_dir: one that holds anything is
    refused, naming it, unless ``--overwrite_output_dir``; and even then only a run's own files (`run_files`) are
    deleted, everything else stays (and is never uploaded). ``--resume_from_checkpoint latest`` in a folder with no
    checkpoint yet starts the run there afresh when the folder holds nothing but an interrupted run's own files (no
    results, no kept model). A run that does
    not train writes its results and predictions only into a new folder, a trained model's folder of these scripts
    (its ``best_model.json``), or with ``--overwrite_output_dir``.
    """
    output_dir = Path(args.output_dir)
    checkpoint = None
    if not args.do_train:
        replaced = [output_dir / name for name in (RESULTS_FILE, PREDICTIONS_FILE) if (output_dir / name).exists()]
        if replaced and not args.overwrite_output_dir and not (output_dir / BEST_MODEL_MARKER).is_file():
            raise SystemExit(
                f"--output_dir {output_dir} already holds {' and '.join(path.name for path in replaced)}, which this "
                f"run would replace: give a new --output_dir, or pass --overwrite_output_dir to replace them."
            )
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
        own, foreign = run_files(output_dir, args.task)
        # Only an interrupted run starts afresh: a finished one (its results or kept model) is not deleted unasked.
        finished = [path for path in own if path.name in (RESULTS_FILE, BEST_MODEL_MARKER)]
        restart = args.resume_from_checkpoint == "latest" and not foreign and not finished
        if (own or foreign) and not args.overwrite_output_dir and not restart:
            names = first_then_count([path.name for path in foreign or own], separator=", ")
            what = f"files these scripts did not write ({names})" if foreign else f"an earlier run ({names})"
            raise SystemExit(
                f"--output_dir {output_dir} already holds {what}, and a new run starts in an empty folder: give a new "
                f"--output_dir; --resume_from_checkpoint (a checkpoint folder, or latest) continues an interrupted run "
                f"from its checkpoint; --overwrite_output_dir starts over there, deleting only a run's own files "
                f"(checkpoints, model, processor, {MODEL_CARD_FILE}, {RESULTS_FILE}, {PREDICTIONS_FILE})."
            )
        if own:
            logger.warning(
                "--output_dir %s holds an earlier run: deleting its %s now.",
                output_dir,
                first_then_count([path.name for path in own], separator=", "),
            )
        overwritten = sorted(path.name for path in foreign if is_run_file_name(path.name))
        if overwritten:
            # Not an earlier run's, so not deleted now; --overwrite_output_dir lets this run write its own over them.
            logger.warning(
                "--overwrite_output_dir: %s holds %s, which no earlier run of these scripts wrote; they stay until "
                "this run writes its own file of that name over them.",
                output_dir,
                ", ".join(overwritten),
            )
        if foreign:
            logger.warning(
                "--overwrite_output_dir: %s also holds files these scripts did not write (%s): they stay, and are "
                "never uploaded.",
                output_dir,
                first_then_count([path.name for path in foreign], separator=", "),
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for path in own:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return checkpoint


def _check_arguments(checkpoint: Path, args: argparse.Namespace) -> None:
    """Refuse to resume with other training arguments than the checkpoint's run had (unless told to)."""
    path = checkpoint / ARGUMENTS_FILE
    override = "--ignore_changed_arguments"
    if not path.is_file():
        if not args.ignore_changed_arguments:
            raise SystemExit(
                f"--resume_from_checkpoint: {checkpoint} has no {ARGUMENTS_FILE}, so whether this run's arguments are "
                f"the ones it was trained with cannot be checked; pass {override} to resume it anyway."
            )
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"{path} is damaged ({error}); pass {override} to resume without the check.") from error
    now = training_arguments(args)
    changed = sorted(name for name in saved.keys() | now.keys() if saved.get(name) != now.get(name))
    if not changed:
        return
    listed = first_then_count([f"--{name}: {saved.get(name)!r} then, {now.get(name)!r} now" for name in changed])
    if not args.ignore_changed_arguments:
        raise SystemExit(
            f"--resume_from_checkpoint {checkpoint}: the run was trained with other arguments ({listed}). "
            f"Resume with the same values, or pass {override} to go on with the new ones (the optimizer, "
            f"learning-rate schedule and step of the checkpoint are restored as saved)."
        )
    logger.warning("%s: resuming with changed arguments (%s)", override, listed)


def _check_random_states(accelerator: Accelerator, checkpoint: Path) -> None:
    """accelerate skips an unreadable RNG state file with an INFO line, and the resumption is then not exact: a
    damaged, missing or foreign file stops the run instead, naming it. Read weights-only (`load_weights_only`)."""
    path = checkpoint / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl"
    try:
        states = load_weights_only(path)
    except UnsafeCheckpointFile as error:
        reason = f"{error.reason}; {READ_ONLY_PLAIN_VALUES}"
    else:
        reason = _random_states_problem(states)
    if reason is not None:
        raise SystemExit(
            f"--resume_from_checkpoint: {path} cannot be read ({reason}), so the random state of the run cannot be "
            f"restored and the resumed run would not be the interrupted one. Delete {checkpoint} to resume from an "
            f"earlier checkpoint, or start afresh with --overwrite_output_dir."
        )


def _random_states_problem(states: Any) -> str | None:
    """What is wrong with the content of an RNG state file (`accelerate.checkpointing.save_accelerator_state`'s
    ``random.getstate()``, ``np.random.get_state()``, ``torch.get_rng_state()`` and the step), or None."""
    if not isinstance(states, dict):
        return f"it holds a {type(states).__name__}, not the states' mapping"
    missing = {"random_state", "numpy_random_seed", "torch_manual_seed"} - set(states)
    if missing:
        return f"it lacks {sorted(missing)}"
    python_state, numpy_state = states["random_state"], states["numpy_random_seed"]
    if not (isinstance(python_state, tuple) and len(python_state) == 3 and isinstance(python_state[1], tuple)):
        return "its random_state is not Python's random.getstate()"
    if not (isinstance(numpy_state, tuple) and len(numpy_state) == 5 and isinstance(numpy_state[1], np.ndarray)
            and numpy_state[1].dtype == np.uint32):  # fmt: skip
        return "its numpy_random_seed is not numpy's random state"
    if not (isinstance(states["torch_manual_seed"], torch.Tensor) and states["torch_manual_seed"].dtype == torch.uint8):
        return "its torch_manual_seed is not torch's random state"
    return None


def resume(
    accelerator: Accelerator,
    checkpoint: Path,
    args: argparse.Namespace,
    improves: Callable[[dict[str, Any], dict[str, Any]], bool],
) -> TrainingProgress:
    """Load a checkpoint into the prepared objects and return its progress.

    ``improves(metrics, best_metrics)`` tells whether validation metrics beat the kept ones (`TaskInfo.improves`).

    The checkpoint is checked first: its progress file, the run's arguments (`_check_arguments`) and its random
    states must be intact, each of its pickled files must hold only what these scripts save (read weights-only,
    `muse_training.checkpoint_files`), and its weights must load; anything else stops the run naming the file and the
    way out.
    The best model in ``output_dir`` may have been saved by the interrupted run after this checkpoint; its marker is
    then the authority on which model is kept, so the best-so-far is never lost nor silently replaced by a worse one.
    """
    progress = TrainingProgress.load(checkpoint)
    _check_arguments(checkpoint, args)
    _check_random_states(accelerator, checkpoint)
    try:
        check_pickled_files(checkpoint)
    except UnsafeCheckpointFile as error:
        raise SystemExit(
            f"--resume_from_checkpoint: {error}. Delete {checkpoint} to resume from an earlier checkpoint, or start "
            f"afresh with --overwrite_output_dir."
        ) from error
    try:
        with weights_only_loading():
            accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - safetensors, torch and accelerate each raise their own
        raise SystemExit(
            f"--resume_from_checkpoint: {checkpoint} cannot be loaded ({type(error).__name__}: {str(error)[:200]}); "
            f"its files are damaged or incomplete. Delete it to resume from an earlier checkpoint, or start afresh "
            f"with --overwrite_output_dir."
        ) from error
    marker = Path(args.output_dir, BEST_MODEL_MARKER)
    if marker.is_file():
        kept = json.loads(marker.read_text())
        kept.pop("files", None)
        if not progress.best or improves(kept["metrics"], progress.best["metrics"]):
            progress.best = kept
    logger.info(
        "Resumed from %s: %d optimizer steps done, continuing epoch %d after its first %d steps.",
        checkpoint,
        progress.completed_steps,
        progress.epoch + 1,
        progress.epoch_step,
    )
    return progress


def regularizer_weights_prefix(model: nn.Module) -> str | None:
    """The state-dict prefix of the model's training-only decoders (``"muse.regularizers."`` in a task model), or
    ``None`` when it has none."""
    regularizers = model.base_muse.regularizers
    if regularizers is None:
        return None
    name = next(name for name, module in model.named_modules() if module is regularizers)
    return f"{name}."


@contextmanager
def _config_without_regularizers(model: nn.Module, drop: bool) -> Iterator[None]:
    """While saving: the written configuration says there are no decoder weights (``include_regularizers=False``),
    so that every Auto class builds the model without them; the training model keeps its own configuration."""
    kept = model.config.include_regularizers
    if drop:
        model.config.include_regularizers = False
    try:
        yield
    finally:
        model.config.include_regularizers = kept


def save_model(
    accelerator: Accelerator,
    model: nn.Module,
    processor: MuSEProcessor,
    output_dir: str,
    best: dict[str, Any],
    keep_regularizers: bool = False,
) -> None:
    """Save the model (safetensors) and processor into ``output_dir``, then the marker describing them.

    The saved model is for serving and further training: without ``keep_regularizers`` it leaves out the caption
    and PixelCNN++ decoders (with their noisy projections), which predictions never use; training from it again
    starts them newly initialised (`muse_training.models.build_model`).
    """
    accelerator.wait_for_everyone()
    before = _file_stamps(output_dir) if accelerator.is_main_process else {}
    # get_state_dict gathers the full weights where they are sharded (FSDP, DeepSpeed); else it is the model's own.
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if is_adapter_model(unwrapped):
        # A LoRA run (--use_peft) keeps its adapter, which loads onto the base model it names.
        save_adapter(unwrapped, output_dir, state_dict, is_main_process=accelerator.is_main_process)
    else:
        dropped = None if keep_regularizers else regularizer_weights_prefix(unwrapped)
        if dropped is not None and state_dict is not None:
            state_dict = {name: value for name, value in state_dict.items() if not name.startswith(dropped)}
        with _config_without_regularizers(unwrapped, drop=dropped is not None):
            unwrapped.save_pretrained(
                output_dir, state_dict=state_dict, is_main_process=accelerator.is_main_process,
                save_function=accelerator.save,
            )
    if accelerator.is_main_process:
        processor.save_pretrained(output_dir)
        written = sorted(
            name for name, stamp in _file_stamps(output_dir).items()
            if before.get(name) != stamp and name not in _NEVER_MODEL_FILES
        )
        # Written last and atomically: a marker always describes complete model files, and lists them (`run_files`).
        marker = Path(output_dir, BEST_MODEL_MARKER)
        partial = marker.with_name(marker.name + _INCOMPLETE_SUFFIX)
        partial.write_text(json.dumps({**best, "files": written}, indent=2))
        partial.replace(marker)
    accelerator.wait_for_everyone()


def _file_stamps(folder: str | os.PathLike) -> dict[str, tuple[int, int, int]]:
    """Each regular file directly in ``folder`` with what changes when it is written (inode, size, modification
    time), to tell the files a save wrote."""
    stamps = {}
    if not os.path.isdir(folder):
        return stamps
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            stamps[entry.name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return stamps


def load_best_weights(accelerator: Accelerator, model: nn.Module, output_dir: str) -> None:
    """Put the kept (best) model's weights from ``output_dir`` into the prepared ``model``.

    A kept model saved without its decoders leaves the training model's own decoders as they are (predictions do
    not use them); any other weight that does not match is an error.
    """
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if is_adapter_model(unwrapped):
        load_adapter_weights(unwrapped, output_dir)
        return
    # from_pretrained undoes whatever save_pretrained did to the checkpoint (tied or renamed weights).
    best = type(unwrapped).from_pretrained(output_dir)
    decoders = regularizer_weights_prefix(unwrapped)
    strict = decoders is None or regularizer_weights_prefix(best) is not None
    if accelerator.is_fsdp2:
        # Parameters are shards (DTensors): torch's loader cuts each process's share out of the full weights.
        unmatched = set_model_state_dict(
            unwrapped, best.state_dict(), options=StateDictOptions(full_state_dict=True, strict=strict)
        )
    else:
        unmatched = unwrapped.load_state_dict(best.state_dict(), strict=strict)
    if not strict:
        stray = [name for name in unmatched.missing_keys if not name.startswith(decoders)]
        if stray or unmatched.unexpected_keys:
            raise RuntimeError(
                f"The kept model in {output_dir} does not match the trained model: missing {stray}, unexpected "
                f"{list(unmatched.unexpected_keys)}."
            )
