"""`datasets_scripts.user_data.load_user_dataset` with ``streaming=True``: the user's data read as it is iterated,
its columns read from the features or the first row, its label list from ``ClassLabel`` features or ``label_names``,
and the conversion (`_Canonical`) run lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from modeling_muse.reporting import LISTED

from .user_labels import _BIO_TAG, PROBLEM_TYPES, _class_label
from .user_rows import _features, _split_converter
from .user_source import UserDataError, _columns, _load_raw, _rename_splits, _Source


def _streamed_column_names(dataset: datasets.IterableDataset) -> list[str]:
    """A streamed split's columns: from its features, or (JSON lines, CSV: features unknown until read) its first
    row."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset.take(1)), None)
    return list(first) if first is not None else []


def _streamed_labels(
    task: str,
    raw: datasets.IterableDatasetDict,
    label_column: str,
    unlabeled: set[str],
    source: _Source,
    problem_type: str | None,
    label_names: Sequence[str] | None,
) -> tuple[str | None, list[str]]:
    """The problem type (sentiment) and label list of streamed data, from the ``ClassLabel`` features or
    ``label_names``, since the data is not read before training."""
    labeled = [dataset for split, dataset in raw.items() if split not in unlabeled]
    features = [dataset.features[label_column] if dataset.features else None for dataset in labeled]
    class_labels = [_class_label(feature) for feature in features]
    if labeled and all(class_labels):
        names = list(class_labels[0].names)
        if any(list(label.names) != names for label in class_labels):
            raise UserDataError(
                f"{source.description}: the splits' {label_column!r} ClassLabels have different names; give every "
                f"split the same label list."
            )
        if label_names is not None and list(label_names) != names:
            raise UserDataError(
                f"--label_names {list(label_names)}: the data's {label_column!r} ClassLabel names {names}; drop "
                f"--label_names (the ClassLabel's are used)."
            )
        if task == "msa":
            found = PROBLEM_TYPES[0] if isinstance(features[0], datasets.ClassLabel) else PROBLEM_TYPES[1]
            if problem_type not in (None, found):
                raise UserDataError(
                    f"{source.description}: {label_column!r} is a ClassLabel column of {found}, not --problem_type "
                    f"{problem_type}."
                )
            problem_type = found
        return problem_type, names
    if task == "msa" and (problem_type == "regression" or (
        features and isinstance(features[0], datasets.Value) and features[0].dtype.startswith("float")
    )):
        return "regression", [label_column]
    if label_names is None or not labeled:
        if not labeled:
            return problem_type, []
        raise UserDataError(
            f"{source.description}: --streaming reads the data while training, so the label names must be known "
            f"before: the {label_column!r} column has no ClassLabel feature. Give the label list with --label_names "
            f"(e.g. --label_names O B-PER I-PER ...), or store the labels as a ClassLabel (datasets.Dataset.to_parquet "
            f"with a ClassLabel feature)."
        )
    if task == "mner":
        bad = [name for name in label_names if not _BIO_TAG.match(name)]
        if bad:
            raise UserDataError(f"--label_names {bad[:LISTED]} are not BIO tags (O, B-<type>, I-<type>).")
    return problem_type or (PROBLEM_TYPES[0] if task == "msa" else None), list(label_names)


def _load_streamed(
    task: str,
    source: _Source,
    given_columns: Sequence[str | None],
    missing_images: str,
    validation_split_percentage: int | None,
    cache_dir: str | os.PathLike | None,
    timeout: float,
    max_image_bytes: int,
    allow_private_urls: bool,
    problem_type: str | None,
    label_names: Sequence[str] | None,
) -> datasets.IterableDatasetDict:
    """`load_user_dataset` with ``streaming=True``: the same columns, converted lazily."""
    raw = _rename_splits(_load_raw(source, cache_dir, streaming=True))
    if "validation" not in raw and "train" in raw and validation_split_percentage:
        raise UserDataError(
            f"{source.description}: --streaming cannot cut a validation split out of train (the data is not held); "
            f"give one: --validation_file, or a validation split in the dataset folder."
        )
    names = {split: _streamed_column_names(dataset) for split, dataset in raw.items()}
    columns = _columns(task, {split: _ColumnsOnly(found) for split, found in names.items()}, given_columns, source)
    unlabeled = set()
    if "test" in raw and (
        columns[1] not in names["test"] or next(iter(raw["test"].take(1)), {}).get(columns[1]) is None
    ):
        unlabeled = {"test"}
    problem_type, label_names = _streamed_labels(task, raw, columns[1], unlabeled, source, problem_type, label_names)
    streamed = {}
    for split, dataset in raw.items():
        if dataset.features is not None and isinstance(dataset.features.get(columns[2]), datasets.Image):
            dataset = dataset.cast_column(columns[2], datasets.Image(decode=False))
        labeled = split not in unlabeled
        convert = _split_converter(
            task, source, split, dataset.features, columns, label_names, problem_type, labeled, cache_dir, timeout,
            max_image_bytes, allow_private_urls, stop_at_missing_image=missing_images == "error",
        )  # fmt: skip
        streamed[split] = dataset.map(
            convert,
            batched=True,
            remove_columns=names[split],
            features=_features(task, label_names, problem_type, labeled),
        ).remove_columns(["image_problem"])
    return datasets.IterableDatasetDict(streamed)


@dataclass
class _ColumnsOnly:
    """What `_columns` reads of a split: its column names (a streamed split's, read once: `_streamed_column_names`)."""

    column_names: list[str]
