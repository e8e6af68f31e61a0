"""The conversion of the user's rows into the training scripts' columns (`datasets_scripts.user_data`): `_Canonical`
reads each post's words or text, labels and image (a ``datasets.Image`` value, a path or an ``http(s)://`` URL,
checked and decoded once), `_split_converter` sets one up for a split, and `_features` gives the converted splits' features.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from modeling_muse.image_input import (
    UnreadableImageError,
    decode_image,
    download_image_bytes,
)
from modeling_muse.url_fetch import is_public_address, is_usable_address

from .errors import leaves_folder, quoted
from .images import MissingImagesError, check_image_file, placeholder_image_bytes
from .user_labels import _class_label
from .user_source import _ROW, UserDataError, _Source

_URL = re.compile(r"^https?://", re.IGNORECASE)


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


def _split_converter(
    task: str,
    source: _Source,
    split: str,
    features: datasets.Features | None,
    columns: tuple[str, str, str],
    label_names: list[str],
    problem_type: str | None,
    labeled: bool,
    cache_dir: str | os.PathLike | None,
    timeout: float,
    max_image_bytes: int,
    allow_private_urls: bool,
    stop_at_missing_image: bool = False,
) -> _Canonical:
    """The conversion of the rows read from ``split`` of ``source``: relative image paths resolve against that
    split's folder, and labels are taken as ids where ``features`` make the label column a ``ClassLabel``."""
    base_folder = source.base_folders.get(split, source.base_folders.get("*"))
    return _Canonical(
        task=task,
        split_name=source.split_name(split),
        columns=columns,
        label_names=label_names,
        label_is_class=labeled and features is not None and _class_label(features.get(columns[1])) is not None,
        problem_type=problem_type,
        base_folder=str(base_folder) if base_folder is not None else None,
        from_hub=source.from_hub,
        trusted_folders=_download_caches(cache_dir),
        timeout=timeout,
        max_image_bytes=max_image_bytes,
        allow_private_urls=allow_private_urls,
        labeled=labeled,
        stop_at_missing_image=stop_at_missing_image,
    )


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
