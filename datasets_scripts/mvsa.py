"""MVSA-Single and MVSA-Multiple (Niu et al., 2016) for multimodal sentiment analysis.

Original release layout of a data folder::

    labelResultAll.txt   a header line, then "ID<TAB>text_label,image_label" per post
                         (MVSA-Multiple: three such TAB-separated annotator columns)
    data/<ID>.txt        the post's text
    data/<ID>.jpg        the post's image

Preprocessing (:func:`preprocess_mvsa`), as in the works the MuSE paper follows (Xu and Mao, 2017;
Zhu et al., 2022), in this order, each dropped post counted by reason and logged:

1. MVSA-Multiple only: each modality's label is the majority over the three annotators. A post in
   which the three annotators give three different labels for the text, the image or both is
   dropped (reasons ``no_majority_text``, ``no_majority_image``, ``no_majority_text_and_image``).
2. Text and image labels agree: that label. One neutral and one positive/negative: the
   positive/negative label. Positive against negative: dropped (``positive_vs_negative``).
3. A post whose ``data/<ID>.txt`` does not exist is dropped (``missing_text``); images are handled
   by the ``missing_images`` policy instead, see :mod:`datasets_scripts.images`. Every file is read
   from inside the data folder: one that is a symbolic link leading out (or lies behind one, such as
   a linked ``data/``) is an error naming it, an image one counts as unreadable.
4. Seeded random 8/1/1 split of the ``n`` remaining posts (:func:`split_8_1_1`): the post order of
   ``labelResultAll.txt`` is shuffled with ``random.Random(seed).shuffle``; the first
   ``n * 8 // 10`` posts are train, the next ``n // 10`` validation, the remaining
   ``n - n * 8 // 10 - n // 10`` test (so test takes the rounding remainder). Within each split the
   posts keep their file order.

Text files are decoded as UTF-8 (a byte-order mark is removed) when they are valid UTF-8, else as
Windows-1252, whose five unassigned bytes (0x81, 0x8D, 0x8F, 0x90, 0x9D) are decoded as in
Latin-1, so any byte sequence decodes and Latin-1 text comes out right as well. Line endings are
normalised to ``\\n`` and surrounding whitespace is stripped.
"""

from __future__ import annotations

import codecs
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ._splits import check_builder_config, make_split_generators
from .errors import DataFormatError, check_inside_folder, file_id_problem, quoted
from .images import resolve_images

__all__ = [
    "DROP_REASONS",
    "MVSA_LABELS",
    "MVSABuilder",
    "MVSAConfig",
    "MVSAFormatError",
    "MVSAPost",
    "fuse_labels",
    "majority_label",
    "preprocess_mvsa",
    "read_label_file",
    "read_mvsa_text",
    "split_8_1_1",
]

logger = logging.getLogger(__name__)

MVSA_LABELS = ("positive", "neutral", "negative")
DROP_REASONS = (
    "no_majority_text",
    "no_majority_image",
    "no_majority_text_and_image",
    "positive_vs_negative",
    "missing_text",
)
LABEL_FILE = "labelResultAll.txt"
_CITATION = """\
Niu, Zhu, Pang, El Saddik. Sentiment Analysis on Multi-view Social Data. MMM 2016.
"""


def _latin1_for_unassigned(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error("datasets_scripts.latin1", _latin1_for_unassigned)


class MVSAFormatError(DataFormatError):
    """``labelResultAll.txt`` violates the layout; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class MVSAPost:
    """A post that survived label preprocessing."""

    id: str
    label: str
    text_label: str
    image_label: str


def read_mvsa_text(path: str | os.PathLike) -> str:
    """Read an MVSA text file robustly (encoding rules in the module docstring)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="datasets_scripts.latin1")
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def read_label_file(path: str | os.PathLike, annotators: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """Read ``labelResultAll.txt``.

    Returns:
        per post, in file order: ``(ID, [(text_label, image_label) per annotator])``, labels lower-cased.

    Raises:
        MVSAFormatError: missing header, wrong number of annotator columns, malformed
            ``text,image`` pair, unknown label or duplicate ID, with file and line.
    """
    path = Path(path)
    lines = read_mvsa_text(path).split("\n")
    if lines[0].split()[:1] != ["ID"]:
        raise MVSAFormatError(path, 1, f"expected a header line starting with 'ID', got {quoted(lines[0])}")
    rows: list[tuple[str, list[tuple[str, str]]]] = []
    seen: set[str] = set()
    for number, line in enumerate(lines[1:], start=2):
        # The release separates columns by TABs; splitting on any whitespace also accepts spaces.
        fields = line.split()
        if not fields:
            continue
        post_id, columns = fields[0], fields[1:]
        if len(columns) != annotators:
            raise MVSAFormatError(
                path, number, f"expected {annotators} annotator column(s) 'text,image', got {len(columns)}: {quoted(line)}"
            )
        annotations = []
        for column in columns:
            pair = column.lower().split(",")
            if len(pair) != 2 or any(label not in MVSA_LABELS for label in pair):
                raise MVSAFormatError(
                    path, number, f"expected 'text_label,image_label' with labels in {MVSA_LABELS}, got {quoted(column)}"
                )
            annotations.append((pair[0], pair[1]))
        problem = file_id_problem(post_id)
        if problem is not None:
            raise MVSAFormatError(
                path, number, f"invalid ID {quoted(post_id)}: {problem}; an ID names <ID>.txt and <ID>.jpg in data/"
            )
        if post_id in seen:
            raise MVSAFormatError(path, number, f"duplicate ID {quoted(post_id)}")
        seen.add(post_id)
        rows.append((post_id, annotations))
    return rows


def majority_label(labels: Sequence[str]) -> str | None:
    """The label given by more than half of the annotators, or ``None`` if there is none."""
    label, count = Counter(labels).most_common(1)[0]
    return label if 2 * count > len(labels) else None


def fuse_labels(text_label: str, image_label: str) -> str | None:
    """Agreeing labels -> that label; neutral + positive/negative -> the positive/negative;
    positive vs negative -> ``None`` (the post is dropped)."""
    if text_label == image_label:
        return text_label
    if "neutral" in (text_label, image_label):
        return image_label if text_label == "neutral" else text_label
    return None


def preprocess_mvsa(data_dir: str | os.PathLike, annotators: int) -> tuple[list[MVSAPost], Counter[str]]:
    """Steps 1-3 of the module docstring.

    Returns:
        the kept posts in file order, and the number of dropped posts per reason (all of
        :data:`DROP_REASONS` present, zero or not).
    """
    data_dir = Path(data_dir)
    dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
    kept: list[MVSAPost] = []
    check_inside_folder(data_dir / LABEL_FILE, data_dir)
    for post_id, votes in read_label_file(data_dir / LABEL_FILE, annotators):
        text_label = majority_label([text for text, _ in votes])
        image_label = majority_label([image for _, image in votes])
        if text_label is None or image_label is None:
            missing = [name for name, label in (("text", text_label), ("image", image_label)) if label is None]
            dropped["no_majority_" + "_and_".join(missing)] += 1
            continue
        label = fuse_labels(text_label, image_label)
        if label is None:
            dropped["positive_vs_negative"] += 1
            continue
        text_file = data_dir / "data" / f"{post_id}.txt"
        if not text_file.is_file():
            dropped["missing_text"] += 1
            continue
        check_inside_folder(text_file, data_dir)
        kept.append(MVSAPost(post_id, label, text_label, image_label))
    return kept, dropped


def split_8_1_1(items: Sequence[Any], seed: int) -> dict[str, list[Any]]:
    """Seeded random 8/1/1 split; sizes and order as in step 4 of the module docstring."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_train, n_validation = len(items) * 8 // 10, len(items) // 10
    parts = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_validation],
        "test": order[n_train + n_validation :],
    }
    return {split: [items[index] for index in sorted(indices)] for split, indices in parts.items()}


@dataclass
class MVSAConfig(datasets.BuilderConfig):
    """Configuration of :class:`MVSABuilder`.

    Attributes:
        annotators: annotator columns in ``labelResultAll.txt``: 1 (Single) or 3 (Multiple).
        seed: seed of the 8/1/1 split.
        image_dir: folder holding ``<ID>.jpg``; ``None`` means ``<data_dir>/data``.
        missing_images: ``"error"`` or ``"placeholder"``, see :mod:`datasets_scripts.images`.
    """

    annotators: int = 1
    seed: int = 42
    image_dir: str | None = None
    missing_images: str = "error"


class MVSABuilder(datasets.GeneratorBasedBuilder):
    """Builds MVSA-Single / MVSA-Multiple from the original release layout.

    Example::

        builder = MVSABuilder(config_name="mvsa_single", data_dir="data/MVSA_Single", seed=42,
                              cache_dir="cache")
        builder.download_and_prepare()
        dataset = builder.as_dataset()  # DatasetDict with train / validation / test

    Features: ``id`` (the MVSA ID), ``text``, ``label`` (after step 2 of the module docstring),
    ``text_label`` and ``image_label`` (per-modality labels, after the majority vote for
    Multiple), all labels ``ClassLabel(names=["positive", "neutral", "negative"])``, and ``image``.
    As with :class:`~datasets_scripts.umt.UMTNerBuilder`, the cache is keyed by the arguments, not
    the file contents.
    """

    BUILDER_CONFIG_CLASS = MVSAConfig
    BUILDER_CONFIGS = [
        MVSAConfig(name="mvsa_single", version="1.0.0", annotators=1, description="MVSA-Single"),
        MVSAConfig(name="mvsa_multiple", version="1.0.0", annotators=3, description="MVSA-Multiple"),
    ]

    def _info(self) -> datasets.DatasetInfo:
        check_builder_config(self)
        if self.config.annotators not in (1, 3):
            raise ValueError(f"annotators must be 1 (MVSA-Single) or 3 (MVSA-Multiple), got {self.config.annotators}.")
        label = datasets.ClassLabel(names=list(MVSA_LABELS))
        return datasets.DatasetInfo(
            description=self.config.description or "",
            features=datasets.Features(
                {
                    "id": datasets.Value("string"),
                    "text": datasets.Value("string"),
                    "label": label,
                    "text_label": label,
                    "image_label": label,
                    "image": datasets.Image(),
                }
            ),
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        # All reading and checking happens here so that errors reach the caller unwrapped
        # (errors inside _generate_examples become a DatasetGenerationError).
        if self.config.data_dir is None:
            raise ValueError(f"The '{self.config.name}' configuration needs data_dir=<folder with {LABEL_FILE}>.")
        data_dir = Path(self.config.data_dir)
        if not (data_dir / LABEL_FILE).is_file():
            raise FileNotFoundError(f"{data_dir / LABEL_FILE} does not exist (expected the MVSA release layout).")
        posts, dropped = preprocess_mvsa(data_dir, self.config.annotators)
        splits = split_8_1_1(posts, self.config.seed)
        summary = (
            f"{self.config.name}: kept {len(posts)} posts "
            f"({', '.join(f'{split} {len(split_posts)}' for split, split_posts in splits.items())}, seed "
            f"{self.config.seed}) and dropped {sum(dropped.values())}: "
            f"{', '.join(f'{reason} {count}' for reason, count in dropped.items())}."
        )
        logger.warning("%s", summary)
        # Kept in the dataset info too, because a later load from the cache does not log it again.
        self.info.description = f"{self.info.description}\n{summary}".strip()
        own_images = self.config.image_dir is None
        images = resolve_images(
            {split: [post.id for post in split_posts] for split, split_posts in splits.items()},
            data_dir / "data" if own_images else self.config.image_dir,
            self.config.missing_images,
            dataset_name=self.config.name,
            root=data_dir if own_images else None,
        )
        examples = {
            split: [
                {
                    "id": post.id,
                    "text": read_mvsa_text(data_dir / "data" / f"{post.id}.txt"),
                    "label": post.label,
                    "text_label": post.text_label,
                    "image_label": post.image_label,
                    "image": image,
                }
                for post, image in zip(split_posts, images[split], strict=True)
            ]
            for split, split_posts in splits.items()
        }
        return make_split_generators(examples, self.config.name)

    def _generate_examples(self, examples: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
        for example in examples:
            yield example["id"], example
