"""What the MuSE pipelines read from a call: its inputs as posts (a list, the keyword form, a `datasets` dataset,
a torch `Dataset` or an iterator; `datasets`' storage form of an image), and the notes its posts leave for the call's
warnings. The accepted inputs are described in `modeling_muse.pipelines`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset as TorchIterableDataset

from .entities import PostText
from .image_input import PLACEHOLDER_SIZE
from .reporting import (
    PostCut,
    TextReport,
    placeholder_warning,
    truncation_warning,
    unknown_words_warning,
)

if TYPE_CHECKING:
    from .processing_muse import MuSEProcessor

__all__ = [
    "CallNotes",
    "ListedPost",
    "Placeholder",
    "PostsOfDataset",
    "TextNote",
    "dataset_posts",
    "keyword_posts",
    "listed_posts",
    "stored_image",
]


@dataclass(frozen=True)
class ListedPost:
    """A post of a list input with its 0-based position, which errors and warnings name."""

    position: int
    post: Any


def stored_image(image: Any, argument: str) -> Any:
    """An image in `datasets`' storage form ``{"bytes": ..., "path": ...}`` (an ``Image(decode=False)`` column) as
    what the pipeline reads: its bytes when it has them, else its path as a local file (never fetched, under the
    same rules as a path given directly); None for neither. Any other image is returned as it is."""
    if not isinstance(image, Mapping):
        return image
    unknown = sorted(set(image) - {"bytes", "path"}, key=str)
    if unknown:
        raise ValueError(
            f"{argument}: a dict image is datasets' storage form {{'bytes': ..., 'path': ...}}; this one also has "
            f"{unknown}."
        )
    if image.get("bytes") is not None:
        return image["bytes"]
    path = image.get("path")
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument}: the stored image's path must be a str, got {type(path).__name__}.")
    return Path(path)


class PostsOfDataset(TorchDataset):
    """The items of a sized dataset (a `datasets.Dataset`, transformers' `KeyDataset`, any torch `Dataset`) with
    their 0-based positions, read one at a time as the base class's DataLoader asks for them."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> ListedPost:
        return ListedPost(position, self.dataset[position])


@dataclass(frozen=True)
class Placeholder:
    """A post that got the placeholder image (allow_missing_image=True), and why (a message naming the post)."""

    position: int | None
    reason: str


@dataclass(frozen=True)
class TextNote:
    """What the processor did to a post's words."""

    position: int | None
    post: PostText
    report: TextReport


@dataclass
class CallNotes:
    """What the posts of one call report, gathered into one warning of each kind."""

    posts: int
    placeholders: list[Placeholder] = field(default_factory=list)
    texts: list[TextNote] = field(default_factory=list)
    # What is left of total_timeout for the call's URL images; None until the first one.
    download_seconds_left: float | None = None

    @classmethod
    def of(cls, record: Placeholder | TextNote) -> CallNotes:
        notes = cls(posts=1)
        notes.add(record)
        return notes

    def add(self, record: Placeholder | TextNote) -> None:
        (self.placeholders if isinstance(record, Placeholder) else self.texts).append(record)

    def warnings(self, processor: MuSEProcessor) -> list[str]:
        messages = []
        if self.placeholders:
            # The placeholder is the one the dataset builders store for missing images, so that a post without an
            # image looks to the model exactly like the image-less training posts did.
            reasons = [note.reason for note in self.placeholders]
            lone_post = self.placeholders[0].position is None
            messages.append(placeholder_warning(reasons, self.posts, lone_post, PLACEHOLDER_SIZE))
        cuts = [
            PostCut(note.position, note.post.words, note.report.words - note.report.cut_words)
            for note in self.texts
            if note.report.cut_words
        ]
        if cuts:
            limit = f"the model's max_text_length={processor.max_length} sub-word tokens"
            messages.append(truncation_warning(cuts, limit, consequence="words past it get no prediction"))
        total = sum((note.report for note in self.texts), TextReport.empty())
        coverage = unknown_words_warning(total, processor.tokenizer.name_or_path)
        if coverage is not None:
            messages.append(coverage)
        return messages


def listed_posts(inputs: Any) -> Any:
    """A list of posts, a sized torch `Dataset` or an iterator as its posts with their 0-based positions
    (`ListedPost`); a single post, or posts already listed, as they are."""
    if isinstance(inputs, list):
        return [ListedPost(position, post) for position, post in enumerate(inputs)]
    if isinstance(inputs, TorchDataset) and not isinstance(inputs, (PostsOfDataset, TorchIterableDataset)):
        return PostsOfDataset(inputs)
    if isinstance(inputs, (Iterator, TorchIterableDataset)):
        return (ListedPost(position, post) for position, post in enumerate(inputs))
    return inputs


def keyword_posts(inputs: Any, text: Any, image: Any) -> dict[str, Any] | list[dict[str, Any]]:
    """The posts of the keyword form: one post, or as many as ``image`` lists when it is a list (a list
    ``text`` alone is one post's words)."""
    if inputs is not None:
        raise TypeError("inputs: pass the posts either as inputs or as text=... and image=..., not both.")
    if text is None:
        raise TypeError("text: the keyword form needs text=... (the post's text or words) beside image=...")
    if not isinstance(image, list):
        return {"text": text, "image": image}
    if not isinstance(text, list) or len(text) != len(image):
        raise ValueError(
            f"text, image: image is a list of {len(image)} pictures, so text must be a list of as many posts' "
            f"texts, got {type(text).__name__}"
            + (f" of {len(text)}" if isinstance(text, list) else "")
            + "."
        )
    return [{"text": post_text, "image": post_image} for post_text, post_image in zip(text, image)]


def dataset_posts(
    dataset: Any, kwargs: dict[str, Any], pipeline_params: Mapping[str, Any], text_columns: tuple[str, ...]
) -> tuple[Any, dict[str, Any]]:
    """A `datasets` dataset as posts of its text and image columns (``text_column=``, ``image_column=``;
    by default the first of ``text_columns`` it has, and ``"image"``), streamed row by row. ``kwargs`` are the
    call's arguments, ``pipeline_params`` the preprocessing arguments given to ``pipeline(...)``."""
    columns = list(dataset.column_names or [])
    # What was given to pipeline(...) holds for every call, as for the other call arguments.
    given = {**pipeline_params, **kwargs}
    text_column = given.get("text_column")
    if text_column is None:
        text_column = next((name for name in text_columns if name in columns), None)
    if text_column not in columns:
        defaults = list(text_columns)
        named = f"no column {text_column!r}" if text_column else f"none of the columns {defaults}"
        raise ValueError(
            f"text_column: the dataset has {named} (its columns: {columns}); name the text column with "
            f"text_column=<column>, as --text_column_name does for the training scripts."
        )
    image_column = given.get("image_column") or "image"
    text_only = given.get("image_column") is None and given.get("allow_missing_image")
    if image_column not in columns and not text_only:
        raise ValueError(
            f"image_column: the dataset has no column {image_column!r} (its columns: {columns}); name the image "
            f"column with image_column=<column>, as --image_column_name does for the training scripts"
            + ("." if given.get("image_column") else ", or pass allow_missing_image=True for text-only posts.")
        )
    kept = [text_column] + ([image_column] if image_column in columns else [])
    dataset = dataset.select_columns(kept)
    features = getattr(dataset, "features", None) or {}
    if image_column in columns and type(features.get(image_column)).__name__ == "Image":
        # Stored, not decoded by datasets: the pipeline reads the bytes with its own limits and rules.
        dataset = dataset.cast_column(image_column, type(features[image_column])(decode=False))
    kwargs = {**kwargs, "text_column": text_column, "image_column": image_column}
    if isinstance(dataset, sys.modules["datasets"].Dataset):
        return PostsOfDataset(dataset), kwargs
    return (row for row in dataset), kwargs
