#!/usr/bin/env python
"""Train, evaluate and predict with MuSE for multimodal sentiment analysis: the paper's datasets (MVSA-Single,
MVSA-Multiple) or your own (a Hub dataset, a dataset folder, CSV, JSON lines or Parquet files with text, a label of
any label set and images).

    accelerate launch --config_file accelerate_configs/single_process.yaml run_msa.py    # quick start (sample)
    accelerate launch run_msa.py recipes/mvsa_single.yaml       # the paper's MVSA-Single setting
    accelerate launch run_msa.py --train_file train.csv --validation_file dev.csv --test_file test.csv
    python run_msa.py --help                                    # every argument

An explicit Accelerate loop in the manner of transformers' `run_ner_no_trainer.py`; the parts shared with
`run_mner.py` (arguments, data, optimizer, the loop, checkpoints, evaluation, model card) are the modules of
`muse_training`. Scores are accuracy and support-weighted F1 over positive/neutral/negative, as in the MSA
literature the paper compares with (over the data's own classes); the model with the best validation F1 is kept in
``--output_dir`` and scored on the test split, whose predictions (label and class probabilities) go to
``predictions.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F
from transformers import BatchFeature

import modeling_muse  # noqa: F401  (registers MuSE with the transformers Auto classes)
from configuration_muse import ABLATION_VARIANTS
from modeling_muse import MuSEForSequenceClassification
from muse_training.arguments import MSA_DATASETS, TaskInfo
from muse_training.data import build_processor, make_dataloaders, report_splits
from muse_training.evaluation import EvaluationOutput, evaluate_model
from muse_training.loop import prepare_for_training, start_run, train_evaluate_predict
from muse_training.models import align_labels, load_model, model_label_names
from muse_training.predictions import write_predictions
from muse_training.results import finish
from processing_muse import MuSEProcessor

TASK = TaskInfo(
    name="msa",
    title="Multimodal sentiment analysis",
    datasets=MSA_DATASETS,
    variants=tuple(ABLATION_VARIANTS),
    head_modules=("classifier",),
    pipeline_tag="text-classification",
    custom_pipeline="multimodal-sentiment",
    metric_names=("accuracy", "f1"),
    description="Multimodal sentiment analysis (post text + image: positive, neutral, negative, or any label set) "
    "with MuSE.",
)
COLUMNS = ["text", "label", "image"]


@dataclass
class MSACollator:
    """Dataset rows -> model inputs: raw post text and image through the processor, plus the class ids.

    Silent: what the processor does to the text (cut words, unknown words) is reported once per split at load.
    """

    processor: MuSEProcessor

    def __call__(self, rows: list[dict[str, Any]]) -> BatchFeature:
        batch = self.processor(
            images=[row["image"] for row in rows], text=[row["text"] for row in rows], return_tensors="pt", warn=False
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


def sentiment_predictions(split: Any, evaluation: EvaluationOutput, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per post for ``predictions.jsonl``: its text, the predicted label, every class's probability and the
    gold label."""
    return [
        {
            "index": index,
            "text": post["text"],
            "predicted_label": label_names[predicted],
            "probabilities": {name: round(float(p), 6) for name, p in zip(label_names, probabilities, strict=True)},
            "gold_label": label_names[post["label"]],
        }
        for index, (post, predicted, probabilities) in enumerate(
            zip(split.select_columns(["text", "label"]), evaluation.predictions, evaluation.scores, strict=True)
        )
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train MuSE for MSA, keep the best model by validation F1, score it on test and write its predictions (or, with
    ``--model_name_or_path``, evaluate or fine-tune a trained one); returns ``all_results.json``."""
    # The command line (or a recipe and overrides), the Accelerator, the data (which settles --do_train / --do_eval /
    # --do_predict) and the output folder; unset arguments take the quick-start values on the bundled sample and the
    # paper's elsewhere (muse_training.arguments.resolve_defaults).
    run = start_run(TASK, argv)
    args, accelerator, raw_datasets = run.args, run.accelerator, run.raw_datasets
    label_names = raw_datasets[next(iter(raw_datasets))].features["label"].names

    # Model: pretrained towers around newly initialised MuSE layers, or a trained MuSE (a new head for other classes).
    model = load_model(args, MuSEForSequenceClassification, label_names, TASK.head_modules)
    label_names = model_label_names(model)
    raw_datasets = align_labels(raw_datasets, "label", label_names)

    # Processor (text and images -> tensors), one report line per split, data loaders.
    processor = build_processor(args, model.config, label_names=None)
    report_splits(args, raw_datasets, processor, text_column="text")
    dataloaders = make_dataloaders(raw_datasets, COLUMNS, MSACollator(processor), args)

    # Optimizer (separate learning rate for the classifier), devices, schedule, and the state of a resumed run.
    model, optimizer, dataloaders = prepare_for_training(accelerator, model, dataloaders, TASK, args)

    def evaluate(split: str, with_probabilities: bool) -> dict[str, Any]:
        evaluation = evaluate_model(
            accelerator,
            model,
            dataloaders[split],
            predictions_of=lambda outputs: outputs.logits.argmax(dim=-1),
            losses_of=lambda outputs, batch: F.cross_entropy(outputs.logits, batch["labels"], reduction="none"),
            scores_of=(lambda outputs, batch: outputs.logits.softmax(dim=-1)) if with_probabilities else None,
        )
        metrics = sentiment_metrics(evaluation, label_names)
        if with_probabilities and accelerator.is_main_process:
            write_predictions(args.output_dir, sentiment_predictions(raw_datasets[split], evaluation, label_names))
        return metrics

    # Train with validation after every epoch, keeping the best model; then score it on validation and test.
    outcome = train_evaluate_predict(
        accelerator, model, optimizer, dataloaders, evaluate, TASK.metric_names, processor, run.checkpoint, args
    )
    return finish(accelerator, args, TASK, model, outcome, raw_datasets, run.start_time)

if __name__ == "__main__":
    main()
