"""MuSE processor: text (+ word labels) and images -> model inputs.

`MuSEProcessor` pairs the text encoder's tokenizer with a stock image processor (resize to 224x224 and
normalise with the backbone's mean/std, spec section 1) and adds what MuSE needs beyond that:

- text truncated to at most ``max_length`` sub-word tokens, because MuSE fuses text position j with image token j
  and has ``max_length`` image tokens, and padded to the batch's longest post (padding changes nothing at real
  positions, so a shorter batch only saves work);
- ``word_start_mask``: 1 at each word's first sub-token, where the NER head reads its emissions;
- ``labels``: word labels placed at first sub-tokens, -100 elsewhere (the `transformers` convention);
- ``decoder_pixel_values``: a 32x32 copy of each image in [-1, 1] on the 8-bit grid, the target of the
  text-to-image regularizer (spec section 2).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from transformers import BatchFeature, ProcessorMixin

__all__ = ["PLACEHOLDER_COLOR", "PLACEHOLDER_SIZE", "MuSEProcessor", "load_rgb_image", "placeholder_image", "split_words_with_offsets"]

logger = logging.getLogger(__name__)

ImageLike = Image.Image | np.ndarray | str | os.PathLike

_WORD = re.compile(r"\S+")
PLACEHOLDER_SIZE = (224, 224)
PLACEHOLDER_COLOR = (128, 128, 128)


def placeholder_image() -> Image.Image:
    """The stand-in for a missing image, used alike by the dataset builders and the pipelines: 224x224, mid-grey."""
    return Image.new("RGB", PLACEHOLDER_SIZE, PLACEHOLDER_COLOR)


def split_words_with_offsets(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split a raw post on whitespace, as the datasets are tokenised, keeping each word's character span."""
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def load_rgb_image(image: ImageLike, argument: str = "images") -> Image.Image:
    """A PIL RGB image from a PIL image, a uint8 numpy array or a file path.

    Grayscale, RGBA/LA (alpha dropped), palette and CMYK images are converted to RGB. Errors name
    ``argument`` and, for files, the path.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{argument}: no image file at {path!r}.")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{argument}: {path!r} is not a readable image ({error}).") from error
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(
                f"{argument}: numpy images must be uint8 arrays of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                f"got dtype {image.dtype} and shape {image.shape}."
            )
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    elif not isinstance(image, Image.Image):
        raise TypeError(
            f"{argument}: expected a PIL image, a uint8 numpy array or a file path, got {type(image).__name__}."
        )
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


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
        vision_model_name: str,
        *,
        max_length: int = 64,
        label_names: list[str] | None = None,
        image_size: int = 224,
    ) -> MuSEProcessor:
        """The text encoder's tokenizer and a 224x224 image processor with the timm backbone's normalisation.

        Reads timm's pretrained configuration for the mean/std; downloads no weights.
        """
        import timm
        from transformers import AutoTokenizer, ViTImageProcessor

        pretrained_cfg = timm.models.get_pretrained_cfg(vision_model_name)
        mean = getattr(pretrained_cfg, "mean", None) or timm.data.IMAGENET_DEFAULT_MEAN
        std = getattr(pretrained_cfg, "std", None) or timm.data.IMAGENET_DEFAULT_STD
        image_processor = ViTImageProcessor(
            size={"height": image_size, "width": image_size}, image_mean=list(mean), image_std=list(std)
        )
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
        **kwargs: Any,
    ) -> BatchFeature:
        """Prepare a batch of posts for MuSE.

        Args:
            images: one image or a list, one per post: PIL images, uint8 numpy arrays or file paths.
            text: a raw post (`str`), a list of raw posts, or pre-split words: a list of word lists, or one word
                list with `is_split_into_words=True`. Raw posts are split on whitespace into words.
            word_labels: per post, one tag (id or name from `label_names`) per word.
            is_split_into_words: read a flat list of strings as the words of one post rather than a batch.
            padding: ``"longest"`` pads the text to the batch's longest post, ``"max_length"`` always to ``max_length``
                (fixed shapes); the model's outputs at real positions are the same either way.
            return_tensors: `"pt"` for PyTorch tensors, as for any `transformers` processor.

        Returns:
            A `BatchFeature` with `input_ids`, `attention_mask` (and `token_type_ids` when the tokenizer has
            them), `word_start_mask`, `labels` (with `word_labels`), `pixel_values` and
            `decoder_pixel_values` (with `images`).
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
            data.update(self._encode_text(words, word_labels, padding))
        if images is not None:
            image_list = self._as_image_list(images)
            if batch_size is not None and len(image_list) != batch_size:
                raise ValueError(f"images: got {len(image_list)} images for {batch_size} posts; give one image per post.")
            data.update(self._encode_images(image_list))
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def _as_word_lists(text: Any, is_split_into_words: bool) -> list[list[str]]:
        if isinstance(text, str):
            if is_split_into_words:
                raise ValueError("text: is_split_into_words=True needs a list of words, got a single string.")
            return [split_words_with_offsets(text)[0]]
        if not isinstance(text, Sequence) or not all(isinstance(t, (str, Sequence)) for t in text):
            raise TypeError(f"text: expected a string, a list of strings or a list of word lists, got {type(text).__name__}.")
        if is_split_into_words:
            if not all(isinstance(word, str) for word in text):
                raise TypeError("text: with is_split_into_words=True, text must be one list of word strings.")
            return [list(text)]
        if all(isinstance(post, str) for post in text):
            return [split_words_with_offsets(post)[0] for post in text]
        if all(not isinstance(post, str) and all(isinstance(word, str) for word in post) for post in text):
            return [list(post) for post in text]
        raise TypeError("text: mix of strings and word lists; give either raw posts or pre-split word lists.")

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

    def _replace_wordless_tokens(self, words: list[list[str]]) -> list[list[str]]:
        # A word made only of characters the tokenizer strips (zero-width joiners, control characters) yields no
        # sub-token and would silently lose its label and prediction; it stands in as the unknown token instead.
        vocabulary = sorted({word for post in words for word in post})
        if not vocabulary:
            return words
        pieces = self.tokenizer(vocabulary, add_special_tokens=False)["input_ids"]
        empty = {word for word, ids in zip(vocabulary, pieces) if not ids}
        if not empty:
            return words
        unknown = self.tokenizer.unk_token
        if unknown is None:
            raise ValueError(f"text: words {sorted(empty)!r} produce no tokens and the tokenizer has no unknown token.")
        return [[unknown if word in empty else word for word in post] for post in words]

    def _encode_text(self, words: list[list[str]], word_labels: Any, padding: str) -> dict[str, Any]:
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding: expected 'longest' or 'max_length', got {padding!r}.")
        label_ids = self._word_label_ids(word_labels, words) if word_labels is not None else None
        encoded = self.tokenizer(
            self._replace_wordless_tokens(words),
            is_split_into_words=True,
            padding=padding,
            truncation=True,
            max_length=self.max_length,
        )
        word_start_mask, labels = [], []
        for index, post_words in enumerate(words):
            word_ids = encoded.word_ids(index)
            starts = [
                int(word_id is not None and (position == 0 or word_ids[position - 1] != word_id))
                for position, word_id in enumerate(word_ids)
            ]
            word_start_mask.append(starts)
            kept = len({word_id for word_id in word_ids if word_id is not None})
            if kept < len(post_words):
                self._warn_truncation(index, post_words, kept, label_ids[index] if label_ids else None)
            if label_ids is not None:
                labels.append(
                    [label_ids[index][word_id] if start else -100 for word_id, start in zip(word_ids, starts)]
                )
        data = dict(encoded)
        data["word_start_mask"] = word_start_mask
        if label_ids is not None:
            data["labels"] = labels
        return data

    def _warn_truncation(self, index: int, words: list[str], kept: int, labels: list[int] | None) -> None:
        cut = len(words) - kept
        message = (
            f"Post {index} is longer than max_length={self.max_length} sub-word tokens: its last {cut} of "
            f"{len(words)} words were cut (from {words[kept]!r} on)"
        )
        if labels is not None and self.label_names is not None:
            names = [self.label_names[label] for label in labels]
            entities_cut = sum(
                name.startswith("B-") or (name.startswith("I-") and (position == kept or names[position - 1] == "O"))
                for position, name in enumerate(names[kept:], start=kept)
            )
            message += f", {entities_cut} labelled entities among them"
        elif labels is not None:
            message += " with their labels (pass label_names to count the entities cut)"
        logger.warning(message + ".")

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
