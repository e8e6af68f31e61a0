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
from typing import IO, Any, Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature, ProcessorMixin

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

ImageLike = Image.Image | np.ndarray | str | os.PathLike

_WORD = re.compile(r"\S+")
# A scheme of two characters at least, so that a Windows path such as "C://photos/a.jpg" is not taken for a URL.
URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
PLACEHOLDER_SIZE = (224, 224)
PLACEHOLDER_COLOR = (128, 128, 128)
# Above this share of words turned into the unknown token (and at least UNKNOWN_WORDS_WARNING_MINIMUM words), a call
# warns that the tokenizer does not cover the text. English tweets lose about 1.5% of their words (emoji) with an
# English BERT vocabulary, MT-Product's Chinese 59%; the minimum keeps a short tweet with an emoji or two quiet.
UNKNOWN_WORDS_WARNING_SHARE = 0.1
UNKNOWN_WORDS_WARNING_MINIMUM = 3
# PIL's modes for 16-bit greyscale. "I" (32-bit integers) is where PIL puts 16-bit data from PPM/PGM files and
# `convert("I")`, so it is read on the same 0..65535 scale.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SIXTEEN_BIT_MAX = 65535
# Modes with 8 bits per channel whose conversion to RGB PIL defines.
_EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
# How many posts or examples a warning lists before it only counts.
_LISTED = 10


class UnreadableImageError(ValueError):
    """An image input that names a picture which cannot be read as 8-bit RGB.

    Raised for undecodable files (damaged, truncated, a header without image data), decompression bombs, pixel formats
    without a defined 8-bit reading (see `load_rgb_image`), empty images and, in the pipelines, downloads over the size
    limit. The message starts with the argument and names the file or URL; ``reason`` is the cause alone.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


def placeholder_image() -> Image.Image:
    """The stand-in for a missing image, used alike by the dataset builders and the pipelines: 224x224, mid-grey."""
    return Image.new("RGB", PLACEHOLDER_SIZE, PLACEHOLDER_COLOR)


def split_words_with_offsets(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split a raw post on whitespace, as the datasets are tokenised, keeping each word's character span."""
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def _upright(image: Image.Image) -> Image.Image:
    # As `datasets.Image` decodes training images and transformers' `load_image` reads pipeline inputs: a phone photo
    # stored sideways with an EXIF orientation is turned the way it is shown.
    try:
        if image.getexif().get(ExifTags.Base.Orientation) in (None, 1):
            return image
        return ImageOps.exif_transpose(image)
    # A damaged EXIF block says nothing reliable about the orientation; the pixels themselves are fine.
    except Exception:  # noqa: BLE001
        return image


def decode_image(file: str | os.PathLike | IO[bytes], name: str, argument: str = "images") -> Image.Image:
    """Decode an image file completely (all of its pixel data, not only the header) into an upright 8-bit RGB image,
    as `load_rgb_image` reads files.

    Args:
        file: a path or a binary file object.
        name: the path or URL, for messages.
        argument: the argument the image came in, for messages.

    Raises:
        UnreadableImageError: the data cannot be decoded, PIL refuses it as a decompression bomb, or its pixel format
            has no 8-bit reading (see `load_rgb_image`).
    """

    def unreadable(reason: str) -> UnreadableImageError:
        return UnreadableImageError(f"{argument}: {name!r} is not a readable image ({reason}).", reason=reason)

    try:
        with Image.open(file) as opened:
            if not opened.tile:
                raise unreadable("it has an image header but no image data")
            # PIL refuses images over twice MAX_IMAGE_PIXELS when it opens them and only warns between one and two
            # times; decoded, such an image would take gigabytes. Both are refused before any pixel is decoded.
            if opened.width * opened.height > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(
                    f"Image size ({opened.width * opened.height} pixels) exceeds limit of {Image.MAX_IMAGE_PIXELS} "
                    f"pixels"
                )
            opened.load()
            upright = _upright(opened)
            # A copy, so that the pixels outlive the file that `with` closes.
            image = upright if upright is not opened else opened.copy()
    except Image.DecompressionBombError as error:
        reason = f"refused as a possible decompression bomb: {error}"
        raise UnreadableImageError(
            f"{argument}: {name!r} is {reason} If you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS (now "
            f"{Image.MAX_IMAGE_PIXELS}) before loading it, or pass a downscaled copy.",
            reason=reason,
        ) from None
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        raise unreadable("its data is in no image format that PIL knows") from None
    # PIL's format plugins report damaged data as whatever their parsing runs into (OSError, SyntaxError, ValueError,
    # IndexError, struct.error, EOFError, ...), so every failure to decode is reported as one unreadable image.
    except Exception as error:  # noqa: BLE001
        raise unreadable(f"{type(error).__name__}: {error}") from error
    return _as_rgb(image, f"{argument}: {name!r}")


def _as_rgb(image: Image.Image, described: str) -> Image.Image:
    """Convert a decoded image to 8-bit RGB by its mode's bit depth and value range (see `load_rgb_image`)."""
    if image.width == 0 or image.height == 0:
        raise UnreadableImageError(f"{described} has no pixels ({image.width}x{image.height}).", reason="no pixels")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > _SIXTEEN_BIT_MAX:
            reason = (
                f"PIL mode {mode!r} with values from {low} to {high}, outside the 16-bit range 0..65535 in which "
                f"integer images are read"
            )
            raise UnreadableImageError(
                f"{described} has {reason}; scale it to 0..255 yourself and pass a uint8 array or an 8-bit image.",
                reason=reason,
            )
        # 65535 / 255 = 257 exactly: the 16-bit scale maps onto the 8-bit one with the mean preserved.
        return Image.fromarray(np.rint(values.astype(np.float32) / 257.0).astype(np.uint8)).convert("RGB")
    if mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            finite = values[np.isfinite(values)]
            span = f"from {finite.min():g} to {finite.max():g}" if finite.size else "none finite"
            nan = ", and NaN or infinite values" if finite.size < values.size else ""
            reason = f"PIL mode 'F' (32-bit float) with values {span}{nan}; float images are read in [0, 1]"
            raise UnreadableImageError(
                f"{described} has {reason}. Scale it to [0, 1] (or to a uint8 array) first.", reason=reason
            )
        return Image.fromarray(np.rint(values * 255.0).astype(np.uint8)).convert("RGB")
    if mode not in _EIGHT_BIT_MODES:
        reason = f"PIL mode {mode!r}, which has no defined reading as 8-bit RGB"
        raise UnreadableImageError(
            f"{described} has {reason}; convert it yourself (e.g. image.convert('RGB')) and pass the result.",
            reason=reason,
        )
    if mode == "La":
        image = image.convert("LA")  # PIL converts premultiplied greyscale only to its plain form
    elif mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb_image(image: ImageLike, argument: str = "images") -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image, a uint8 numpy array or a local file path.

    How each kind of picture is read:

    - 8-bit modes convert as PIL converts them: greyscale, RGBA/LA (alpha dropped), palette, CMYK, YCbCr, LAB, HSV.
    - 16-bit greyscale (modes ``I;16``, ``I;16B``, ..., and ``I``, PIL's mode for 16-bit PPM/PGM data) is scaled by
      its bit depth, 0..65535 to 0..255; a mode ``I`` image with values outside 0..65535 is refused.
    - 32-bit float greyscale (mode ``F``, e.g. a float TIFF) in [0, 1] is scaled by 255; other values are refused.
    - Files are decoded completely (a damaged one fails here, not later) and turned upright by their EXIF
      orientation, as `datasets.Image` does for training images; so are PIL images that carry an orientation.

    Raises:
        FileNotFoundError: no file at the path.
        UnreadableImageError: (a `ValueError`) undecodable data, a decompression bomb, an empty image or a mode or
            value range refused above.
        ValueError: a URL (this function reads local files; the pipelines fetch http(s) URLs) or a numpy array that
            is not uint8 with shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
        TypeError: any other kind of input.

    Every message starts with ``argument`` and names the file.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            if URL_SCHEME.match(str(path)):
                raise ValueError(
                    f"{argument}: {path!r} is a URL; MuSEProcessor reads local files, PIL images and uint8 numpy "
                    f"arrays (the multimodal pipelines also fetch http(s):// URLs). Download the image first."
                )
            raise FileNotFoundError(f"{argument}: no image file at {path!r}.")
        return decode_image(path, path, argument)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(
                f"{argument}: numpy images must be uint8 arrays of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                f"got dtype {image.dtype} and shape {image.shape}. Scale other data to 0..255 first; 16-bit or [0, 1] "
                f"float greyscale may also be passed as Image.fromarray(array)."
            )
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        return _as_rgb(image, f"{argument}: the numpy array")
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"{argument}: expected a PIL image, a uint8 numpy array or a local file path, got {type(image).__name__}."
        )
    described = f"{argument}: the PIL image"
    try:
        image.load()
    # A lazily opened image decodes here; see decode_image for why any exception means undecodable data.
    except Exception as error:  # noqa: BLE001
        reason = f"{type(error).__name__}: {error}"
        raise UnreadableImageError(
            f"{described} cannot be decoded ({reason}); if it was opened from a file, load it (image.load()) while "
            f"the file is open, or pass the path instead.",
            reason=reason,
        ) from error
    return _as_rgb(_upright(image), described)


@dataclass(frozen=True)
class TextReport:
    """What `MuSEProcessor` does to a set of posts' words (`MuSEProcessor.text_report`).

    Attributes:
        posts: the number of posts.
        words: the number of words, all posts together.
        unknown_words: words the tokenizer turned, wholly or in part, into its unknown token (the model cannot read
            what they say). Words made only of characters the tokenizer deletes (zero-width joiners and the like)
            stand in as the unknown token by design and are not counted.
        cut_words: words past ``max_length`` sub-word tokens, cut off (with their labels).
        cut_entities: labelled entities that lost at least one word to the cut; None when that cannot be told
            (no word labels, or label ids without the processor's ``label_names``).
        cut_posts: the 0-based positions of the posts that were cut.
    """

    posts: int
    words: int
    unknown_words: int
    cut_words: int
    cut_entities: int | None
    cut_posts: list[int]

    @property
    def unknown_share(self) -> float:
        """The share of words that became the unknown token (0.0 without words)."""
        return self.unknown_words / self.words if self.words else 0.0


def unknown_words_warning(report: TextReport, tokenizer_name: str, examples: Sequence[str] = ()) -> str | None:
    """The warning for a tokenizer that does not cover the text, or None unless more than
    `UNKNOWN_WORDS_WARNING_SHARE` of the report's words, and `UNKNOWN_WORDS_WARNING_MINIMUM` words at least, became the
    unknown token."""
    if report.unknown_share <= UNKNOWN_WORDS_WARNING_SHARE or report.unknown_words < UNKNOWN_WORDS_WARNING_MINIMUM:
        return None
    shown = f" (e.g. {', '.join(repr(word) for word in examples[:_LISTED])})" if examples else ""
    return (
        f"{report.unknown_words} of {report.words} words ({report.unknown_share:.0%}) became the tokenizer's unknown "
        f"token{shown}, so the model cannot read them: the tokenizer ({tokenizer_name!r}) does not cover this text's "
        f"script. Use a text encoder whose tokenizer does, with its processor (e.g. bert-base-chinese for Chinese "
        f"such as MT-Product; run_mner.py: --text_model_name_or_path)."
    )


def _count_entities_cut(names: list[str], kept: int) -> int:
    """Entities (BIO tags) with at least one word at or after position ``kept``."""
    return sum(
        name.startswith("B-") or (name.startswith("I-") and (position == kept or names[position - 1] == "O"))
        for position, name in enumerate(names[kept:], start=kept)
    )


@dataclass(frozen=True)
class _PostCut:
    position: int
    words: list[str]
    kept: int
    entities: int | None


@dataclass(frozen=True)
class _TextAnalysis:
    report: TextReport
    cuts: list[_PostCut]
    unknown_examples: list[str]
    labelled: bool


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
    def from_text_vision_pretrained(
        cls,
        text_model_name_or_path: str,
        vision_model_name_or_path: str,
        *,
        max_length: int = 64,
        label_names: list[str] | None = None,
        image_size: int | None = None,
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
        """
        from transformers import AutoTokenizer

        from .image_encoder import resolve_vision_tower, tower_image_processor

        tower = resolve_vision_tower(vision_model_name_or_path)
        image_processor = tower_image_processor(tower, image_size)
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
        return cls(image_processor, tokenizer, max_length=max_length, label_names=label_names)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "token_type_ids", "pixel_values", "decoder_pixel_values", "word_start_mask"]

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        text: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        word_labels: Sequence[int | str] | Sequence[Sequence[int | str]] | None = None,
        is_split_into_words: bool = False,
        padding: Literal["longest", "max_length"] = "longest",
        return_tensors: str | None = None,
        warn: bool = True,
        **kwargs: Any,
    ) -> BatchFeature:
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

        Returns:
            A `BatchFeature` with `input_ids`, `attention_mask` (and `token_type_ids` when the tokenizer has
            them), `word_start_mask`, `labels` (with `word_labels`), `pixel_values` and
            `decoder_pixel_values` (with `images`).

        Errors name the argument and the post's 0-based position (``images[3]``, ``text[2]``, ``post 5``).
        """
        if kwargs:
            raise TypeError(f"MuSEProcessor got unexpected arguments: {sorted(kwargs)}.")
        if text is None and images is None:
            raise ValueError("MuSEProcessor needs text=..., images=... or both.")
        data: dict[str, Any] = {}
        batch_size = None
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
        return BatchFeature(data, tensor_type=return_tensors)

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
            return TextReport(0, 0, 0, 0, None if word_labels is None or self.label_names is None else 0, [])
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
                cuts.append(_PostCut(index, post_words, kept, self._entities_cut(label_ids, index, kept)))
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
        return _count_entities_cut([self.label_names[label] for label in label_ids[index]], kept)

    def _analysis(
        self, words: list[list[str]], pieces: dict[str, list[int]], cuts: list[_PostCut], labelled: bool
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
        return _TextAnalysis(report, cuts, examples[:_LISTED], labelled)

    def _warn_about_text(self, analysis: _TextAnalysis) -> None:
        coverage = unknown_words_warning(analysis.report, self.tokenizer.name_or_path, analysis.unknown_examples)
        if coverage is not None:
            logger.warning(coverage)
        if analysis.cuts:
            logger.warning(self._truncation_warning(analysis))

    def _truncation_warning(self, analysis: _TextAnalysis) -> str:
        def what_was_cut(cut: _PostCut) -> str:
            cut_count = len(cut.words) - cut.kept
            text = f"its last {cut_count} of {len(cut.words)} words were cut (from {cut.words[cut.kept]!r} on)"
            if cut.entities is not None:
                return text + f", {cut.entities} labelled entities among them"
            if analysis.labelled:
                return text + " with their labels (pass label_names to count the entities cut)"
            return text

        limit = f"max_length={self.max_length} sub-word tokens"
        cuts = analysis.cuts
        if len(cuts) == 1:
            return f"Post {cuts[0].position} is longer than {limit}: {what_was_cut(cuts[0])}."
        listed = "; ".join(f"post {cut.position}: {what_was_cut(cut)}" for cut in cuts[:_LISTED])
        more = f"; and {len(cuts) - _LISTED} more posts" if len(cuts) > _LISTED else ""
        return f"{len(cuts)} of {analysis.report.posts} posts are longer than {limit}: {listed}{more}."

    @staticmethod
    def _as_image_list(images: Any) -> list[ImageLike]:
        if isinstance(images, (Image.Image, np.ndarray, str, os.PathLike)):
            return [images]
        if isinstance(images, Sequence):
            return list(images)
        raise TypeError(
            f"images: expected a PIL image, a uint8 numpy array, a file path or a list of them, got "
            f"{type(images).__name__}."
        )

    def _encode_images(self, images: list[ImageLike]) -> dict[str, Any]:
        rgb = [load_rgb_image(image, argument=f"images[{index}]") for index, image in enumerate(images)]
        pixel_values = self.image_processor(images=rgb, return_tensors="np")["pixel_values"]
        size = self.decoder_image_size
        small = np.stack([np.asarray(image.resize((size, size), Image.Resampling.BOX)) for image in rgb])
        decoder_pixel_values = (small.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) * 2.0 - 1.0
        return {"pixel_values": pixel_values, "decoder_pixel_values": decoder_pixel_values}
