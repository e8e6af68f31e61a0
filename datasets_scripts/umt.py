"""Multimodal NER data in the "UMT format" (Twitter-2015, Twitter-2017, MT-Product).

The format, as released by UMT (Yu et al., 2020): per post a line ``IMGID:<id>``, then one
``token<TAB>BIO-tag`` line per token, and a blank line between posts. A data folder holds
``train.txt``, ``valid.txt`` and ``test.txt``; the images, distributed separately, are
``<image_dir>/<id>.jpg``.

Parsing rules (:func:`read_umt_file`); every rejection raises :class:`UMTFormatError` with
``file:line``:

* UTF-8, with or without a byte-order mark; invalid UTF-8 is rejected.
* A line ends at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (Python's universal newlines, so LF, CRLF,
  old-Mac CR files and mixes of them read alike, and line numbers are those an editor shows).
  Characters such as U+2028 or U+0085 inside a token (which ``str.splitlines`` would treat as
  line breaks) stay part of the token.
* Trailing whitespace of a line is stripped; a line that is then empty is a blank line. Other
  whitespace is kept: it is part of the token.
* A post starts at an ``IMGID:`` line and ends at a blank line, at the next ``IMGID:`` line or at
  the end of the file. The id must be non-empty and free of whitespace (it names a file). A
  byte-order mark before ``IMGID:`` (where two files were concatenated) is ignored.
* Every ``IMGID:`` line gives one post: a file either parses to exactly as many posts as it has
  ``IMGID:`` lines, or is rejected.
* A post without token lines is KEPT with empty ``tokens``/``ner_tags``, so that the published
  split sizes hold.
* A token line needs exactly one TAB between a non-empty token and its tag; the tag must be in the
  configuration's label set.
* A token line before the first ``IMGID:`` line, or after a blank line without a new ``IMGID:``
  line, is rejected.

Tokens are kept byte-for-byte otherwise: the real Twitter-2017 files contain twelve tokens that are a
single invisible character (U+200B, U+200D, U+0092, U+00AD); a BERT-style tokenizer deletes such
characters, so the token gets no sub-word at all, which the processor has to handle.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ._splits import check_builder_config, make_split_generators
from .errors import DataFormatError, check_inside_folder, file_id_problem, quoted
from .images import resolve_images

__all__ = [
    "MT_PRODUCT_LABELS",
    "PUBLISHED_SPLIT_SIZES",
    "TWITTER2015_LABELS",
    "TWITTER2017_LABELS",
    "UMT_SPLIT_FILES",
    "UMTFormatError",
    "UMTNerBuilder",
    "UMTNerConfig",
    "UMTPost",
    "labels_from_tags",
    "read_umt_file",
]


# The label sets of the public releases, each in its own names: Twitter-2015 calls its fourth type OTHER, Twitter-2017
# calls it MISC, and MT-Product tags product names as MISC alone.
TWITTER2015_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-OTHER", "I-OTHER")
TWITTER2017_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC")
MT_PRODUCT_LABELS = ("O", "B-MISC", "I-MISC")
# Split name -> file name inside data_dir.
UMT_SPLIT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
# Posts per split in the releases the paper uses (its Table 4).
PUBLISHED_SPLIT_SIZES = {
    "twitter2015": {"train": 4000, "validation": 1000, "test": 3257},
    "twitter2017": {"train": 3373, "validation": 723, "test": 723},
    "mt_product": {"train": 2680, "validation": 893, "test": 895},
}
_IMGID_PREFIX = "IMGID:"
_BYTE_ORDER_MARK = "\ufeff"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")
_CITATION = """\
Twitter-2015: Zhang, Fu, Liu, Huang. Adaptive Co-attention Network for Named Entity Recognition in Tweets. AAAI 2018.
Twitter-2017: Lu, Neves, Carvalho, Zhang, Ji. Visual Attention Model for Name Tagging in Multimodal Social Media.
ACL 2018.
UMT release of both: Yu, Jiang, Yang, Xia. Improving Multimodal Named Entity Recognition via Entity Span Detection
with Unified Multimodal Transformer. ACL 2020.
"""


class UMTFormatError(DataFormatError):
    """A UMT-format file violates the format; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class UMTPost:
    """One post of a UMT-format file; ``line`` is the line number of its ``IMGID:`` line."""

    image_id: str
    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    line: int


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = len(_LINE_BREAK_BYTES.findall(raw, 0, error.start)) + 1
        raise UMTFormatError(
            path, line, f"not valid UTF-8 (byte 0x{raw[error.start]:02x}); UMT files must be UTF-8"
        ) from None


def read_umt_file(
    path: str | os.PathLike,
    labels: Collection[str] | None = None,
) -> list[UMTPost]:
    """Parse one UMT-format file, following the rules in the module docstring.

    Args:
        path: the ``.txt`` file.
        labels: the allowed tags; ``None`` accepts any non-empty tag (to infer a label set).

    Raises:
        UMTFormatError: on any violation of the format, with file and line number.
    """
    path = Path(path)
    posts: list[UMTPost] = []
    image_id: str | None = None
    start_line = 0
    tokens: list[str] = []
    tags: list[str] = []

    def finish() -> None:
        if image_id is not None:
            posts.append(UMTPost(image_id, tuple(tokens), tuple(tags), start_line))

    for number, raw_line in enumerate(_LINE_BREAK.split(_decode(path)), start=1):
        line = raw_line.rstrip()
        if not line:
            if image_id is not None:
                finish()
                image_id, tokens, tags = None, [], []
            continue
        if line.lstrip(_BYTE_ORDER_MARK).startswith(_IMGID_PREFIX):
            finish()
            line = line.lstrip(_BYTE_ORDER_MARK)
            image_id = line[len(_IMGID_PREFIX) :].strip()
            if not image_id or any(character.isspace() for character in image_id):
                raise UMTFormatError(
                    path, number, f"invalid image id in {quoted(line)}: it must be non-empty without spaces"
                )
            problem = file_id_problem(image_id)
            if problem is not None:
                raise UMTFormatError(
                    path, number, f"invalid image id {quoted(image_id)}: {problem}; an id names a file in image_dir"
                )
            start_line, tokens, tags = number, [], []
            continue
        if image_id is None:
            where = "after a blank line" if posts else "before the first IMGID line"
            raise UMTFormatError(
                path, number, f"token line {where}: every post must start with an '{_IMGID_PREFIX}<id>' line"
            )
        fields = line.split("\t")
        if len(fields) != 2:
            problem = "without a TAB" if len(fields) == 1 else f"with {len(fields) - 1} TABs"
            raise UMTFormatError(path, number, f"token line {problem}: {quoted(line)}; expected 'token<TAB>tag'")
        token, tag = fields
        if not token:
            raise UMTFormatError(path, number, f"empty token in {quoted(line)}")
        if labels is None:
            if not tag.strip():
                raise UMTFormatError(path, number, f"empty tag in {quoted(line)}")
        elif tag not in labels:
            raise UMTFormatError(
                path,
                number,
                f"unknown tag {quoted(tag)}; this configuration allows {', '.join(labels)}. For another label set "
                "use the 'umt' configuration, which takes the labels from the data or from labels=[...].",
            )
        tokens.append(token)
        tags.append(tag)
    finish()
    return posts


def labels_from_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Order a set of tags as a label list: ``"O"`` first (id 0, also when absent from ``tags``),
    then by entity type and, within a type, ``B-`` before ``I-`` before other prefixes."""
    prefix_order = {"B": 0, "I": 1}

    def key(tag: str) -> tuple[str, int, str]:
        prefix, _, entity = tag.partition("-")
        return (entity, prefix_order.get(prefix, 2), prefix) if entity else (tag, 3, "")

    return ("O", *sorted(set(tags) - {"O"}, key=key))


@dataclass
class UMTNerConfig(datasets.BuilderConfig):
    """Configuration of :class:`UMTNerBuilder`.

    Attributes:
        labels: the BIO label set, ``"O"`` first. Fixed for ``twitter2015``, ``twitter2017`` and
            ``mt_product``; for ``umt`` taken from the data (see :func:`labels_from_tags`) when not given.
        image_dir: folder holding ``<image_id>.jpg``; ``None`` means no images are available.
        missing_images: ``"error"`` or ``"placeholder"``, see :mod:`datasets_scripts.images`.
    """

    labels: Sequence[str] | None = None
    image_dir: str | None = None
    missing_images: str = "error"


class UMTNerBuilder(datasets.GeneratorBasedBuilder):
    """Builds MNER datasets from a folder in UMT format.

    Example::

        builder = UMTNerBuilder(config_name="twitter2017", data_dir="data/twitter2017",
                                image_dir="data/twitter2017_images", cache_dir="cache")
        builder.download_and_prepare()
        dataset = builder.as_dataset()  # DatasetDict with train / validation / test

    Splits: ``train.txt`` -> ``train``, ``valid.txt`` -> ``validation``, ``test.txt`` -> ``test``. The
    named configurations need all three files; ``umt`` uses those present. The prepared data is
    cached under ``cache_dir`` by configuration and arguments, not by file contents: after changing
    the files, pass ``download_mode="force_redownload"`` to ``download_and_prepare`` (the
    :func:`datasets_scripts.load_muse_dataset` entry point does this detection itself).
    """

    BUILDER_CONFIG_CLASS = UMTNerConfig
    BUILDER_CONFIGS = [
        UMTNerConfig(name="twitter2015", version="1.0.0", labels=TWITTER2015_LABELS, description="Twitter-2015 MNER"),
        UMTNerConfig(name="twitter2017", version="1.0.0", labels=TWITTER2017_LABELS, description="Twitter-2017 MNER"),
        UMTNerConfig(
            name="mt_product",
            version="1.0.0",
            labels=MT_PRODUCT_LABELS,
            description="MT-Product MNER (Chinese, one character per token)",
        ),
        UMTNerConfig(name="umt", version="1.0.0", description="any folder in UMT format"),
    ]

    def _label_names(self) -> tuple[str, ...]:
        config = self.config
        fixed = {c.name: c.labels for c in self.BUILDER_CONFIGS if c.labels is not None}
        if config.name in fixed:
            if tuple(config.labels) != tuple(fixed[config.name]):
                raise ValueError(
                    f"The '{config.name}' configuration has the fixed label set {fixed[config.name]}; "
                    "use the 'umt' configuration for labels=[...]."
                )
            return tuple(config.labels)
        if config.labels is not None:
            labels = tuple(config.labels)
            if not labels or labels[0] != "O" or len(set(labels)) != len(labels):
                raise ValueError(f"labels must be distinct and start with 'O' (so that 'O' has id 0), got {labels}.")
            return labels
        tags = (tag for path in self._split_paths().values() for post in read_umt_file(path) for tag in post.tags)
        return labels_from_tags(tags)

    def _split_paths(self) -> dict[str, Path]:
        if self.config.data_dir is None:
            raise ValueError(f"The '{self.config.name}' configuration needs data_dir=<folder with train.txt, ...>.")
        data_dir = Path(self.config.data_dir)
        paths = {split: data_dir / file_name for split, file_name in UMT_SPLIT_FILES.items()}
        for path in paths.values():
            if path.is_symlink() or path.exists():
                check_inside_folder(path, data_dir)
        if self.config.name == "umt":
            paths = {split: path for split, path in paths.items() if path.is_file()}
            if not paths:
                raise FileNotFoundError(f"None of {list(UMT_SPLIT_FILES.values())} exists in {data_dir}.")
        else:
            absent = [str(path) for path in paths.values() if not path.is_file()]
            if absent:
                raise FileNotFoundError(f"'{self.config.name}' needs these files, which do not exist: {absent}")
        return paths

    def _info(self) -> datasets.DatasetInfo:
        check_builder_config(self)
        return datasets.DatasetInfo(
            description=self.config.description or "",
            features=datasets.Features(
                {
                    "id": datasets.Value("string"),
                    "image_id": datasets.Value("string"),
                    "tokens": datasets.List(datasets.Value("string")),
                    "ner_tags": datasets.List(datasets.ClassLabel(names=list(self._label_names()))),
                    "image": datasets.Image(),
                }
            ),
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        # Parse and check images here, not in _generate_examples, so that format and image errors
        # reach the caller as they are instead of wrapped in a DatasetGenerationError.
        labels = self.info.features["ner_tags"].feature.names
        posts = {split: read_umt_file(path, labels) for split, path in self._split_paths().items()}
        images = resolve_images(
            {split: [post.image_id for post in split_posts] for split, split_posts in posts.items()},
            self.config.image_dir,
            self.config.missing_images,
            dataset_name=self.config.name,
        )
        # Ids are assigned here, not while generating, so that they stay unique if the examples
        # list is sharded over processes (download_and_prepare(num_proc=...)).
        examples = {
            split: [
                {
                    "id": str(index),
                    "image_id": post.image_id,
                    "tokens": list(post.tokens),
                    "ner_tags": list(post.tags),
                    "image": image,
                }
                for index, (post, image) in enumerate(zip(split_posts, images[split], strict=True))
            ]
            for split, split_posts in posts.items()
        }
        return make_split_generators(examples, self.config.name)

    def _generate_examples(self, examples: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
        for example in examples:
            yield example["id"], example
