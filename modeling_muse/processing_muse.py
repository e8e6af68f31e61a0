"""MuSE processor: text (+ word labels) and images -> model inputs.

`MuSEProcessor` pairs the text encoder's tokenizer with a stock image processor (resize to 224x224 and
normalise with the backbone's mean/std, docs/design.md section 1) and adds what MuSE needs beyond that:

- text truncated to at most ``max_length`` sub-word tokens, because MuSE fuses text position j with image token j
  and has ``max_length`` image tokens, and padded to the batch's longest post (padding changes nothing at real
  positions, so a shorter batch only saves work);
- ``word_start_mask``: 1 at each word's first sub-token, where the NER head reads its emissions;
- ``labels``: word labels placed at first sub-tokens, -100 elsewhere (the `transformers` convention);
- ``decoder_pixel_values``: a 32x32 copy of each image in [-1, 1] on the 8-bit grid, the target of the
  text-to-image regularizer (docs/design.md, section 2).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from .image_input import (
    PLACEHOLDER_COLOR,
    PLACEHOLDER_SIZE,
    ImageInput,
    UnreadableImageError,
    decode_image,
    load_rgb_image,
    placeholder_image,
)
from .reporting import (
    LISTED,
    UNKNOWN_WORDS_WARNING_MINIMUM,
    UNKNOWN_WORDS_WARNING_SHARE,
    PostCut,
    TextReport,
    count_entities_cut,
    truncation_warning,
    unknown_words_warning,
)

__all__ = [
    "PLACEHOLDER_COLOR",
    "PLACEHOLDER_SIZE",
    "UNKNOWN_WORDS_WARNING_MINIMUM",
    "UNKNOWN_WORDS_WARNING_SHARE",
    "MuSEProcessor",
    "TextReport",
    "UnreadableImageError",
    "decode_image",
    "load_rgb_image",
    "placeholder_image",
    "split_words_with_offsets",
    "unknown_words_warning",
]

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\S+")


def split_words_with_offsets(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split a raw post on whitespace, as the datasets are tokenised, keeping each word's character span."""
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


@dataclass(frozen=True)
class _TextAnalysis:
    report: TextReport
    cuts: list[PostCut]
    unknown_examples: list[str]


class MuSEProcessor(ProcessorMixin):
    r"""
    Tokenizer + image processor for MuSE.

    Args:
        image_processor: an image processor for the image encoder's input (e.g. `ViTImageProcessor` with
            224x224 and the backbone's mean/std).
        tokenizer: the text encoder's (fast) tokenizer.
        max_length (`int`, defaults to 64): n, the longest text in sub-word tokens; must equal the model's
            `max_text_length`.
        decoder_image_size (`int`, defaults to 32): side of the copy returned as `decoder_pixel_values`.
        label_names (`list[str]`, *optional*): tag names in id order (e.g. `["O", "B-PER", ...]`). Lets
            `word_labels` be given as names and lets truncation warnings count the entities that were cut.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_length: int = 64,
        decoder_image_size: int = 32,
        label_names: list[str] | None = None,
        **kwargs,
    ):
        self.max_length = max_length
        self.decoder_image_size = decoder_image_size
        self.label_names = list(label_names) if label_names is not None else None
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> MuSEProcessor:
        """`ProcessorMixin.from_pretrained`, without the model's ``dtype`` (``torch_dtype``).

        ``pipeline(task, model=folder, dtype=...)`` passes the model's arguments on to the processor; the tokenizer
        would keep a ``dtype`` among its settings, and then fail to save them (a `torch.dtype` is no JSON value).
        transformers drops it in the same way for the tokenizers its pipelines load themselves.
        """
        for model_argument in ("dtype", "torch_dtype"):
            kwargs.pop(model_argument, None)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_text_vision_pretrained(
        cls,
        text_model_name_or_path: str,
        vision_model_name_or_path: str,
        *,
        max_length: int = 64,
        label_names: list[str] | None = None,
        image_size: int | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
    ) -> MuSEProcessor:
        """The text encoder's tokenizer and the image tower's preprocessing (downloads no weights).

        Args:
            text_model_name_or_path: Hub id or folder of the text encoder (its tokenizer).
            vision_model_name_or_path: the image tower, in any form `MuSEForTokenClassification.from_text_vision_pretrained`
                takes.
            max_length: n, the model's ``max_text_length``.
            label_names: tag names in id order.
            image_size: ``None`` keeps the tower's own preprocessing: a transformers tower's `AutoImageProcessor`,
                or for timm its pretrained configuration (resize by ``crop_pct``, centre crop to ``input_size``,
                its interpolation, mean and std). A side in pixels resizes every image to ``image_size`` x
                ``image_size`` instead (docs/design.md, section 1), with the tower's mean and std.
            tokenizer_kwargs: extra arguments for the tokenizer's `AutoTokenizer.from_pretrained`
                (``trust_remote_code``, ``revision``, ...).
        """
        from transformers import AutoTokenizer

        from .image_encoder import resolve_vision_tower, tower_image_processor

        tower = resolve_vision_tower(vision_model_name_or_path)
        image_processor = tower_image_processor(tower, image_size)
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path, **(tokenizer_kwargs or {}))
        return cls(image_processor, tokenizer, max_length=max_length, label_names=label_names)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "token_type_ids", "pixel_values", "decoder_pixel_values", "word_start_mask"]

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput] | None = None,
        text: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        word_labels: Sequence[int | str] | Sequence[Sequence[int | str]] | None = None,
        is_split_into_words: bool = False,
        padding: Literal["longest", "max_length"] = "longest",
        return_tensors: str | None = None,
        warn: bool = True,
        return_text_report: bool = False,
        **kwargs: Any,
    ) -> BatchFeature | tuple[BatchFeature, TextReport]:
        """Prepare a batch of posts for MuSE.

        Args:
            images: one image or a list, one per post: PIL images, uint8 numpy arrays or local file paths (how each
                kind of picture is read: `load_rgb_image`).
            text: a raw post (`str`), a list of raw posts, or pre-split words: a list of word lists, or one word
                list with `is_split_into_words=True`. Raw posts are split on whitespace into words.
            word_labels: per post, one tag (id or name from `label_names`) per word.
            is_split_into_words: read a flat list of strings as the words of one post rather than a batch.
            padding: ``"longest"`` pads the text to the batch's longest post, ``"max_length"`` always to ``max_length``
                (fixed shapes); the model's outputs at real positions are the same either way.
            return_tensors: `"pt"` for PyTorch tensors, as for any `transformers` processor.
            warn: log, once per call, a warning naming the posts cut at ``max_length`` (with the words and labelled
                entities cut) and one when many words became the tokenizer's unknown token (`unknown_words_warning`).
                ``False`` keeps the call quiet, for a caller that measured its data once with `text_report`; errors
                are raised either way.
            return_text_report: also return the `TextReport` of this call's text (what `text_report` would
                measure), from the same tokenisation; needs ``text``.

        Returns:
            A `BatchFeature` with `input_ids`, `attention_mask` (and `token_type_ids` when the tokenizer has
            them), `word_start_mask`, `labels` (with `word_labels`), `pixel_values` and
            `decoder_pixel_values` (with `images`); with ``return_text_report=True``, the pair (features, report).

        Errors name the argument and the post's 0-based position (``images[3]``, ``text[2]``, ``post 5``).
        """
        if kwargs:
            raise TypeError(f"MuSEProcessor got unexpected arguments: {sorted(kwargs)}.")
        if text is None and images is None:
            raise ValueError("MuSEProcessor needs text=..., images=... or both.")
        if return_text_report and text is None:
            raise ValueError("return_text_report=True reports on the text: pass text=... too.")
        data: dict[str, Any] = {}
        batch_size = analysis = None
        if text is not None:
            words = self._as_word_lists(text, is_split_into_words)
            batch_size = len(words)
            encoded, analysis = self._encode_text(words, word_labels, padding)
            data.update(encoded)
            if warn:
                self._warn_about_text(analysis)
        if images is not None:
            image_list = self._as_image_list(images)
            if batch_size is not None and len(image_list) != batch_size:
                raise ValueError(f"images: got {len(image_list)} images for {batch_size} posts; give one image per post.")
            data.update(self._encode_images(image_list))
        features = BatchFeature(data, tensor_type=return_tensors)
        return (features, analysis.report) if return_text_report else features

    def text_report(
        self,
        words: Sequence[Sequence[str]],
        word_labels: Sequence[Sequence[int | str]] | None = None,
    ) -> TextReport:
        """Measure, without a warning, what the processor does to these posts' words: how many become the tokenizer's
        unknown token and how many (and which posts, and how many labelled entities) ``max_length`` cuts.

        Meant for a whole dataset split at once: report it, then call the processor per batch with ``warn=False``.

        Args:
            words: per post, its list of words (as ``text`` takes pre-split words).
            word_labels: per post, one tag per word, as for ``__call__``; needed for ``cut_entities``.
        """
        if isinstance(words, str) or not isinstance(words, Sequence):
            raise TypeError(f"words: expected one list of words per post, got {type(words).__name__}.")
        for position, post in enumerate(words):
            if isinstance(post, str) or not isinstance(post, Sequence):
                raise TypeError(
                    f"words[{position}]: expected the post's list of words, got {type(post).__name__}; for raw posts, "
                    f"split them first (split_words_with_offsets)."
                )
        word_lists = [self._check_words(post, f"words[{position}]") for position, post in enumerate(words)]
        if not word_lists:
            return TextReport.empty(count_entities=word_labels is not None and self.label_names is not None)
        return self._encode_text(word_lists, word_labels, "longest")[1].report

    @staticmethod
    def _check_words(post: Sequence[Any], argument: str) -> list[str]:
        for index, word in enumerate(post):
            if not isinstance(word, str):
                raise TypeError(f"{argument}: word {index} is a {type(word).__name__}, expected a string.")
        return list(post)

    @classmethod
    def _as_word_lists(cls, text: Any, is_split_into_words: bool) -> list[list[str]]:
        if isinstance(text, str):
            if is_split_into_words:
                raise ValueError("text: is_split_into_words=True needs a list of words, got a single string.")
            return [split_words_with_offsets(text)[0]]
        if not isinstance(text, Sequence):
            raise TypeError(
                f"text: expected a string, a list of strings or a list of word lists, got {type(text).__name__}."
            )
        if is_split_into_words:
            return [cls._check_words(text, "text (is_split_into_words=True)")]
        if not text:
            raise ValueError("text: the list of posts is empty; give at least one post.")
        posts: list[list[str]] = []
        raw = isinstance(text[0], str)
        for position, post in enumerate(text):
            if raw and isinstance(post, str):
                posts.append(split_words_with_offsets(post)[0])
            elif not raw and isinstance(post, Sequence) and not isinstance(post, str):
                posts.append(cls._check_words(post, f"text[{position}]"))
            else:
                first = "raw posts (strings)" if raw else "word lists"
                raise TypeError(
                    f"text[{position}]: a {type(post).__name__} among {first}; give either raw posts or pre-split word "
                    f"lists, one per post."
                )
        return posts

    def _word_label_ids(self, word_labels: Any, words: list[list[str]]) -> list[list[int]]:
        if len(words) == 1 and (len(word_labels) == 0 or isinstance(word_labels[0], (int, str, np.integer))):
            word_labels = [word_labels]
        if len(word_labels) != len(words):
            raise ValueError(f"word_labels: got labels for {len(word_labels)} posts but text has {len(words)} posts.")
        label_ids = []
        for index, (post_words, post_labels) in enumerate(zip(words, word_labels)):
            post_labels = list(post_labels)
            if len(post_labels) != len(post_words):
                raise ValueError(
                    f"word_labels: post {index} has {len(post_words)} words but {len(post_labels)} labels; give one "
                    f"label per word."
                )
            label_ids.append([self._label_id(label) for label in post_labels])
        return label_ids

    def _label_id(self, label: int | str) -> int:
        if isinstance(label, str):
            if self.label_names is None or label not in self.label_names:
                raise ValueError(
                    f"word_labels: label {label!r} is not in label_names={self.label_names}; pass label ids, or build "
                    f"the processor with label_names=[...]."
                )
            return self.label_names.index(label)
        return int(label)

    def _word_pieces(self, words: list[list[str]]) -> dict[str, list[int]]:
        """Each distinct word's sub-token ids, without special tokens."""
        vocabulary = sorted({word for post in words for word in post})
        if not vocabulary:
            return {}
        return dict(zip(vocabulary, self.tokenizer(vocabulary, add_special_tokens=False)["input_ids"]))

    def _replace_wordless_tokens(self, words: list[list[str]], pieces: dict[str, list[int]]) -> list[list[str]]:
        # A word made only of characters the tokenizer strips (zero-width joiners, control characters) yields no
        # sub-token and would silently lose its label and prediction; it stands in as the unknown token instead.
        empty = {word for word, ids in pieces.items() if not ids}
        if not empty:
            return words
        unknown = self.tokenizer.unk_token
        if unknown is None:
            raise ValueError(f"text: words {sorted(empty)!r} produce no tokens and the tokenizer has no unknown token.")
        return [[unknown if word in empty else word for word in post] for post in words]

    def _encode_text(
        self, words: list[list[str]], word_labels: Any, padding: str
    ) -> tuple[dict[str, Any], _TextAnalysis]:
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding: expected 'longest' or 'max_length', got {padding!r}.")
        label_ids = self._word_label_ids(word_labels, words) if word_labels is not None else None
        # Every word becomes at least one sub-token, so no word past the first max_length can be read: the rest is
        # counted as cut without being tokenised (a post of a million words costs no more than one of max_length).
        readable = [post[: self.max_length] for post in words]
        pieces = self._word_pieces(readable)
        encoded = self.tokenizer(
            self._replace_wordless_tokens(readable, pieces),
            is_split_into_words=True,
            padding=padding,
            truncation=True,
            max_length=self.max_length,
        )
        word_start_mask, labels, cuts = [], [], []
        for index, post_words in enumerate(words):
            word_ids = encoded.word_ids(index)
            starts = [
                int(word_id is not None and (position == 0 or word_ids[position - 1] != word_id))
                for position, word_id in enumerate(word_ids)
            ]
            word_start_mask.append(starts)
            kept = len({word_id for word_id in word_ids if word_id is not None})
            if kept < len(post_words):
                cuts.append(
                    PostCut(index, post_words, kept, self._entities_cut(label_ids, index, kept), label_ids is not None)
                )
            if label_ids is not None:
                labels.append(
                    [label_ids[index][word_id] if start else -100 for word_id, start in zip(word_ids, starts)]
                )
        data = dict(encoded)
        data["word_start_mask"] = word_start_mask
        if label_ids is not None:
            data["labels"] = labels
        return data, self._analysis(words, pieces, cuts, labelled=label_ids is not None)

    def _entities_cut(self, label_ids: list[list[int]] | None, index: int, kept: int) -> int | None:
        if label_ids is None or self.label_names is None:
            return None
        return count_entities_cut([self.label_names[label] for label in label_ids[index]], kept)

    def _analysis(
        self, words: list[list[str]], pieces: dict[str, list[int]], cuts: list[PostCut], labelled: bool
    ) -> _TextAnalysis:
        unknown_id = self.tokenizer.unk_token_id
        unknown = {word for word, ids in pieces.items() if unknown_id is not None and unknown_id in ids}
        counted_entities = labelled and self.label_names is not None
        report = TextReport(
            posts=len(words),
            words=sum(len(post) for post in words),
            unknown_words=sum(word in unknown for post in words for word in post),
            cut_words=sum(len(cut.words) - cut.kept for cut in cuts),
            cut_entities=sum(cut.entities for cut in cuts) if counted_entities else None,
            cut_posts=[cut.position for cut in cuts],
        )
        examples = list(dict.fromkeys(word for post in words for word in post if word in unknown))
        return _TextAnalysis(report, cuts, examples[:LISTED])

    def _warn_about_text(self, analysis: _TextAnalysis) -> None:
        coverage = unknown_words_warning(analysis.report, self.tokenizer.name_or_path, analysis.unknown_examples)
        if coverage is not None:
            logger.warning(coverage)
        if analysis.cuts:
            logger.warning(
                truncation_warning(
                    analysis.cuts, f"max_length={self.max_length} sub-word tokens", posts=analysis.report.posts
                )
            )

    @staticmethod
    def _as_image_list(images: Any) -> list[ImageInput]:
        if isinstance(images, (Image.Image, np.ndarray, str, os.PathLike)):
            return [images]
        if isinstance(images, Sequence):
            return list(images)
        raise TypeError(
            f"images: expected a PIL image, a uint8 numpy array, a file path or a list of them, got "
            f"{type(images).__name__}."
        )

    def placeholder_pixel_values(self) -> Any:
        """``pixel_values`` ``(1, 3, H, W)`` (a torch tensor) of the grey placeholder picture, as this processor
        prepares every picture: what a post without one looks like to the model in the data (the dataset builders
        store the placeholder), in the pipelines (``allow_missing_image=True``, ``return_image_effect=True``) and when
        the training scripts score the posts with the picture withheld."""
        return self.image_processor(images=[placeholder_image()], return_tensors="pt")["pixel_values"]

    def _encode_images(self, images: list[ImageInput]) -> dict[str, Any]:
        rgb = [load_rgb_image(image, argument=f"images[{index}]") for index, image in enumerate(images)]
        pixel_values = self.image_processor(images=rgb, return_tensors="np")["pixel_values"]
        size = self.decoder_image_size
        small = np.stack([np.asarray(image.resize((size, size), Image.Resampling.BOX)) for image in rgb])
        decoder_pixel_values = (small.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) * 2.0 - 1.0
        return {"pixel_values": pixel_values, "decoder_pixel_values": decoder_pixel_values}
