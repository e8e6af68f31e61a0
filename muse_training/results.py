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

from modeling_muse.hub import is_hub_id

from .arguments import TaskInfo
from .checkpoints import RESULTS_FILE
from .loop import RunOutcome
from .data import describe_data, is_streamed
from .hub_upload import push_to_hub
from .image_effect import effect_summary, effect_table_rows
from .model_card import dataset_id, write_model_card
from .predictions import PREDICTIONS_FILE

__all__ = ["finish"]

logger = get_logger(__name__)


def _flat_metrics(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{name}": value for name, value in metrics.items() if not isinstance(value, str)}


def finish(
    accelerator: Accelerator,
    args: argparse.Namespace,
    task: TaskInfo,
    model: nn.Module,
    outcome: RunOutcome,
    raw_datasets: datasets.DatasetDict,
    start_time: float,
) -> dict[str, Any]:
    """Write ``all_results.json`` and (after training) the model card, print the scores, upload if asked, close the
    trackers.

    Returns the content of ``all_results.json``: the model's validation metrics (``eval_*``; after training, those of
    the kept model), its test metrics (``test_*``), training statistics and the wall time; what the run did not do is
    left out.
    """
    progress, eval_metrics, test_metrics = outcome.progress, outcome.eval_metrics, outcome.test_metrics
    results: dict[str, Any] = {}
    if eval_metrics is not None:
        results.update(_flat_metrics("eval", eval_metrics))
    if progress.best:
        results.update(best_epoch=progress.best["epoch"], best_step=progress.best["step"])
    if test_metrics is not None:
        results.update(_flat_metrics("test", test_metrics))
    results.update(outcome.training_stats)
    if not is_streamed(raw_datasets):
        results.update({f"num_{split}_samples": len(raw_datasets[split]) for split in raw_datasets})
    results["wall_time_seconds"] = time.perf_counter() - start_time
    results = {name: value.item() if isinstance(value, np.generic) else value for name, value in results.items()}
    test_report = test_metrics.get("report") if test_metrics is not None else None
    kept = f", best epoch {results['best_epoch']}" if progress.best else ""
    if test_report:
        logger.info("test report of the %s:\n%s", f"best model (epoch {results['best_epoch']})" if kept else "model",
                    test_report)
    for split_name, split_prefix in (("validation", "eval"), ("test", "test")):
        effect = effect_table_rows(results, split_prefix, task.metric_names)
        if effect:
            logger.info(
                "what the picture adds on %s (score with the pictures, with the placeholder picture instead, "
                "difference): %s",
                split_name,
                effect_summary(effect),
            )
    split, prefix = ("Test", "test") if test_metrics is not None else ("Validation", "eval")
    if test_metrics is not None or eval_metrics is not None:
        scores = " | ".join(f"{name} {results[f'{prefix}_{name}']:.4f}" for name in task.metric_names)
        accelerator.print(
            f"{split} ({dataset_id(args)}{kept}): {scores} | wall time "
            f"{results['wall_time_seconds']:.0f} s | {'model and ' if args.do_train else ''}results in "
            f"{args.output_dir}"
        )
    if accelerator.is_main_process:
        if args.do_train:
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
        if args.push_to_hub and args.do_train:
            base = getattr(args, "peft_base_model", None) or args.model_name_or_path
            uploaded = push_to_hub(
                args.output_dir,
                args.hub_model_id,
                args.hub_token,
                include_predictions=args.push_predictions,
                base_model_hub_id=base if is_hub_id(base) else None,
            )
            logger.info("Uploaded %d files to https://huggingface.co/%s", len(uploaded), args.hub_model_id)
            if args.do_predict and not args.push_predictions:
                logger.info("%s stays here (--push_predictions uploads it).", PREDICTIONS_FILE)
    if args.with_tracking:
        if test_metrics is not None:
            accelerator.log(_flat_metrics("test", test_metrics), step=progress.completed_steps)
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return results
