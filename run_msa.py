#!/usr/bin/env python
"""Train, evaluate and predict with MuSE for multimodal sentiment analysis: the paper's datasets (MVSA-Single,
MVSA-Multiple) or your own (a Hub dataset, a dataset folder, CSV, JSON lines or Parquet files with text, a label of
any label set and images): one class per post, several (a list of labels per post), or a number to predict (e.g.
sentiment intensity), transformers' three ``problem_type`` values (``--problem_type``; by default the labels tell).

    accelerate launch --config_file accelerate_configs/single_process.yaml run_msa.py    # quick start (sample)
    accelerate launch run_msa.py recipes/mvsa_single.yaml       # the paper's MVSA-Single setting
    accelerate launch run_msa.py --train_file train.csv --validation_file dev.csv --test_file test.csv
    python run_msa.py --help                                    # every argument

An explicit Accelerate loop in the manner of transformers' `run_ner_no_trainer.py`; the parts shared with
`run_mner.py` (arguments, data, optimizer, the loop, checkpoints, evaluation, model card) are the modules of
`muse_training`. Scores are accuracy and support-weighted F1 over positive/neutral/negative, as in the MSA
literature the paper compares with (over the data's own classes); for several labels per post, micro and macro F1
and exact-match accuracy; for a number, mean squared and absolute error (and Pearson's r). The model with the best
validation F1 (micro F1; the least mean squared error) is kept in ``--output_dir`` and scored on the test split,
whose predictions (label and class probabilities; labels and each one's sigmoid score; the predicted number) go to
``predictions.jsonl``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
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
from muse_training.models import align_labels, load_model, model_label_names, problem_type_of
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
SINGLE_LABEL, MULTI_LABEL, REGRESSION = "single_label_classification", "multi_label_classification", "regression"
# Per problem type: the headline metrics, the one that selects the kept model, and whether higher is better.
PROBLEM_METRICS = {
    SINGLE_LABEL: (("accuracy", "f1"), "f1", True),
    MULTI_LABEL: (("micro_f1", "macro_f1", "exact_match"), "micro_f1", True),
    REGRESSION: (("mse", "mae"), "mse", False),
}


def task_for(problem_type: str) -> TaskInfo:
    """`TASK` with the metrics of ``problem_type``."""
    metric_names, best_metric, greater_is_better = PROBLEM_METRICS[problem_type]
    return dataclasses.replace(
        TASK, metric_names=metric_names, best_metric=best_metric, greater_is_better=greater_is_better
    )


def data_problem_type(feature: Any) -> str:
    """The problem type of the splits' ``label`` feature (`datasets_scripts.user_data`): a ``ClassLabel``, a list of
    them, or a number."""
    if isinstance(feature, datasets.ClassLabel):
        return SINGLE_LABEL
    return REGRESSION if isinstance(feature, datasets.Value) else MULTI_LABEL


@dataclass
class MSACollator:
    """Dataset rows -> model inputs: raw post text and image through the processor, plus the labels that
    ``problem_type`` asks for (`MuSEForSequenceClassification.forward`): class ids, multi-hot rows over
    ``num_labels`` classes, or float targets.

    Silent: what the processor does to the text (cut words, unknown words) is reported once per split at load.
    """

    processor: MuSEProcessor
    problem_type: str = SINGLE_LABEL
    num_labels: int = 0

    def __call__(self, rows: list[dict[str, Any]]) -> BatchFeature:
        batch = self.processor(
            images=[row["image"] for row in rows], text=[row["text"] for row in rows], return_tensors="pt", warn=False
        )
        if "label" not in rows[0]:
            return batch  # new posts to tag have no labels
        labels = [row["label"] for row in rows]
        if self.problem_type == MULTI_LABEL:
            multi_hot = torch.zeros(len(rows), self.num_labels)
            for index, class_ids in enumerate(labels):
                multi_hot[index, class_ids] = 1.0
            batch["labels"] = multi_hot
        else:
            batch["labels"] = torch.tensor(labels, dtype=torch.float32 if self.problem_type == REGRESSION else None)
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


def _f1(true_positives: int, false_positives: int, false_negatives: int) -> tuple[float, float, float]:
    predicted, present = true_positives + false_positives, true_positives + false_negatives
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / present if present else 0.0
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)


def multi_label_metrics(evaluation: EvaluationOutput, label_names: Sequence[str]) -> dict[str, Any]:
    """Micro and macro F1 over the labels, exact-match accuracy (every label of a post right), per-label F1
    (``<label>_f1``), the loss, and a per-label report; predictions and labels are multi-hot rows.

    As scikit-learn's ``f1_score(average="micro" / "macro", zero_division=0)`` and ``accuracy_score`` on
    multi-label indicators.
    """
    predicted, gold = evaluation.predictions.astype(bool), evaluation.labels.astype(bool)
    true_positives = (predicted & gold).sum(axis=0)
    false_positives = (predicted & ~gold).sum(axis=0)
    false_negatives = (~predicted & gold).sum(axis=0)
    metrics: dict[str, Any] = {"exact_match": float((predicted == gold).all(axis=1).mean()), "loss": evaluation.loss}
    header = f"{'':>12} {'precision':>10} {'recall':>10} {'f1-score':>10} {'support':>10}"
    rows, per_label = [header], []
    for index, name in enumerate(label_names):
        counts = (int(true_positives[index]), int(false_positives[index]), int(false_negatives[index]))
        precision, recall, f1 = _f1(*counts)
        per_label.append(f1)
        metrics[f"{name}_f1"] = f1
        rows.append(f"{name:>12} {precision:10.4f} {recall:10.4f} {f1:10.4f} {int(gold[:, index].sum()):10d}")
    precision, recall, metrics["micro_f1"] = _f1(
        int(true_positives.sum()), int(false_positives.sum()), int(false_negatives.sum())
    )
    metrics["macro_f1"] = float(np.mean(per_label)) if per_label else 0.0
    rows += [
        f"{'micro avg':>12} {precision:10.4f} {recall:10.4f} {metrics['micro_f1']:10.4f} {int(gold.sum()):10d}",
        f"{'macro f1':>12} {metrics['macro_f1']:32.4f}",
        f"{'exact match':>12} {metrics['exact_match']:32.4f} {len(gold):10d}",
    ]
    metrics["report"] = "\n".join(rows)
    return metrics


def regression_metrics(evaluation: EvaluationOutput) -> dict[str, Any]:
    """Mean squared error (``mse``, the loss per post averaged), mean absolute error, and Pearson's r between the
    predicted and the gold values (``pearson``, left out where either has no variance and r is undefined)."""
    predicted, gold = evaluation.predictions.astype(np.float64), evaluation.labels.astype(np.float64)
    errors = predicted - gold
    metrics: dict[str, Any] = {
        "mse": float(np.mean(errors**2)) if len(errors) else 0.0,
        "mae": float(np.mean(np.abs(errors))) if len(errors) else 0.0,
        "loss": evaluation.loss,
    }
    defined = len(gold) > 1 and predicted.std() > 0 and gold.std() > 0
    if defined:
        metrics["pearson"] = float(np.corrcoef(predicted, gold)[0, 1])
    pearson = f" | pearson {metrics['pearson']:.4f}" if defined else " | pearson undefined (a constant)"
    metrics["report"] = f"{len(gold)} posts | mse {metrics['mse']:.4f} | mae {metrics['mae']:.4f}{pearson}"
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
            "gold_label": label_names[post["label"]] if "label" in post else None,
        }
        for index, (post, predicted, probabilities) in enumerate(
            zip(_text_and_labels(split), evaluation.predictions, evaluation.scores, strict=True)
        )
    ]


def _text_and_labels(split: Any) -> Any:
    """The split's text and labels, or only its text (new posts without labels)."""
    return split.select_columns([column for column in ("text", "label") if column in split.column_names])


def multi_label_predictions(
    split: Any, evaluation: EvaluationOutput, label_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per post for ``predictions.jsonl``: its text, the predicted labels (sigmoid score above 0.5), every
    label's sigmoid score and the gold labels."""
    return [
        {
            "index": index,
            "text": post["text"],
            "predicted_labels": [name for name, chosen in zip(label_names, predicted, strict=True) if chosen],
            "scores": {name: round(float(score), 6) for name, score in zip(label_names, scores, strict=True)},
            "gold_labels": [label_names[class_id] for class_id in post["label"]] if "label" in post else None,
        }
        for index, (post, predicted, scores) in enumerate(
            zip(_text_and_labels(split), evaluation.predictions, evaluation.scores, strict=True)
        )
    ]


def regression_predictions(split: Any, evaluation: EvaluationOutput) -> list[dict[str, Any]]:
    """One row per post for ``predictions.jsonl``: its text, the predicted value and the gold value."""
    return [
        {
            "index": index,
            "text": post["text"],
            "predicted_value": round(float(predicted), 6),
            "gold_value": post.get("label"),
        }
        for index, (post, predicted) in enumerate(
            zip(_text_and_labels(split), evaluation.predictions, strict=True)
        )
    ]


def _bce_per_post(outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs.logits, batch["labels"], reduction="none").mean(dim=1)


# Per problem type, what evaluate_model computes: predictions, per-post losses and the scores of predictions.jsonl
# (as the model's loss and transformers' text-classification pipeline: softmax, sigmoid, the value itself).
EVALUATION_FUNCTIONS = {
    SINGLE_LABEL: (
        lambda outputs: outputs.logits.argmax(dim=-1),
        lambda outputs, batch: F.cross_entropy(outputs.logits, batch["labels"], reduction="none"),
        lambda outputs, batch: outputs.logits.softmax(dim=-1),
    ),
    MULTI_LABEL: (
        lambda outputs: (outputs.logits > 0).long(),
        _bce_per_post,
        lambda outputs, batch: outputs.logits.sigmoid(),
    ),
    REGRESSION: (
        lambda outputs: outputs.logits[:, 0],
        lambda outputs, batch: F.mse_loss(outputs.logits[:, 0], batch["labels"], reduction="none"),
        None,
    ),
}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train MuSE for MSA, keep the best model by validation F1, score it on test and write its predictions (or, with
    ``--model_name_or_path``, evaluate or fine-tune a trained one); returns ``all_results.json``."""
    # The command line (or a recipe and overrides), the Accelerator, the data (which settles --do_train / --do_eval /
    # --do_predict) and the output folder; unset arguments take the quick-start values on the bundled sample and the
    # paper's elsewhere (muse_training.arguments.resolve_defaults).
    run = start_run(TASK, argv)
    args, accelerator, raw_datasets = run.args, run.accelerator, run.raw_datasets
    labeled = [split for split in raw_datasets if "label" in raw_datasets[split].column_names]
    feature = raw_datasets[labeled[0]].features["label"] if labeled else None
    if feature is None:
        # New posts without labels: the trained model's labels and problem type are the run's.
        problem_type, label_names = problem_type_of(args.loaded_configs.model_config), None
    elif (problem_type := data_problem_type(feature)) == REGRESSION:
        label_names = [args.label_column_name or "label"]
    else:
        label_names = (feature if problem_type == SINGLE_LABEL else feature.feature).names
    task = task_for(problem_type)

    # Model: pretrained towers around newly initialised MuSE layers, or a trained MuSE (a new head for other classes
    # or another problem type).
    model = load_model(args, MuSEForSequenceClassification, label_names, TASK.head_modules, problem_type)
    label_names = model_label_names(model)
    if problem_type != REGRESSION:
        raw_datasets = align_labels(raw_datasets, "label", label_names)

    # Processor (text and images -> tensors), one report line per split, data loaders.
    processor = build_processor(args, model.config, label_names=None)
    report_splits(args, raw_datasets, processor, text_column="text")
    collator = MSACollator(processor, problem_type, num_labels=len(label_names))
    dataloaders = make_dataloaders(raw_datasets, COLUMNS, collator, args)

    # Optimizer (separate learning rate for the classifier), devices, schedule, and the state of a resumed run.
    model, optimizer, dataloaders = prepare_for_training(accelerator, model, dataloaders, TASK, args)

    predictions_of, losses_of, scores_of = EVALUATION_FUNCTIONS[problem_type]

    def metrics_of(evaluation: EvaluationOutput) -> dict[str, Any]:
        if problem_type == REGRESSION:
            return regression_metrics(evaluation)
        if problem_type == MULTI_LABEL:
            return multi_label_metrics(evaluation, label_names)
        return sentiment_metrics(evaluation, label_names)

    def prediction_rows(split: str, evaluation: EvaluationOutput) -> list[dict[str, Any]]:
        if problem_type == REGRESSION:
            return regression_predictions(raw_datasets[split], evaluation)
        if problem_type == MULTI_LABEL:
            return multi_label_predictions(raw_datasets[split], evaluation, label_names)
        return sentiment_predictions(raw_datasets[split], evaluation, label_names)

    def evaluate(split: str, with_predictions: bool) -> dict[str, Any] | None:
        evaluation = evaluate_model(
            accelerator,
            model,
            dataloaders[split],
            predictions_of=predictions_of,
            losses_of=losses_of,
            scores_of=scores_of if with_predictions else None,
        )
        if with_predictions and accelerator.is_main_process:
            write_predictions(args.output_dir, prediction_rows(split, evaluation))
        # New posts without labels are labelled, not scored.
        return metrics_of(evaluation) if evaluation.labels is not None else None

    # Train with validation after every epoch, keeping the best model; then score it on validation and test.
    outcome = train_evaluate_predict(
        accelerator, model, optimizer, dataloaders, evaluate, task, processor, run.checkpoint, args
    )
    return finish(accelerator, args, task, model, outcome, raw_datasets, run.start_time)

if __name__ == "__main__":
    main()
