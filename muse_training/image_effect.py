"""What the picture adds: every evaluation of `run_mner.py` / `run_msa.py` scores the same posts twice, with their
pictures and with the picture withheld (each replaced by the grey placeholder picture as the processor prepares it,
`muse_training.evaluation.evaluate_with_and_without_pictures`), and reports both and the difference.

For each score ``<name>`` of an evaluation (``f1``, ``precision``, ``accuracy``, ``loss``, the per-type or per-class
``<TYPE>_f1``, ...) it adds ``<name>_without_image`` and ``image_effect_<name>`` = ``<name>`` -
``<name>_without_image``: positive where the picture raised the score; for an error or a loss (``loss``, ``mse``,
``mae``) a negative effect means the picture helped. In ``all_results.json`` they carry the split's prefix:
``eval_f1_without_image``, ``test_image_effect_PER_f1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "EFFECT_PREFIX",
    "WITHOUT_IMAGE_SUFFIX",
    "effect_summary",
    "effect_table_rows",
    "with_image_effect",
]

WITHOUT_IMAGE_SUFFIX = "_without_image"
EFFECT_PREFIX = "image_effect_"


def with_image_effect(metrics: dict[str, Any], metrics_without_image: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` followed by each numeric score's value without the picture and the picture's effect on it; the
    reports (text) stay those of the posts with their pictures.

    An entity type or class that only one of the two evaluations names (seqeval reports the types found in the gold
    tags or the predictions: one the model predicts wrongly only without the picture, say) has F1 0 in the other,
    where it is neither found nor predicted, and gets ``<TYPE>_f1`` 0 there. A score left out of either (Pearson's r
    where the predictions are constant) has no effect.
    """
    combined = dict(metrics)
    names = [*metrics, *(name for name in metrics_without_image if name not in metrics)]
    effects = {}
    for name in names:
        value, blind = metrics.get(name), metrics_without_image.get(name)
        if isinstance(value, str) or isinstance(blind, str):
            continue
        if name.endswith("_f1"):
            value, blind = value or 0.0, blind or 0.0
            combined.setdefault(name, value)
        if value is None or blind is None:
            continue
        effects[f"{name}{WITHOUT_IMAGE_SUFFIX}"] = blind
        effects[f"{EFFECT_PREFIX}{name}"] = value - blind
    return {**combined, **effects}


def _effect_names(results: dict[str, Any], prefix: str, metric_names: Sequence[str]) -> list[str]:
    """The headline scores, then the per-type or per-class F1 (``<name>_f1``), whose effect the results hold."""
    start = f"{prefix}_{EFFECT_PREFIX}"
    per_type = [
        key[len(start):]
        for key in results
        if key.startswith(start) and key.endswith("_f1") and key[len(start):] not in metric_names
        and key[len(start):] not in ("micro_f1", "macro_f1")
    ]
    return [name for name in metric_names if f"{start}{name}" in results] + per_type


def effect_table_rows(
    results: dict[str, Any], prefix: str, metric_names: Sequence[str]
) -> list[tuple[str, float, float, float]]:
    """(score, with the picture, without, effect) for the headline scores and each type's or class's F1 of the split
    ``prefix`` (``eval`` or ``test``) of ``all_results.json``; empty when the results have no such split."""
    return [
        (
            name,
            results[f"{prefix}_{name}"],
            results[f"{prefix}_{name}{WITHOUT_IMAGE_SUFFIX}"],
            results[f"{prefix}_{EFFECT_PREFIX}{name}"],
        )
        for name in _effect_names(results, prefix, metric_names)
    ]


def effect_summary(rows: Sequence[tuple[str, float, float, float]]) -> str:
    """One log line: each score with the picture, without it, and the difference."""

    def number(value: float) -> str:
        return "nan" if math.isnan(value) else f"{value:.4f}"

    return " | ".join(
        f"{name} {number(with_image)} with, {number(without)} without ({'+' if effect >= 0 else ''}{number(effect)})"
        for name, with_image, without, effect in rows
    )
