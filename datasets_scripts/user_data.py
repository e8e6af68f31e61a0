"""Your own multimodal data, in any form `datasets.load_dataset` reads, as the MuSE training scripts' splits.

:func:`load_user_dataset` takes a Hub dataset id or a local dataset folder (``data/train-00000-of-00001.parquet``,
``train.jsonl``, ...), or one file per split (CSV, JSON / JSON lines, Parquet, by extension), and returns a
``DatasetDict`` with the columns the paper's builders produce:

* NER: ``tokens`` (the words, a list of strings), ``ner_tags`` (a list of ``ClassLabel`` ids; BIO tags) and ``image``;
* sentiment: ``text`` (a string; a list of words is joined with spaces), ``label`` and ``image``; ``label`` follows
  the problem type (transformers' ``config.problem_type``): a ``ClassLabel`` for single-label classification, a list
  of ``ClassLabel`` ids for multi-label classification, a ``float64`` target for regression (e.g. sentiment
  intensity).

Columns are found by name (``tokens`` / ``ner_tags`` / ``image`` for NER, ``text`` / ``label`` / ``image`` for sentiment)
unless named explicitly. Labels may be ``ClassLabel`` ids or strings (integers, for sentiment, too); from strings the
label list is built over all splits: for NER ``O`` first, then each entity type's ``B-`` and ``I-`` tag, types sorted;
for sentiment the sorted values. A sentiment label column's values also tell its problem type, unless
``problem_type`` names it: a list of labels per post (JSON lines or Parquet) is multi-label classification, a decimal
number (a float column) regression, a class name or integer single-label classification; ``problem_type=
"regression"`` also reads integer targets (e.g. star ratings) as numbers.

An image may be a ``datasets.Image`` value (bytes or path), a path (a relative one resolves against ``image_dir``
when given, else against the data file's folder, or the dataset folder, and may not climb out of it with ``..``, nor
lead out of it through a symbolic link: a path inside that folder must resolve inside it), or
an ``http(s)://`` URL, fetched once here
with the pipelines' limits (``timeout`` for the whole download, ``max_image_bytes``, public addresses only unless
``allow_private_urls``) and stored as bytes. Each image is
decoded completely once; missing or unreadable ones follow ``missing_images`` as in the paper's builders
(:mod:`datasets_scripts.images`): ``"error"`` lists them, ``"placeholder"`` stores the grey placeholder, counted.
A Hub dataset's image paths are not read (they would name files of this machine that the dataset's author chose).
A local dataset folder holding a symbolic link that leads outside it is refused, naming the link.

The work is shared out: the data's source, loading and columns are `datasets_scripts.user_source`, its labels
`datasets_scripts.user_labels`, the conversion of its rows `datasets_scripts.user_rows`, and ``streaming=True``
`datasets_scripts.user_streaming`; this module checks the images and puts the steps together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Literal

import datasets

from modeling_muse.image_input import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_TIMEOUT
from modeling_muse.reporting import first_then_count

from .images import MissingImagesError, check_missing_images_policy
from .user_labels import (
    PROBLEM_TYPES,
    _label_names,
    _sentiment_labels,
    _unlabeled_splits,
    ner_label_list,
)
from .user_rows import _features, _split_converter
from .user_source import (
    _ROW,
    DATA_FILE_LOADERS,
    DEFAULT_COLUMNS,
    UserDataError,
    _columns,
    _load_raw,
    _rename_splits,
    _source,
)
from .user_streaming import _load_streamed

__all__ = [
    "DATA_FILE_LOADERS",
    "DEFAULT_COLUMNS",
    "PROBLEM_TYPES",
    "UserDataError",
    "load_user_dataset",
    "ner_label_list",
]

logger = logging.getLogger(__name__)


def _check_images(canonical: datasets.DatasetDict, policy: str, description: str) -> None:
    problems = {
        split: [problem for problem in dataset["image_problem"] if problem is not None]
        for split, dataset in canonical.items()
    }
    listed = [problem for split_problems in problems.values() for problem in split_problems]
    if listed and policy == "error":
        total = sum(len(dataset) for dataset in canonical.values())
        raise MissingImagesError(
            f"{description}: {len(listed)} of {total} images are missing or unreadable:\n  "
            + first_then_count(listed, separator="\n  ", more="... and {count} more")
            + "\nPass --missing_images placeholder (missing_images='placeholder') to replace them by the grey "
            "placeholder image (counted and logged, nothing is dropped)."
        )
    for split, split_problems in problems.items():
        if split_problems:
            logger.warning(
                "%s: replaced %d of %d %s images by the grey placeholder (missing_images='placeholder'); the first: %s",
                description,
                len(split_problems),
                len(canonical[split]),
                split,
                split_problems[0],
            )


def load_user_dataset(
    task: Literal["mner", "msa"],
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    data_files: Mapping[str, str | os.PathLike] | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    image_dir: str | os.PathLike | None = None,
    missing_images: str = "error",
    validation_split_percentage: int | None = None,
    seed: int = 42,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    allow_private_urls: bool = False,
    problem_type: str | None = None,
    streaming: bool = False,
    label_names: Sequence[str] | None = None,
    num_proc: int | None = None,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Load a dataset of the user's as the training scripts' splits (see the module docstring).

    Args:
        task: ``"mner"`` or ``"msa"``.
        dataset_name: a Hub dataset id or a local dataset folder (what `datasets.load_dataset` reads); or
        data_files: split (``train`` / ``validation`` / ``test``) -> a CSV, JSON (lines) or Parquet file.
        dataset_config_name: the dataset's configuration, if it has several.
        text_column, label_column, image_column: the columns; ``None`` looks for the task's default names. The test
            split may lack the label column: its posts are new ones to tag (the split has no label column then).
        image_dir: where relative image paths resolve (default: the data file's folder, or the dataset folder).
        missing_images: ``"error"`` or ``"placeholder"``.
        validation_split_percentage: when the data has no validation split, this share of train (seeded by
            ``seed``) becomes it.
        cache_dir: the `datasets` cache; the converted splits (images fetched and checked) are cached there too.
        timeout, max_image_bytes: limits of each image URL's download.
        allow_private_urls: also fetch image URLs of private, loopback and link-local addresses (pictures served on
            your own network); by default only public addresses are fetched (see `modeling_muse.url_fetch`).
        problem_type: sentiment only: ``"single_label_classification"``, ``"multi_label_classification"`` or
            ``"regression"``; ``None`` tells it from the label column (see the module docstring).
        streaming: read the data as it is iterated (`datasets.load_dataset(..., streaming=True)`), for collections
            larger than memory or disk: the conversion runs lazily (``IterableDataset.map``), so images are read
            and checked where the splits are iterated (a DataLoader's workers). The label names must then be known
            without reading the data: a ``ClassLabel`` feature (Parquet written by `datasets`) or ``label_names``; a
            missing image stops the iteration at its post under ``"error"``; a validation split is not cut from train.
        label_names: streaming: the label list of string labels (NER: every BIO tag; sentiment: every class).
        num_proc: processes of the conversion's ``Dataset.map`` (not streaming).

    Returns:
        A ``DatasetDict`` (``IterableDatasetDict`` when streaming) with the splits the data has (``validation`` cut
        from train when asked).

    Raises:
        UserDataError: a missing column, split or file, a label or words that cannot be read, naming split and row.
        MissingImagesError: under ``"error"`` when images are missing or unreadable, listing them.
    """
    check_missing_images_policy(missing_images)
    if problem_type is not None and task != "msa":
        raise UserDataError(
            f"--problem_type {problem_type}: NER tags words in the BIO scheme and has no problem type; drop it."
        )
    if (dataset_name is None) == (not data_files):
        raise UserDataError("Give either dataset_name (a Hub id or a folder) or data_files, not both or neither.")
    source = _source(dataset_name, dataset_config_name, data_files, image_dir)
    if streaming:
        return _load_streamed(
            task, source, (text_column, label_column, image_column), missing_images, validation_split_percentage,
            cache_dir, timeout, max_image_bytes, allow_private_urls, problem_type, label_names,
        )  # fmt: skip
    if label_names is not None:
        raise UserDataError(
            "--label_names is for --streaming only: without it the label list is read from the data (or its "
            "ClassLabel feature); drop --label_names."
        )
    raw = _rename_splits(_load_raw(source, cache_dir))
    raw = datasets.DatasetDict({split: data.add_column(_ROW, list(range(len(data)))) for split, data in raw.items()})
    origin = {split: split for split in raw}
    if "validation" not in raw and "train" in raw and validation_split_percentage:
        if not 0 < validation_split_percentage < 100:
            raise UserDataError(
                f"--validation_split_percentage must lie between 0 and 100, got {validation_split_percentage}."
            )
        parts = raw["train"].train_test_split(test_size=validation_split_percentage / 100, seed=seed)
        raw = datasets.DatasetDict({**raw, "train": parts["train"], "validation": parts["test"]})
        origin["validation"] = "train"
        logger.warning(
            "%s has no validation split: %d%% of train (%d posts, seed %d) is the validation split "
            "(--validation_split_percentage).",
            source.description,
            validation_split_percentage,
            len(parts["test"]),
            seed,
        )
    columns = _columns(task, raw, (text_column, label_column, image_column), source)
    unlabeled = _unlabeled_splits(raw, columns[1])
    labeled_raw = datasets.DatasetDict({split: data for split, data in raw.items() if split not in unlabeled})
    if task == "mner":
        label_names = _label_names(labeled_raw, columns[1], source, origin)
    else:
        problem_type, label_names = _sentiment_labels(labeled_raw, columns[1], source, origin, problem_type)
    canonical = {}
    for split, dataset in raw.items():
        if isinstance(dataset.features[columns[2]], datasets.Image):
            dataset = dataset.cast_column(columns[2], datasets.Image(decode=False))
        labeled = split not in unlabeled
        convert = _split_converter(
            task, source, origin[split], dataset.features, columns, label_names, problem_type, labeled, cache_dir,
            timeout, max_image_bytes, allow_private_urls,
        )  # fmt: skip
        canonical[split] = dataset.map(
            convert,
            batched=True,
            remove_columns=dataset.column_names,
            features=_features(task, label_names, problem_type, labeled),
            num_proc=num_proc,
            desc=f"reading {split} images",
        )
    result = datasets.DatasetDict(canonical)
    _check_images(result, missing_images, source.description)
    return result.remove_columns("image_problem")
