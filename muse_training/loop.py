"""The start of a run, its Accelerator and the training loop: train, validate after every epoch, keep the best model.

Resumption is exact: the training data order depends only on (seed, epoch), data loading never draws from the
global RNG that dropout and the regularizer noise use, and a resumed run skips the batches its epoch had done.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, parse_flag_from_env, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from processing_muse import MuSEProcessor

from .arguments import TaskInfo, parse_args
from .checkpoints import (
    TrainingProgress,
    prepare_output_dir,
    resume,
    save_checkpoint,
    save_model,
    training_arguments,
)
from .data import load_splits, prepare_streamed_loaders, while_every_process_has_a_batch
from .divergence import NonFiniteLossGuard, check_validation_loss, check_weights_finite
from .evaluation import use_best_model
from .hub_upload import create_hub_repo
from .logs import LossMeter, configure_logging, epoch_summary
from .freed_memory import keep_freed_memory_in_process
from .optimization import Schedule, create_optimizer, create_scheduler

__all__ = [
    "RunOutcome",
    "RunStart",
    "create_accelerator",
    "fit",
    "prepare_for_training",
    "start_run",
    "train_evaluate_predict",
]

logger = get_logger(__name__)


def create_accelerator(args: argparse.Namespace) -> Accelerator:
    """The `Accelerator` of the run, and logging set up so that only the main process talks.

    Mixed precision and the number of processes come from `accelerate launch` / `accelerate config`.
    """
    # `accelerate launch --multi_gpu` on a machine without an accelerator starts several processes that would
    # each train alone (accelerate then sees no distributed device); `cpu=True` makes them one gloo group.
    multi_process_on_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    accelerator = Accelerator(
        cpu=multi_process_on_cpu or None,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # Seedable sampler: the order of epoch e depends on (seed, e) only, which a mid-epoch resume relies on.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir if args.with_tracking else None,
    )
    configure_logging(accelerator)
    if args.keep_freed_memory and accelerator.device.type == "cpu" and keep_freed_memory_in_process():
        logger.debug("glibc keeps freed memory in the process (muse_training/freed_memory.py)")
    if accelerator.distributed_type != DistributedType.NO:
        logger.info(accelerator.state, main_process_only=False)
    for plugin, distributed_type in (("FSDP", DistributedType.FSDP), ("DEEPSPEED", DistributedType.DEEPSPEED)):
        # accelerate builds these set-ups on GPUs (and similar devices) only; elsewhere it falls back without a word.
        if parse_flag_from_env(f"ACCELERATE_USE_{plugin}") and accelerator.distributed_type != distributed_type:
            logger.warning(
                "The accelerate config asks for %s, which accelerate runs on GPUs only: this run is %s instead.",
                plugin,
                accelerator.distributed_type,
            )
    if args.defaults_used:
        setting = "the quick-start configuration" if args.is_quickstart else "the paper's settings"
        logger.info(
            "Arguments left unset take %s: %s",
            setting,
            ", ".join(f"--{name} {value}" for name, value in args.defaults_used.items()),
        )
    return accelerator


@dataclass
class RunStart:
    """What a run has before its model: the arguments, the Accelerator, the splits and the checkpoint to resume."""

    args: argparse.Namespace
    accelerator: Accelerator
    raw_datasets: Any
    checkpoint: Path | None
    start_time: float


def start_run(task: TaskInfo, argv: Sequence[str] | None) -> RunStart:
    """Parse the command line (or an argument file with overrides; `arguments.parse_args`), create the Accelerator,
    seed, create the Hub repository for ``--push_to_hub``, load the splits there are (which settles ``--do_train`` /
    ``--do_eval`` / ``--do_predict``) and prepare the output folder (the checkpoint a resumed run continues)."""
    start_time = time.perf_counter()
    args = parse_args(task, argv)
    accelerator = create_accelerator(args)
    set_seed(args.seed)
    if args.push_to_hub and accelerator.is_main_process:
        args.hub_model_id, _ = create_hub_repo(args.hub_model_id, args.hub_token, args.hub_private_repo)
    raw_datasets = load_splits(args, accelerator)
    checkpoint = prepare_output_dir(accelerator, args)
    return RunStart(args, accelerator, raw_datasets, checkpoint, start_time)


def prepare_for_training(
    accelerator: Accelerator,
    model: nn.Module,
    dataloaders: dict[str, DataLoader],
    task: TaskInfo,
    args: argparse.Namespace,
) -> tuple[nn.Module, torch.optim.Optimizer | None, dict[str, DataLoader]]:
    """The optimizer (a separate learning rate for the task head; none without ``--do_train``), and the model,
    optimizer and data loaders placed by ``accelerator.prepare`` on the devices and processes of the launch."""
    optimizer = create_optimizer(model, task.head_modules, args) if args.do_train else None
    if args.streaming:
        model, optimizer = accelerator.prepare(model, optimizer)
        return model, optimizer, prepare_streamed_loaders(accelerator, dataloaders)
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *dataloaders.values())
    return model, optimizer, dict(zip(dataloaders, prepared, strict=True))


def _tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    # Trackers accept scalars only; the Hub token is a secret.
    return {
        name: value
        for name, value in vars(args).items()
        if isinstance(value, (int, float, str, bool)) and name != "hub_token"
    }


def fit(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    schedule: Schedule,
    train_dataloader: DataLoader,
    validate: Callable[[], dict[str, Any]],
    task: TaskInfo,
    processor: MuSEProcessor,
    progress: TrainingProgress,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Train for ``schedule.max_train_steps`` optimizer steps, validating after every epoch.

    ``validate()`` returns the validation metrics (the task's ``metric_names`` and ``loss`` among them; a
    ``"report"`` string is dropped here, the test report is shown at the end). One line per epoch shows the loss
    terms and the ``metric_names`` of validation. The model with the best validation ``task.best_metric`` is saved
    to ``output_dir``; checkpoints follow ``--checkpointing_steps``. A NaN or infinite loss term, weight or
    validation loss stops the run with an error before anything is saved (`muse_training.divergence`). Returns
    training statistics of this process's run for ``all_results.json``.
    """
    if args.with_tracking:
        accelerator.init_trackers(f"run_{args.task}", _tracker_config(args))
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    streamed = schedule.steps_per_epoch is None
    logger.info(
        "Training on %s posts: %s epochs, %d optimizer steps (%s per epoch, %d warm-up), %d posts per step "
        "(%d per process x %d processes x %d accumulated batches)",
        "streamed" if streamed else len(train_dataloader.dataset),
        f"at most {schedule.num_train_epochs}" if streamed else schedule.num_train_epochs,
        schedule.max_train_steps,
        "unknown" if streamed else schedule.steps_per_epoch,
        schedule.num_warmup_steps,
        total_batch_size,
        args.per_device_train_batch_size,
        accelerator.num_processes,
        args.gradient_accumulation_steps,
    )
    training = _Training(accelerator, model, optimizer, lr_scheduler, schedule, progress, args)
    start, samples_trained = time.perf_counter(), 0
    # Log lines pass through tqdm while its bar is shown, instead of landing in the middle of the bar.
    # The bar is closed also when a diverged run stops, so that the error starts on a line of its own.
    with training.progress_bar, logging_redirect_tqdm():
        for epoch in range(progress.epoch, schedule.num_train_epochs):
            epoch_start = time.perf_counter()
            samples_trained += training.train_epoch(train_dataloader, epoch)
            training.end_epoch(epoch, validate, task, processor, epoch_start)
            if progress.completed_steps >= schedule.max_train_steps:
                break
    runtime = time.perf_counter() - start
    return {
        "train_runtime_seconds": runtime,
        "train_samples_per_second": samples_trained * accelerator.num_processes / runtime if runtime else 0.0,
        "train_steps": progress.completed_steps,
        "train_epochs": progress.epoch,
    }


class _Training:
    """The epochs of `fit`: the optimizer steps of one epoch (`train_epoch`), then validation, the best model and the
    epoch's checkpoint (`end_epoch`), sharing the progress, the loss meters and the divergence guard."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        schedule: Schedule,
        progress: TrainingProgress,
        args: argparse.Namespace,
    ) -> None:
        self.accelerator, self.model, self.optimizer, self.lr_scheduler = accelerator, model, optimizer, lr_scheduler
        self.schedule, self.progress, self.args = schedule, progress, args
        self.progress_bar = tqdm(
            total=schedule.max_train_steps,
            initial=progress.completed_steps,
            desc="training",
            disable=not accelerator.is_local_main_process,
        )
        # The window feeds the progress bar and the trackers every --logging_steps; the epoch meter the summary line.
        self.window, self.epoch_meter = LossMeter(accelerator), LossMeter(accelerator)
        self.guard = NonFiniteLossGuard(accelerator)

    def train_epoch(self, train_dataloader: DataLoader, epoch: int) -> int:
        """The optimizer steps of ``epoch`` (the rest of it, for a run resumed mid-epoch), up to the schedule's last;
        returns the number of posts this process trained on."""
        accelerator, progress, args = self.accelerator, self.progress, self.args
        self.epoch_meter.reset()
        self.model.train()
        train_dataloader.set_epoch(epoch)
        batches = train_dataloader
        if epoch == progress.epoch and progress.epoch_step > 0:
            batches = accelerator.skip_first_batches(
                train_dataloader, progress.epoch_step * args.gradient_accumulation_steps
            )
        progress.epoch = epoch
        if self.schedule.steps_per_epoch is None and accelerator.num_processes > 1:
            # Streamed shares differ in length: the epoch ends for every process when one's share ends.
            batches = while_every_process_has_a_batch(accelerator, batches)
        samples_trained = 0
        for batch in batches:
            # Checked before the step, not after it: a run resumed from its final step must not train further.
            if progress.completed_steps >= self.schedule.max_train_steps:
                break
            with accelerator.accumulate(self.model):
                outputs = self.model(**batch)
                self.guard.update(outputs, progress.completed_steps + 1, epoch + 1)
                accelerator.backward(outputs.loss)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad()
            batch_size = batch["input_ids"].shape[0]
            self.window.update(outputs, batch_size)
            self.epoch_meter.update(outputs, batch_size)
            samples_trained += batch_size
            if not accelerator.sync_gradients:
                continue
            progress.completed_steps += 1
            progress.epoch_step += 1
            self.progress_bar.update(1)
            if progress.completed_steps % args.logging_steps == 0:
                # The window's loss is read from the device here anyway: a diverged step stops the run now.
                self.guard.check(progress, args)
                values = _log_window(accelerator, self.window, progress, self.lr_scheduler.get_last_lr()[0], args)
                self.progress_bar.set_postfix(loss=f"{values['loss']:.4f}")
            if isinstance(args.checkpointing_steps, int) and progress.completed_steps % args.checkpointing_steps == 0:
                self._save_checkpoint(f"step_{progress.completed_steps}")
        return samples_trained

    def end_epoch(
        self,
        epoch: int,
        validate: Callable[[], dict[str, Any]],
        task: TaskInfo,
        processor: MuSEProcessor,
        epoch_start: float,
    ) -> None:
        """After ``epoch``'s steps: the last loss window, validation (kept in the progress's history), the model saved
        when it is the best so far, the epoch's summary line and, for ``--checkpointing_steps epoch``, a checkpoint."""
        accelerator, progress, args = self.accelerator, self.progress, self.args
        self._check_before_saving()
        if self.window.batches:
            _log_window(accelerator, self.window, progress, self.lr_scheduler.get_last_lr()[0], args)
        training = self.epoch_meter.summary() if self.epoch_meter.batches else None
        metrics = validate()
        metrics.pop("report", None)
        check_validation_loss(metrics, epoch + 1, progress, args)
        progress.history.append({"epoch": epoch + 1, "step": progress.completed_steps, **metrics})
        if args.with_tracking:
            accelerator.log({f"eval/{name}": value for name, value in metrics.items()}, step=progress.completed_steps)
        improved = task.improves(metrics, progress.best.get("metrics", {}))
        if improved:
            progress.best = {"epoch": epoch + 1, "step": progress.completed_steps, "metrics": metrics}
            save_model(accelerator, self.model, processor, args.output_dir, progress.best, args.keep_regularizers)
        logger.info(
            epoch_summary(
                epoch + 1,
                self.schedule.num_train_epochs,
                training,
                metrics,
                task.metric_names,
                time.perf_counter() - epoch_start,
                args.output_dir if improved else None,
            )
        )
        progress.epoch, progress.epoch_step = epoch + 1, 0
        if args.checkpointing_steps == "epoch":
            self._save_checkpoint(f"epoch_{epoch + 1}")

    def _check_before_saving(self) -> None:
        self.guard.check(self.progress, self.args)
        check_weights_finite(self.accelerator, self.model, self.progress, self.args)

    def _save_checkpoint(self, name: str) -> None:
        self._check_before_saving()
        save_checkpoint(
            self.accelerator,
            self.args.output_dir,
            name,
            self.progress,
            self.args.save_total_limit,
            training_arguments(self.args),
        )


def _log_window(
    accelerator: Accelerator, window: LossMeter, progress: TrainingProgress, lr: float, args: argparse.Namespace
) -> dict[str, float]:
    """The window's loss terms, sent to the trackers (with ``--with_tracking``) and returned for the progress bar."""
    values = window.summary()
    if args.with_tracking:
        accelerator.log(
            {f"train/{name}": value for name, value in values.items()} | {"train/lr": lr}, step=progress.completed_steps
        )
    return values


@dataclass
class RunOutcome:
    """What a run did: its training progress and statistics, and the scores of the model it ends with (``None`` for
    a split it did not score)."""

    progress: TrainingProgress = field(default_factory=TrainingProgress)
    training_stats: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None


def train_evaluate_predict(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    dataloaders: dict[str, DataLoader],
    evaluate: Callable[[str, bool], dict[str, Any]],
    task: TaskInfo,
    processor: MuSEProcessor,
    checkpoint: Path | None,
    args: argparse.Namespace,
) -> RunOutcome:
    """The phases of a run, as ``--do_train``, ``--do_eval`` and ``--do_predict`` ask.

    Training validates after every epoch, keeps the best model and ends with its weights (its validation scores are
    the run's); without training, ``--do_eval`` scores the validation split. ``--do_predict`` scores the test split
    and writes the predictions file: ``evaluate(split, write_predictions)`` does both.
    """
    outcome = RunOutcome()
    if args.do_train:
        lr_scheduler, schedule = create_scheduler(accelerator, optimizer, dataloaders["train"], args)
        if checkpoint:
            outcome.progress = resume(accelerator, checkpoint, args, task.improves)
        outcome.training_stats = fit(
            accelerator,
            model,
            optimizer,
            lr_scheduler,
            schedule,
            dataloaders["train"],
            lambda: evaluate("validation", False),
            task,
            processor,
            outcome.progress,
            args,
        )
        use_best_model(accelerator, model, outcome.progress, args)
        outcome.eval_metrics = outcome.progress.best["metrics"]
    elif args.do_eval:
        outcome.eval_metrics = evaluate("validation", False)
    if args.do_predict:
        outcome.test_metrics = evaluate("test", True)
    return outcome
