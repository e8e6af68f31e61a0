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
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets

from modeling_muse.image_input import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_TIMEOUT,
    UnreadableImageError,
    decode_image,
    download_image_bytes,
)
from modeling_muse.url_fetch import is_public_address, is_usable_address
from modeling_muse.reporting import LISTED, first_then_count

from .errors import leaves_folder, quoted
from .images import MissingImagesError, check_image_file, check_missing_images_policy, placeholder_image_bytes

__all__ = [
    "DATA_FILE_LOADERS",
    "DEFAULT_COLUMNS",
    "PROBLEM_TYPES",
    "UserDataError",
    "load_user_dataset",
    "ner_label_list",
]

logger = logging.getLogger(__name__)

# File extension -> the `datasets` loader that reads it.
DATA_FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Task -> (text, label, image) column names looked for when none is given.
DEFAULT_COLUMNS = {"mner": ("tokens", "ner_tags", "image"), "msa": ("text", "label", "image")}
_COLUMN_ARGUMENTS = ("--text_column_name", "--label_column_name", "--image_column_name")
# Split names that mean validation, as `datasets` reads them from file names.
_VALIDATION_NAMES = ("validation", "valid", "dev", "val")
_BIO_TAG = re.compile(r"^(O|[BI]-\S.*)$")
_URL = re.compile(r"^https?://", re.IGNORECASE)
# Each post's row in the split it was read from, kept through a validation split cut from train, for messages.
_ROW = "__muse_source_row__"
# transformers' sequence-classification problem types (`PreTrainedConfig.problem_type`), which sentiment data may have.
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
_PROBLEM_OF_KIND = {
    "class": "single_label_classification",
    "list": "multi_label_classification",
    "number": "regression",
}


class UserDataError(ValueError):
    """A dataset that cannot be trained on as given; the message names the split, row or column and the fix."""


def ner_label_list(tags: set[str]) -> list[str]:
    """``O``, then each entity type's ``B-`` and ``I-`` tag, types sorted (a type seen only as ``I-`` gets both)."""
    types = sorted({tag[2:] for tag in tags if tag != "O"})
    return ["O", *(f"{prefix}-{name}" for name in types for prefix in ("B", "I"))]


@dataclass
class _Source:
    """Where the data came from: ``datasets.load_dataset``'s arguments and where relative image paths resolve."""

    description: str
    load_args: tuple[Any, ...]
    load_kwargs: dict[str, Any]
    base_folders: dict[str, Path | None]
    from_hub: bool
    split_names: dict[str, str] | None = None

    def split_name(self, split: str) -> str:
        """How messages name a split: its file, or the dataset and the split."""
        if self.split_names and split in self.split_names:
            return self.split_names[split]
        return f"{self.description} ({split} split)"


def _source(
    dataset_name: str | None,
    dataset_config_name: str | None,
    data_files: Mapping[str, str | os.PathLike] | None,
    image_dir: str | os.PathLike | None,
) -> _Source:
    override = Path(image_dir).resolve() if image_dir is not None else None
    if data_files:
        files = {split: Path(path) for split, path in data_files.items()}
        loaders = {}
        for split, path in files.items():
            loader = DATA_FILE_LOADERS.get(path.suffix.lower())
            if loader is None:
                raise UserDataError(
                    f"--{split}_file {path}: the extension {path.suffix or '(none)'!r} is not one of "
                    f"{', '.join(DATA_FILE_LOADERS)}; save the data as CSV, JSON lines or Parquet."
                )
            if not path.is_file():
                raise UserDataError(f"--{split}_file {path}: no such file.")
            loaders[split] = loader
        if len(set(loaders.values())) > 1:
            raise UserDataError(
                f"The data files are of different kinds ({', '.join(f'{s}: {p.name}' for s, p in files.items())}); "
                f"give every split in the same format."
            )
        return _Source(
            description=", ".join(f"{split}: {path.name}" for split, path in files.items()),
            load_args=(next(iter(loaders.values())),),
            load_kwargs={"data_files": {split: str(path) for split, path in files.items()}},
            base_folders={split: override or path.resolve().parent for split, path in files.items()},
            from_hub=False,
            split_names={split: str(path) for split, path in files.items()},
        )
    folder = Path(dataset_name)
    if folder.is_dir():
        _check_no_links_out(folder)
        base = override or folder.resolve()
        return _Source(str(dataset_name), (str(folder),), {"name": dataset_config_name}, {"*": base}, False)
    return _Source(str(dataset_name), (str(dataset_name),), {"name": dataset_config_name}, {"*": override}, True)


def _check_no_links_out(folder: Path) -> None:
    """Refuse a dataset folder with a symbolic link (to a file or a folder) that leads outside it: `datasets` would
    read a data file, and the conversion an image, from wherever it leads."""
    for parent, folders, files in os.walk(folder):
        for name in (*folders, *files):
            path = Path(parent, name)
            if path.is_symlink() and leaves_folder(path, folder):
                raise UserDataError(
                    f"{path} is a symbolic link that leads outside the dataset folder {folder}: a dataset's files are "
                    f"read from inside its folder only. Put the file itself there, or name data files elsewhere with "
                    f"--train_file etc."
                )


def _load_raw(
    source: _Source, cache_dir: str | os.PathLike | None, streaming: bool = False
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    kwargs = {key: value for key, value in source.load_kwargs.items() if value is not None}
    try:
        loaded = datasets.load_dataset(*source.load_args, cache_dir=cache_dir, streaming=streaming, **kwargs)
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        hint = (
            " As a Hub dataset id it needs the Hugging Face Hub (or a copy in the datasets cache); a local dataset "
            "is a folder."
            if source.from_hub
            else ""
        )
        raise UserDataError(f"Could not load {source.description}: {error}{hint}") from error
    if isinstance(loaded, datasets.IterableDataset):
        loaded = datasets.IterableDatasetDict({"train": loaded})
    elif not isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _rename_splits(raw: datasets.DatasetDict | datasets.IterableDatasetDict) -> datasets.DatasetDict:
    splits = dict(raw)
    if "validation" not in splits:
        for name in _VALIDATION_NAMES[1:]:
            if name in splits:
                splits["validation"] = splits.pop(name)
                break
    unused = [name for name in splits if name not in ("train", "validation", "test")]
    if unused:
        raise UserDataError(
            f"The data has splits {sorted(splits)}; MuSE trains on 'train', selects the model on 'validation' "
            f"(also read from 'valid' or 'dev') and scores it on 'test'. Rename or remove {unused}."
        )
    return type(raw)(splits)


def _columns(task: str, raw: datasets.DatasetDict, given: Sequence[str | None], source: _Source) -> tuple[str, str, str]:
    """The (text, label, image) columns; the label column may be absent from the test split only (new posts to tag,
    `_unlabeled_splits`)."""
    chosen = []
    for name, default, argument in zip(given, DEFAULT_COLUMNS[task], _COLUMN_ARGUMENTS, strict=True):
        column = name or default
        for split, dataset in raw.items():
            if argument == "--label_column_name" and split == "test":
                continue
            if column not in dataset.column_names:
                why = f"{argument} {column!r} is not" if name else f"no {argument} was given and {column!r} is not"
                raise UserDataError(
                    f"{source.split_name(split)}: {why} one of its columns "
                    f"{[c for c in dataset.column_names if c != _ROW]}; name the column with {argument} <column>."
                )
        chosen.append(column)
    return tuple(chosen)


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


@dataclass
class _Canonical:
    """Turns one split's rows into the scripts' columns; an object (not a closure) so that `datasets` can hash it
    and cache the result, images fetched and checked included."""

    task: str
    split_name: str
    columns: tuple[str, str, str]
    label_names: list[str]
    label_is_class: bool
    base_folder: str | None
    from_hub: bool
    trusted_folders: tuple[str, ...]
    timeout: float
    max_image_bytes: int
    allow_private_urls: bool = False
    # Sentiment only: the label column's problem type (`_sentiment_labels`).
    problem_type: str | None = None
    # A test split without labels (`_unlabeled_splits`): its posts are read without them.
    labeled: bool = True
    # Streaming: a missing or unreadable image stops the run at its row (under "error"), as nothing is listed first.
    stop_at_missing_image: bool = False

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        text_column, label_column, image_column = self.columns
        rows = batch[_ROW] if _ROW in batch else [None] * len(batch[text_column])
        texts, labels, images, problems = [], [], [], []
        for position, (row, text, image) in enumerate(zip(rows, batch[text_column], batch[image_column], strict=True)):
            label = batch[label_column][position] if label_column in batch else None
            if not self.labeled and label is not None:
                # A streamed test split is taken as unlabeled by its first post (`_load_streamed`).
                raise UserDataError(
                    f"{self._where(row)}: {label_column!r} is {quoted(label)}, but the split's first post has no "
                    f"label, so it is read as new posts to tag; give every post its label, or none."
                )
            if self.task == "mner":
                words = self._words(row, text)
                if self.labeled:
                    labels.append(self._tags(row, words, label))
                texts.append(words)
            else:
                texts.append(self._text(row, text))
                if self.labeled:
                    labels.append(self._sentiment_label(label))
            value, problem = self._image(image)
            if problem is not None and self.stop_at_missing_image:
                raise MissingImagesError(
                    f"{self._where(row)}: the image is {problem}. Pass --missing_images placeholder "
                    f"(missing_images='placeholder') to replace such images by the grey placeholder."
                )
            images.append(value)
            problems.append(problem)
        names = ("tokens", "ner_tags") if self.task == "mner" else ("text", "label")
        problems = [None if problem is None else f"{self.split_name} row {row}: {problem}"
                    for row, problem in zip(rows, problems, strict=True)]
        labels_column = {names[1]: labels} if self.labeled else {}
        return {names[0]: texts, **labels_column, "image": images, "image_problem": problems}

    def _where(self, row: int | None) -> str:
        # A streamed post has no row number that holds across the loader's workers and processes.
        return f"{self.split_name} row {row}" if row is not None else f"{self.split_name} (a streamed post)"

    def _words(self, row: int, words: Any) -> list[str]:
        if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
            raise UserDataError(
                f"{self._where(row)}: {self.columns[0]!r} must be the post's words, a list of strings, got "
                f"{quoted(words)}. (A CSV cannot hold lists: use JSON lines or Parquet for NER.)"
            )
        return words

    def _tags(self, row: int, words: list[str], tags: Any) -> list[int]:
        if not isinstance(tags, list) or len(tags) != len(words):
            count = len(tags) if isinstance(tags, list) else "no list of"
            raise UserDataError(
                f"{self._where(row)}: {len(words)} words in {self.columns[0]!r} but {count} tags in "
                f"{self.columns[1]!r}; give one tag per word."
            )
        if self.label_is_class:
            return list(tags)
        unknown = [tag for tag in tags if tag not in self.label_names]
        if unknown:
            # Only streamed data can get here: otherwise the label list was built from every tag.
            raise UserDataError(
                f"{self._where(row)}: the tag {quoted(unknown[0])} is not one of --label_names {self.label_names}; "
                f"name every tag of the data there."
            )
        return [self.label_names.index(tag) for tag in tags]

    def _text(self, row: int, text: Any) -> str:
        if isinstance(text, list) and all(isinstance(word, str) for word in text):
            return " ".join(text)
        if not isinstance(text, str):
            raise UserDataError(f"{self._where(row)}: {self.columns[0]!r} must be the post's text, got {quoted(text)}.")
        return text

    def _sentiment_label(self, label: Any) -> int | list[int] | float:
        """The class id, the list of class ids (each once, in the post's order) or the regression target."""
        if self.problem_type == "regression":
            return float(label)
        if self.problem_type == "multi_label_classification":
            ids = label if self.label_is_class else [self.label_names.index(str(item)) for item in label]
            return list(dict.fromkeys(ids))
        if self.label_is_class:
            return label
        if str(label) not in self.label_names:
            # Only streamed data can get here: otherwise the label list was built from every label.
            raise UserDataError(
                f"{self._where(None)}: the label {quoted(label)} is not one of --label_names {self.label_names}; "
                f"name every label of the data there."
            )
        return self.label_names.index(str(label))

    def _image(self, image: Any) -> tuple[dict[str, Any], str | None]:
        """The stored image (a path, or bytes with a name) and, for a missing or unreadable one, why."""
        if isinstance(image, dict) and image.get("bytes") is not None:
            data = image["bytes"]
            if image.get("path") is None and data == placeholder_image_bytes():
                # The grey placeholder of an exported MuSE dataset stays one (counted as such).
                return {"bytes": data, "path": None}, None
            try:
                decode_image(io.BytesIO(data), image.get("path") or "image bytes")
            except UnreadableImageError as error:
                return self._missing(f"unreadable ({error.reason})")
            return {"bytes": data, "path": image.get("path") or "image bytes"}, None
        from_image_column = isinstance(image, dict)
        if from_image_column:
            image = image.get("path")
        if image is None or (isinstance(image, str) and not image.strip()):
            return self._missing("no image given")
        if not isinstance(image, str):
            return self._missing(f"not an image, a path or a URL: {quoted(image)}")
        if _URL.match(image):
            try:
                policy = is_usable_address if self.allow_private_urls else is_public_address
                data = download_image_bytes(image, self.timeout, self.max_image_bytes, address_allowed=policy)
                decode_image(io.BytesIO(data), image)
            except UnreadableImageError as error:
                return self._missing(f"unreadable ({error.reason}): {quoted(image)}")
            except ConnectionError:
                # One reason for every failed fetch, as the pipelines give it: nothing about the network is told.
                return self._missing(
                    f"not fetched: {quoted(image)} (only public http(s) addresses are fetched, within the time limit "
                    f"and redirects; --allow_private_urls also fetches from your own network)"
                )
            return {"bytes": data, "path": image}, None
        if "\x00" in image:
            return self._missing(f"a path with a NUL byte: {quoted(image)}")
        path = Path(image)
        if self.from_hub and not (from_image_column and _inside(path, self.trusted_folders)):
            # A Hub dataset is someone else's: its paths are read only where datasets put the files it downloaded
            # (its caches), or relative to the image_dir given here.
            if path.is_absolute() or self.base_folder is None:
                return self._missing(
                    f"a file path in a Hub dataset ({quoted(image)}), which is not read: give image_dir for relative "
                    f"paths, or store the images in a datasets.Image column"
                )
        if not path.is_absolute():
            if self.base_folder is None:
                return self._missing(f"a relative path with nowhere to resolve it: {quoted(image)}")
            path = Path(os.path.normpath(Path(self.base_folder) / path))
            if not path.is_relative_to(self.base_folder):
                # A data file names pictures beside it; one that climbs out could make training read any file.
                return self._missing(f"a relative path that leaves the data's folder: {quoted(image)}")
        path = Path(os.path.normpath(path))
        base = self.base_folder
        if base is not None and path.is_relative_to(base) and leaves_folder(path, base):
            # The same rule for where the path leads: a link in the data's folder may not lead out of it.
            return self._missing(f"a symbolic link that leads outside the data's folder: {quoted(image)}")
        problem = check_image_file(path)
        if problem is not None:
            return self._missing(f"{problem}: {path}")
        return {"bytes": None, "path": str(path.resolve())}, None

    @staticmethod
    def _missing(reason: str) -> tuple[dict[str, Any], str]:
        return {"bytes": placeholder_image_bytes(), "path": None}, reason


def _download_caches(cache_dir: str | os.PathLike | None) -> tuple[str, ...]:
    """The folders where datasets and huggingface_hub put what they download."""
    from huggingface_hub import constants

    folders = (cache_dir or datasets.config.HF_DATASETS_CACHE, constants.HF_HUB_CACHE)
    return tuple(os.path.realpath(folder) for folder in folders)


def _inside(path: Path, folders: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(real != folder and os.path.commonpath([real, folder]) == folder for folder in folders)


def _features(task: str, label_names: list[str], problem_type: str | None, labeled: bool = True) -> datasets.Features:
    label = datasets.ClassLabel(names=label_names)
    if not labeled:
        columns = {"tokens": datasets.List(datasets.Value("string"))} if task == "mner" else {
            "text": datasets.Value("string")}
    elif task == "mner":
        columns = {"tokens": datasets.List(datasets.Value("string")), "ner_tags": datasets.List(label)}
    elif problem_type == "regression":
        columns = {"text": datasets.Value("string"), "label": datasets.Value("float64")}
    elif problem_type == "multi_label_classification":
        columns = {"text": datasets.Value("string"), "label": datasets.List(label)}
    else:
        columns = {"text": datasets.Value("string"), "label": label}
    return datasets.Features({**columns, "image": datasets.Image(), "image_problem": datasets.Value("string")})


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
        base_folder = source.base_folders.get(origin[split], source.base_folders.get("*"))
        labeled = split not in unlabeled
        convert = _Canonical(
            task=task,
            split_name=source.split_name(origin[split]),
            columns=columns,
            label_names=label_names,
            label_is_class=labeled and _class_label(dataset.features[columns[1]]) is not None,
            problem_type=problem_type,
            base_folder=str(base_folder) if base_folder is not None else None,
            from_hub=source.from_hub,
            trusted_folders=_download_caches(cache_dir),
            timeout=timeout,
            max_image_bytes=max_image_bytes,
            allow_private_urls=allow_private_urls,
            labeled=labeled,
        )
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
        base_folder = source.base_folders.get(split, source.base_folders.get("*"))
        labeled = split not in unlabeled
        convert = _Canonical(
            task=task,
            split_name=source.split_name(split),
            columns=columns,
            label_names=label_names,
            label_is_class=labeled and dataset.features is not None
            and _class_label(dataset.features.get(columns[1])) is not None,
            problem_type=problem_type,
            base_folder=str(base_folder) if base_folder is not None else None,
            from_hub=source.from_hub,
            trusted_folders=_download_caches(cache_dir),
            timeout=timeout,
            max_image_bytes=max_image_bytes,
            allow_private_urls=allow_private_urls,
            labeled=labeled,
            stop_at_missing_image=missing_images == "error",
        )
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
