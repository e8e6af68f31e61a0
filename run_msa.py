#!/usr/bin/env python
"""Train MuSE for multimodal sentiment analysis (MVSA-Single, MVSA-Multiple).

    accelerate launch run_msa.py           # quick start: bundled MVSA-Single sample, small model, a few minutes
    python run_msa.py --help               # every argument
    accelerate launch run_msa.py --dataset_name mvsa_single --data_dir data/MVSA_Single \\
        --text_model_name_or_path bert-base-uncased                               # the paper's setting

An explicit Accelerate loop in the manner of transformers' `run_ner_no_trainer.py`; the parts shared with
`run_mner.py` (arguments, optimizer groups, the loop, checkpoint/resume, evaluation, model card) are in
`training_common.py`. Scores are accuracy and support-weighted F1 over positive/neutral/negative, as in the MSA
literature the paper compares with; the model with the best validation F1 is kept in ``--output_dir`` and scored on
the test split.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import set_seed
from torch.nn import functional as F
from transformers import BatchFeature

import modeling_muse  # noqa: F401  (registers MuSE with the transformers Auto classes)
from configuration_muse import ABLATION_VARIANTS
from modeling_muse import MuSEForSequenceClassification
from processing_muse import MuSEProcessor
from training_common import (
    MSA_DATASETS,
    EvaluationOutput,
    TaskInfo,
    TrainingProgress,
    build_processor,
    create_accelerator,
    create_hub_repo,
    create_optimizer,
    create_scheduler,
    evaluate_model,
    finish,
    fit,
    load_splits,
    make_dataloaders,
    parse_args,
    prepare_output_dir,
    resume,
    score_best_model,
)

TASK = TaskInfo(
    name="msa",
    datasets=MSA_DATASETS,
    variants=tuple(ABLATION_VARIANTS),
    head_modules=("classifier",),
    pipeline_tag="text-classification",
    metric_names=("accuracy", "f1"),
    description="Multimodal sentiment analysis (post text + image: positive, neutral, negative) with MuSE.",
)
COLUMNS = ["text", "label", "image"]


@dataclass
class MSACollator:
    """Dataset rows -> model inputs: raw post text and image through the processor, plus the class ids."""

    processor: MuSEProcessor

    def __call__(self, rows: list[dict[str, Any]]) -> BatchFeature:
        batch = self.processor(
            images=[row["image"] for row in rows], text=[row["text"] for row in rows], return_tensors="pt"
        )
        batch["labels"] = torch.tensor([row["label"] for row in rows])
        return batch


def sentiment_metrics(evaluation: EvaluationOutput, label_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, support-weighted F1 (``f1``), per-class F1 (``<label>_f1``), the loss, and a per-class report.

    A class never predicted has precision 0 (and never present, recall 0), as with scikit-learn's
    ``zero_division=0``.
    """
    predictions, labels = evaluation.predictions, evaluation.labels
    rows, weighted_f1 = [], 0.0
    metrics: dict[str, Any] = {"accuracy": float((predictions == labels).mean()), "loss": evaluation.loss}
    for class_id, name in enumerate(label_names):
        true_positives = int(((predictions == class_id) & (labels == class_id)).sum())
        predicted, support = int((predictions == class_id).sum()), int((labels == class_id).sum())
        precision = true_positives / predicted if predicted else 0.0
        recall = true_positives / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        weighted_f1 += f1 * support
        metrics[f"{name}_f1"] = f1
        rows.append(f"{name:>12} {precision:10.4f} {recall:10.4f} {f1:10.4f} {support:10d}")
    metrics["f1"] = weighted_f1 / len(labels) if len(labels) else 0.0
    header = f"{'':>12} {'precision':>10} {'recall':>10} {'f1-score':>10} {'support':>10}"
    metrics["report"] = "\n".join([header, *rows, f"{'weighted f1':>12} {metrics['f1']:32.4f} {len(labels):10d}"])
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train MuSE for MSA, keep the best model by validation F1, score it on test; returns ``all_results.json``."""
    start_time = time.perf_counter()
    args = parse_args(TASK, argv)
    accelerator = create_accelerator(args)
    set_seed(args.seed)
    checkpoint = prepare_output_dir(accelerator, args)
    if args.push_to_hub and accelerator.is_main_process:
        args.hub_model_id = create_hub_repo(args.hub_model_id, args.hub_token)

    # Data and model. The classes come from the dataset (positive, neutral, negative).
    raw_datasets = load_splits(args, accelerator)
    label_names = raw_datasets["train"].features["label"].names
    model = MuSEForSequenceClassification.from_text_vision_pretrained(
        args.text_model_name_or_path,
        args.vision_model_name,
        pretrained_vision=args.pretrained_vision,
        id2label=dict(enumerate(label_names)),
        label2id={label: index for index, label in enumerate(label_names)},
        **args.muse_config,
    )
    processor = build_processor(args, model.config, label_names=None)
    collate = MSACollator(processor)
    train_dataloader, eval_dataloader, test_dataloader = make_dataloaders(raw_datasets, COLUMNS, collate, args)

    # Optimizer (separate learning rate for the classifier), devices, schedule, and the state of a resumed run.
    optimizer = create_optimizer(model, TASK.head_modules, args)
    model, optimizer, train_dataloader, eval_dataloader, test_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, test_dataloader
    )
    lr_scheduler, schedule = create_scheduler(accelerator, optimizer, train_dataloader, args)
    progress = resume(accelerator, checkpoint, args.output_dir) if checkpoint else TrainingProgress()

    def evaluate(dataloader) -> dict[str, Any]:
        evaluation = evaluate_model(
            accelerator,
            model,
            dataloader,
            predictions_of=lambda outputs: outputs.logits.argmax(dim=-1),
            losses_of=lambda outputs, batch: F.cross_entropy(outputs.logits, batch["labels"], reduction="none"),
        )
        return sentiment_metrics(evaluation, label_names)

    # Train with validation after every epoch, then score the kept (best) model on the test split.
    training_stats = fit(
        accelerator,
        model,
        optimizer,
        lr_scheduler,
        schedule,
        train_dataloader,
        lambda: evaluate(eval_dataloader),
        processor,
        progress,
        args,
    )
    test_metrics = score_best_model(accelerator, model, args, lambda: evaluate(test_dataloader))
    return finish(accelerator, args, TASK, model, progress, test_metrics, training_stats, raw_datasets, start_time)


if __name__ == "__main__":
    main()
