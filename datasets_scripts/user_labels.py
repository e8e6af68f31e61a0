"""The labels of the user's data (`datasets_scripts.user_data`): the NER label list (BIO tags), a sentiment label
column's problem type and label list, ``ClassLabel`` features, and which split has no labels (new posts to tag).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import datasets

from modeling_muse.reporting import LISTED

from .errors import quoted
from .user_source import _ROW, UserDataError, _Source

_BIO_TAG = re.compile(r"^(O|[BI]-\S.*)$")
# transformers' sequence-classification problem types (`PreTrainedConfig.problem_type`), which sentiment data may have.
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
_PROBLEM_OF_KIND = {
    "class": "single_label_classification",
    "list": "multi_label_classification",
    "number": "regression",
}


def ner_label_list(tags: set[str]) -> list[str]:
    """``O``, then each entity type's ``B-`` and ``I-`` tag, types sorted (a type seen only as ``I-`` gets both)."""
    types = sorted({tag[2:] for tag in tags if tag != "O"})
    return ["O", *(f"{prefix}-{name}" for name in types for prefix in ("B", "I"))]


def _unlabeled_splits(raw: Mapping[str, Any], label_column: str) -> set[str]:
    """The test split when it has no labels (new posts, which the scripts tag without scoring): no label column, or
    one without a value (`datasets` gives the files of several splits the same columns, filling in nulls)."""
    test = raw.get("test")
    if test is None:
        return set()
    if label_column not in test.column_names or all(value is None for value in test[label_column]):
        return {"test"}
    return set()


def _class_label(feature: Any) -> datasets.ClassLabel | None:
    if isinstance(feature, datasets.ClassLabel):
        return feature
    inner = getattr(feature, "feature", None)
    return inner if isinstance(inner, datasets.ClassLabel) else None


def _split_class_labels(
    raw: datasets.DatasetDict, label_column: str, source: _Source
) -> tuple[datasets.ClassLabel | None, bool]:
    """The ``ClassLabel`` of a label column (the same names in every split; None for a column of plain values) and
    whether the column holds lists of it."""
    features = [dataset.features[label_column] for dataset in raw.values()]
    class_labels = [_class_label(feature) for feature in features]
    if not class_labels or not all(class_labels):
        return None, False
    names = list(class_labels[0].names)
    if any(list(label.names) != names for label in class_labels):
        raise UserDataError(
            f"{source.description}: the splits' {label_column!r} ClassLabels have different names; give every "
            f"split the same label list."
        )
    return class_labels[0], not isinstance(features[0], datasets.ClassLabel)


def _label_names(
    raw: datasets.DatasetDict, label_column: str, source: _Source, origin: Mapping[str, str]
) -> list[str]:
    """The NER label list: a ``ClassLabel``'s names, or built from the tags of every split."""
    class_label, _ = _split_class_labels(raw, label_column, source)
    if class_label is not None:
        names = list(class_label.names)
        bad = [name for name in names if not _BIO_TAG.match(name)]
        if bad:
            raise UserDataError(
                f"{source.description}: the {label_column!r} ClassLabel names {bad[:LISTED]} are not BIO tags (O, "
                f"B-<type>, I-<type>); MuSE's CRF tags words in the BIO scheme."
            )
        return names
    values: set[str] = set()
    for split, dataset in raw.items():
        for row, value in zip(dataset[_ROW], dataset[label_column], strict=True):
            where = f"{source.split_name(origin[split])} row {row}"
            if not isinstance(value, list):
                raise UserDataError(
                    f"{where}: {label_column!r} must be a list of tags, one per word, got "
                    f"{quoted(value)}."
                )
            for item in value:
                if not isinstance(item, str):
                    raise UserDataError(
                        f"{where}: the tags in {label_column!r} are {type(item).__name__}s; "
                        f"give tag strings (B-PER, I-PER, O, ...) or a ClassLabel feature that names the ids."
                    )
                if not _BIO_TAG.match(item):
                    raise UserDataError(
                        f"{where}: the tag {quoted(item)} is not a BIO tag (O, B-<type>, "
                        f"I-<type>); MuSE's CRF tags words in the BIO scheme."
                    )
                values.add(item)
    return ner_label_list(values)


def _is_class(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _label_kind(value: Any) -> str | None:
    """``"list"`` (labels of a multi-label post), ``"number"`` (a decimal regression target), ``"class"`` (a class
    name or integer class), or None for what no problem type reads."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, float):
        return "number"
    return "class" if _is_class(value) else None


def _looks_like_a_list(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]")


_KIND_HELP = {
    "single_label_classification": "one class per post: a class name (string) or an integer class",
    "multi_label_classification": "a list of class names (or integer classes) per post, empty for none, in JSON "
    "lines or Parquet (a CSV cannot hold lists)",
    "regression": "one finite number per post",
}


def _sentiment_labels(
    raw: datasets.DatasetDict,
    label_column: str,
    source: _Source,
    origin: Mapping[str, str],
    problem_type: str | None,
) -> tuple[str, list[str]]:
    """The problem type of a sentiment label column and its label list (for regression, the column's name).

    A ``ClassLabel`` column is single-label, a list of one multi-label; plain values tell the problem type by their
    kind (`_label_kind`) unless ``problem_type`` names it. A value no problem type reads, a mix of kinds, a missing
    or non-finite target, or values that contradict ``problem_type`` are errors naming the row.
    """
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise UserDataError(f"--problem_type {problem_type!r}: choose one of {', '.join(PROBLEM_TYPES)}.")
    class_label, is_list = _split_class_labels(raw, label_column, source)
    if class_label is not None:
        found = PROBLEM_TYPES[1] if is_list else PROBLEM_TYPES[0]
        if problem_type not in (None, found):
            raise UserDataError(
                f"{source.description}: {label_column!r} is a ClassLabel{' list' if is_list else ''} column, which is "
                f"{found}, not --problem_type {problem_type}."
            )
        return found, list(class_label.names)
    expected = _KIND_HELP[problem_type] if problem_type else "; ".join(
        f"{name}: {help_text}" for name, help_text in _KIND_HELP.items()
    )
    kinds: dict[str, str] = {}
    values: set[Any] = set()
    for split, dataset in raw.items():
        for row, value in zip(dataset[_ROW], dataset[label_column], strict=True):
            where = f"{source.split_name(origin[split])} row {row}"
            kind = _label_kind(value)
            if problem_type == "regression" and kind == "class" and isinstance(value, int):
                kind = "number"
            if value is None or (kind == "number" and not math.isfinite(value)):
                raise UserDataError(
                    f"{where}: {label_column!r} is {'empty' if value is None else quoted(value)}; every post needs "
                    f"a label ({expected})."
                )
            if kind is None or (problem_type is not None and _PROBLEM_OF_KIND[kind] != problem_type):
                stated = f" for --problem_type {problem_type}" if problem_type else ""
                raise UserDataError(f"{where}: {label_column!r} is {quoted(value)}, not a label{stated} ({expected}).")
            if kind == "class" and problem_type is None and _looks_like_a_list(value):
                raise UserDataError(
                    f"{where}: {label_column!r} is the text {quoted(value)}, a list written into a CSV cell? Several "
                    f"labels per post need JSON lines or Parquet (a CSV cannot hold lists); if it is one class name, "
                    f"pass --problem_type single_label_classification."
                )
            kinds.setdefault(kind, where)
            if len(kinds) > 1:
                first, second = (f"{name} ({_PROBLEM_OF_KIND[name]}) at {at}" for name, at in kinds.items())
                raise UserDataError(
                    f"{source.description}: {label_column!r} mixes kinds of labels: {first}, {second}; give every "
                    f"post the same kind."
                )
            if kind == "list":
                bad = [item for item in value if not _is_class(item)]
                if bad:
                    raise UserDataError(
                        f"{where}: {label_column!r} holds {quoted(bad[0])}; a multi-label post's labels are class "
                        f"names (strings) or integer classes."
                    )
                values.update(value)
            elif kind == "class":
                values.add(value)
    found = _PROBLEM_OF_KIND[next(iter(kinds))] if kinds else (problem_type or PROBLEM_TYPES[0])
    if found == "regression":
        return found, [label_column]
    if len({type(value) for value in values}) > 1:
        raise UserDataError(f"{source.description}: {label_column!r} mixes strings and integers; use one kind.")
    return found, [str(value) for value in sorted(values)]
