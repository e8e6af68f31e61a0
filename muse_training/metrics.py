"""Scores of MuSE's predictions: entity-level precision/recall/F1 for NER (seqeval), accuracy and support-weighted F1
for sentiment (micro/macro F1 and exact match for several labels per post; MSE/MAE and Pearson's r for a number).

The functions on `EvaluationOutput` are the training scripts' (`run_mner.py`, `run_msa.py`); `NERMetrics`,
`SentimentMetrics` and `CRFTagDecoding` put the same scores behind `transformers.Trainer`'s ``compute_metrics`` and
``preprocess_logits_for_metrics`` (docs/trainer.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from transformers import EvalPrediction

from modeling_muse.heads import WordPositions

from .collators import MULTI_LABEL, PROBLEM_TYPES, REGRESSION, SINGLE_LABEL
from .evaluation import EvaluationOutput

__all__ = [
    "CRFTagDecoding",
    "NERMetrics",
    "SentimentMetrics",
    "entity_level_metrics",
    "multi_label_metrics",
    "ner_metrics",
    "regression_metrics",
    "sentiment_metrics",
]


def _word_tags(evaluation: EvaluationOutput, label_names: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Each post's gold and predicted tag names at its words: the positions whose label is not -100 (each word's
    first sub-token), where the CRF's tag sits too."""
    gold_tags, predicted_tags = [], []
    for predicted, gold in zip(evaluation.predictions, evaluation.labels, strict=True):
        words = gold != -100
        if (predicted[words] < 0).any():
            raise ValueError(
                "The model predicted no tag for some word: predicted_tag_ids must be set at every word start."
            )
        gold_tags.append([label_names[tag] for tag in gold[words]])
        predicted_tags.append([label_names[tag] for tag in predicted[words]])
    return gold_tags, predicted_tags


def ner_metrics(evaluation: EvaluationOutput, label_names: Sequence[str]) -> dict[str, Any]:
    """Entity-level micro precision/recall/F1, per-type F1 (``<TYPE>_f1``), the loss, and the per-type report."""
    gold_tags, predicted_tags = _word_tags(evaluation, label_names)
    metrics: dict[str, Any] = {
        "precision": precision_score(gold_tags, predicted_tags, zero_division=0),
        "recall": recall_score(gold_tags, predicted_tags, zero_division=0),
        "f1": f1_score(gold_tags, predicted_tags, zero_division=0),
        "loss": evaluation.loss,
    }
    per_type = classification_report(gold_tags, predicted_tags, output_dict=True, zero_division=0)
    for entity_type, scores in per_type.items():
        if not entity_type.endswith(" avg"):
            metrics[f"{entity_type}_f1"] = scores["f1-score"]
    metrics["report"] = classification_report(gold_tags, predicted_tags, digits=4, zero_division=0)
    return metrics


def entity_level_metrics(evaluation: EvaluationOutput, label_names: Sequence[str]) -> dict[str, float | int]:
    """Each entity type's seqeval precision, recall and number of gold entities (``<TYPE>_precision``,
    ``<TYPE>_recall``, ``<TYPE>_number``), as `run_ner_no_trainer.py`'s ``--return_entity_level_metrics`` adds them
    to the results (`ner_metrics` always gives ``<TYPE>_f1``)."""
    per_type = classification_report(*_word_tags(evaluation, label_names), output_dict=True, zero_division=0)
    metrics: dict[str, float | int] = {}
    for entity_type, scores in per_type.items():
        if not entity_type.endswith(" avg"):
            metrics[f"{entity_type}_precision"] = scores["precision"]
            metrics[f"{entity_type}_recall"] = scores["recall"]
            metrics[f"{entity_type}_number"] = int(scores["support"])
    return metrics


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


def _trainer_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a script's metrics: `Trainer` adds its own ``loss`` and logs numbers only."""
    return {name: float(value) for name, value in metrics.items() if name not in ("loss", "report")}


def _logits_alone(evaluation: EvalPrediction, metrics_name: str) -> Any:
    """``evaluation.predictions``, refused when they are a tuple (outputs besides the logits)."""
    if isinstance(evaluation.predictions, tuple):
        raise TypeError(
            f"{metrics_name} got a tuple of predictions: the model returned more than its logits (MuSEConfig's "
            "keys_to_ignore_at_inference leaves the logits alone, but output_hidden_states / output_attentions "
            "add those); evaluate with them off."
        )
    return evaluation.predictions


@dataclass
class NERMetrics:
    """``compute_metrics`` for `transformers.Trainer` on `MuSEForTokenClassification`: entity-level micro
    precision/recall/F1 and per-type F1 (``<TYPE>_f1``), as `ner_metrics` (seqeval, CoNLL-style).

    ``EvalPrediction.predictions`` may be the emissions (`logits`, ``(posts, n, num_labels)``), read by argmax as
    transformers' NER example reads them, or tag ids per position (``(posts, n)``), such as `CRFTagDecoding` makes
    them: the CRF's Viterbi path, the model's own decision (what the pipeline and the scripts score). Words are the
    positions whose label is not -100.
    """

    label_names: Sequence[str]

    def __call__(self, evaluation: EvalPrediction) -> dict[str, float]:
        predictions = _logits_alone(evaluation, "NERMetrics")
        if predictions.ndim == 3:
            predictions = predictions.argmax(axis=-1)
        return _trainer_metrics(
            ner_metrics(EvaluationOutput(predictions, evaluation.label_ids, float("nan")), self.label_names)
        )


@dataclass
class SentimentMetrics:
    """``compute_metrics`` for `transformers.Trainer` on `MuSEForSequenceClassification`, as `run_msa.py` scores:
    for ``single_label_classification`` accuracy, support-weighted F1 (``f1``) and per-class F1 (`sentiment_metrics`);
    for ``multi_label_classification`` micro/macro F1 and exact match (`multi_label_metrics`, a label is predicted
    where its logit is above 0, a sigmoid score above 0.5); for ``regression`` ``mse``, ``mae`` and ``pearson``
    (`regression_metrics`). ``EvalPrediction.predictions`` are the logits, ``(posts, num_labels)``.
    """

    label_names: Sequence[str]
    problem_type: str = SINGLE_LABEL

    def __post_init__(self) -> None:
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"SentimentMetrics: problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}.")

    def __call__(self, evaluation: EvalPrediction) -> dict[str, float]:
        logits, labels = np.asarray(_logits_alone(evaluation, "SentimentMetrics")), np.asarray(evaluation.label_ids)
        if self.problem_type == REGRESSION:
            values = logits[:, 0] if logits.ndim == 2 else logits
            return _trainer_metrics(regression_metrics(EvaluationOutput(values, labels.reshape(len(values)), 0.0)))
        if self.problem_type == MULTI_LABEL:
            chosen = (logits > 0).astype(np.int64)
            return _trainer_metrics(multi_label_metrics(EvaluationOutput(chosen, labels, 0.0), self.label_names))
        return _trainer_metrics(
            sentiment_metrics(EvaluationOutput(logits.argmax(axis=-1), labels, 0.0), self.label_names)
        )


class CRFTagDecoding:
    """``preprocess_logits_for_metrics`` for `transformers.Trainer` on `MuSEForTokenClassification`: each batch's
    emissions -> the CRF's Viterbi tag ids at word starts (-100 elsewhere), the tags the model predicts.

    An argmax over the emissions ignores the CRF's transition scores (an ``I-LOC`` after ``B-PER`` is as likely as
    after ``B-LOC``), so its scores are those of a different tagger than the one the pipeline serves; with this,
    `NERMetrics` scores the served decision, and the evaluation keeps ``(posts, n)`` ids instead of the emissions.
    The word starts are the positions whose label is not -100 (`MuSEProcessor(word_labels=...)` puts the tags there),
    so the batches need labels.

    Args:
        model: the `MuSEForTokenClassification` the Trainer trains (its CRF is read at every call, so it decodes with
            the current transition scores).
    """

    def __init__(self, model: torch.nn.Module):
        tagger = getattr(model, "tagger", None)
        if tagger is None and hasattr(model, "get_base_model"):
            tagger = getattr(model.get_base_model(), "tagger", None)
        if tagger is None:
            raise TypeError(
                f"CRFTagDecoding needs a MuSEForTokenClassification (or a PEFT model around one), got "
                f"{type(model).__name__}, which has no CRF tagger."
            )
        self.tagger = tagger

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError(
                "CRFTagDecoding finds the words by the labels (-100 off word starts), and this batch has none. To tag "
                "unlabelled posts use the model's predicted_tag_ids (model(**batch).predicted_tag_ids) or "
                'pipeline("multimodal-ner"); Trainer.predict returns the emissions without it.'
            )
        if isinstance(logits, tuple):
            logits = logits[0]
        return self.tagger.decode(logits, WordPositions(labels != -100))
