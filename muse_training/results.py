"""The end of a run: ``all_results.json``, the model card, the test scores on the console, the Hub upload."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch import nn

from .arguments import TaskInfo
from .checkpoints import RESULTS_FILE, TrainingProgress
from .data import SPLITS, describe_data
from .hub import push_to_hub
from .model_card import write_model_card

__all__ = ["finish"]

logger = get_logger(__name__)


def _flat_metrics(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{name}": value for name, value in metrics.items() if not isinstance(value, str)}


def finish(
    accelerator: Accelerator,
    args: argparse.Namespace,
    task: TaskInfo,
    model: nn.Module,
    progress: TrainingProgress,
    test_metrics: dict[str, Any],
    training_stats: dict[str, float],
    raw_datasets: datasets.DatasetDict,
    start_time: float,
) -> dict[str, Any]:
    """Write ``all_results.json`` and the model card, print the test scores, upload if asked, close the trackers.

    Returns the content of ``all_results.json``: the kept model's validation metrics (``eval_*``), its test metrics
    (``test_*``), training statistics and the wall time.
    """
    test_report = test_metrics.get("report")
    results = {
        **_flat_metrics("eval", progress.best["metrics"]),
        "best_epoch": progress.best["epoch"],
        "best_step": progress.best["step"],
        **_flat_metrics("test", test_metrics),
        **training_stats,
        **{f"num_{split}_samples": len(raw_datasets[split]) for split in SPLITS},
        "wall_time_seconds": time.perf_counter() - start_time,
    }
    results = {name: value.item() if isinstance(value, np.generic) else value for name, value in results.items()}
    if test_report:
        logger.info("test report of the best model (epoch %d):\n%s", results["best_epoch"], test_report)
    scores = " | ".join(f"{name} {results[f'test_{name}']:.4f}" for name in task.metric_names)
    accelerator.print(
        f"Test ({args.dataset_name}, best epoch {results['best_epoch']}): {scores} | wall time "
        f"{results['wall_time_seconds']:.0f} s | model and results in {args.output_dir}"
    )
    if accelerator.is_main_process:
        write_model_card(
            args,
            task,
            accelerator.unwrap_model(model),
            progress,
            results,
            test_report,
            describe_data(args, raw_datasets),
            accelerator.num_processes,
        )
        # Written last: its presence means the run finished (reproduce.py skips such runs).
        Path(args.output_dir, RESULTS_FILE).write_text(json.dumps(results, indent=2))
        if args.push_to_hub:
            uploaded = push_to_hub(args.output_dir, args.hub_model_id, args.hub_token)
            logger.info("Uploaded %d files to https://huggingface.co/%s", len(uploaded), args.hub_model_id)
    if args.with_tracking:
        accelerator.log(_flat_metrics("test", test_metrics), step=progress.completed_steps)
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return results
