"""`transformers` pipelines for MuSE: ``multimodal-ner`` and ``multimodal-sentiment``.

Importing `modeling_muse` registers both tasks, so a checkpoint folder holding a MuSE model and its
`MuSEProcessor` (``model.save_pretrained(folder)`` and ``processor.save_pretrained(folder)``) loads with no
other argument:

```python
>>> import modeling_muse  # registers the tasks
>>> from transformers import pipeline
>>> ner = pipeline("multimodal-ner", model="path/to/folder", device="cpu")
>>> ner({"text": "Messi arrives in Paris", "image": "photo.jpg"})
[{'entity_group': 'PER', 'score': 0.98, 'word': 'Messi', 'start': 0, 'end': 5}, ...]
>>> sentiment = pipeline("multimodal-sentiment", model="path/to/other/folder")
>>> sentiment([{"text": "what a day", "image": image}, ...], batch_size=16, top_k=None)
```

A post is ``{"text": ..., "image": ...}``; call a pipeline on one post or on a list of posts (`batch_size` batches
the model calls; results do not depend on it). An empty list gives an empty list. Also:

- the keyword form ``ner(text=..., image=...)``: one post; with lists for both (one picture per text), the posts;
- a `datasets.Dataset` or `datasets.IterableDataset`: its rows are posts of its ``text_column`` (default: the
  column the training scripts read, ``"tokens"`` then ``"text"`` for NER, ``"text"`` for sentiment) and its
  ``image_column`` (default ``"image"``; a dataset without one needs ``allow_missing_image=True``), as the scripts'
  ``--text_column_name`` and ``--image_column_name`` name them. Other columns (labels, ids) are left alone;
- a generator, an iterator or a torch `Dataset` (transformers' `KeyDataset` of a column of posts): each item is a
  post, or a row read by the ``text_column=`` and ``image_column=`` given.

A dataset, a generator or an iterator streams: the call returns an iterator whose results come in the input's order
while the inputs are read ``batch_size`` at a time (transformers' `Pipeline` machinery), so a collection larger
than memory can be tagged.

- ``text``: the raw post (`str`, split on whitespace, as the datasets are) or its words (`list[str]`).
- ``image``: a PIL image, a uint8 numpy array, a local file path, an image file's bytes, an ``http(s)://`` URL, or
  `datasets`' storage form of an image ``{"bytes": ..., "path": ...}`` (an ``Image(decode=False)`` value): its bytes
  when it has them, else its ``path`` as a local file path (never fetched, even if it reads like a URL). A
  `datasets.Image` column is read in this form, so its pictures pass the limits below.
  Pictures are read as `load_rgb_image` reads them (16-bit and [0, 1] float greyscale scaled to 8 bits, EXIF
  orientation applied), and refused before decoding if they would take more than ``max_decoded_bytes`` (128 MiB by
  default, see `decode_image`). A URL is fetched within ``timeout`` seconds all told (10 by default: a deadline for
  the whole download, not per read) and at most ``max_image_bytes`` bytes (20 MiB by default), from public addresses
  only (see `modeling_muse.url_fetch`): ``allow_private_urls=True`` also fetches from private, loopback and
  link-local addresses, for pictures served on your own network. ``total_timeout`` bounds the time all the URL images
  of one call take together (default: no bound beyond each one's ``timeout``; for a generator or dataset input, or
  with DataLoader workers, it applies per post). Other URL schemes are refused.

MuSE fuses text with an image, so a post without a usable image is an error unless the caller passes
``allow_missing_image=True``: then a post with no image, or with one that cannot be obtained or read (a missing
file, a failed, slow or oversized download, undecodable data, a decompression bomb, an unsupported pixel format),
gets the plain 224x224 mid-grey placeholder that the dataset builders use for missing images, and the call logs ONE
warning that counts those posts and says why each was replaced. So a list of 10,000 posts is not lost to one broken
picture. Posts that are malformed (not a mapping, no text, an image of an unsupported type or URL scheme) are errors
either way.

Errors about a post of a list start with its 0-based position (``post 3: image: ...``). Warnings (placeholders,
posts cut at the model's ``max_text_length``, a tokenizer that turns many words into its unknown token) come once per
call for a list or a single post, and per post for a generator or dataset, whose results stream.

``return_exchange=True`` adds, per post, what the CrossTransformer exchanged in each exchange layer (see
`MuSEPipeline.postprocess`); `modeling_muse.visualize.draw_exchange` draws it.

``return_image_effect=True`` also runs each post with the placeholder picture in place of its own (the grey picture
a post without one gets, in training and with ``allow_missing_image=True``) and says what the prediction is without
the picture: per entity for NER, for the label for sentiment (see each pipeline's docs for the output).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import get_worker_info
from transformers import Pipeline

from .entities import PostText, WordAggregation, aggregate_word_tags
from .heads import WordPositions
from .image_input import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_TIMEOUT,
    UnreadableImageError,
    is_http_url,
    load_post_image,
    placeholder_image,
)
from .pipeline_inputs import (
    CallNotes,
    ListedPost,
    Placeholder,
    TextNote,
    dataset_posts,
    keyword_posts,
    listed_posts,
    stored_image,
)
from .processing_muse import MuSEProcessor

__all__ = ["MultimodalNERPipeline", "MultimodalSentimentPipeline", "MuSEPipeline"]

# What MultimodalSentimentPipeline's function_to_apply may name, as transformers' ClassificationFunction.
_SCORE_FUNCTIONS = ("softmax", "sigmoid", "none")

logger = logging.getLogger(__name__)

# What allow_missing_image=True replaces by the placeholder: an image that names a picture which cannot be obtained
# or read. Malformed posts (wrong types, unsupported URL schemes) stay errors.
_IMAGE_NOT_OBTAINED = (FileNotFoundError, ConnectionError, UnreadableImageError)
# The notes of the calls running in each thread, by pipeline: per thread, so that concurrent calls (a web server's
# request threads) keep their counts apart; module-level, so that a pipeline stays picklable for DataLoader workers.
_notes_of_calls = threading.local()
# The prefix of the model outputs of the posts with the placeholder picture (return_image_effect=True).
_WITHOUT_IMAGE = "without_image_"
# What the model reads; the processor's decoder_pixel_values only feed a training-time regularizer.
_MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "word_start_mask", "pixel_values")


class MuSEPipeline(Pipeline):
    """What the MuSE pipelines share: reading posts, running the model, reporting the exchange.

    The `MuSEProcessor` is loaded from the checkpoint folder (or pass ``processor=``).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    # The text columns a `datasets.Dataset` is read from when text_column= is not given, first found first: what the
    # training scripts read by default (--text_column_name).
    _dataset_text_columns: tuple[str, ...] = ("text",)

    def __init__(self, *args: Any, torch_compile: bool | Mapping[str, Any] = False, **kwargs: Any):
        """``torch_compile=True`` (or a dict of `torch.compile` options) compiles the model's evaluation forward and
        the NER scores' CRF marginals in place, with ``fullgraph=True, dynamic=True`` (`compile_for_inference`):
        the first calls compile (minutes on a CPU), later ones reuse the code for any batch size and text length.
        Results are those of the eager model up to floating-point rounding."""
        if not isinstance(torch_compile, (bool, Mapping)):
            raise TypeError(f"torch_compile: expected a bool or a dict of torch.compile options, got {torch_compile!r}.")
        super().__init__(*args, **kwargs)
        # By name, not isinstance: code loaded with trust_remote_code gives every file its own module, so a processor
        # loaded through AutoProcessor and the MuSEProcessor this file imports can be distinct classes.
        if type(self.processor).__name__ != MuSEProcessor.__name__:
            raise TypeError(
                f"processor: MuSE pipelines need a MuSEProcessor, got {type(self.processor).__name__}. Load the "
                f"pipeline from a folder holding the model and its processor (processor.save_pretrained(folder)), "
                f"or pass processor=MuSEProcessor.from_pretrained(folder)."
            )
        if self.processor.max_length != self.model.config.max_text_length:
            raise ValueError(
                f"processor: its max_length={self.processor.max_length} differs from the model's max_text_length="
                f"{self.model.config.max_text_length}; use the processor saved with this model."
            )
        # from_pretrained returns an eval-mode model, but a model object handed in may be training: dropout
        # and the training-only regularizer decoders must stay off.
        self.model.eval()
        if torch_compile is not False:
            if not isinstance(self.model, torch.nn.Module):
                raise ValueError(
                    f"torch_compile: compiles a PyTorch model, and this pipeline runs a {type(self.model).__name__}."
                )
            from .compilation import compile_for_inference

            compile_for_inference(self.model, None if torch_compile is True else torch_compile)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """`Pipeline.save_pretrained` (the model, its code and the pipelines' entries), plus the `MuSEProcessor`,
        whose ``max_length`` and ``label_names`` transformers' own method leaves out (it saves only the tokenizer
        and the image processor), so that ``pipeline(task, model=save_directory)`` rebuilds this pipeline."""
        if os.path.isfile(save_directory):
            raise NotADirectoryError(
                f"save_directory: {save_directory} is a file; pass a folder to save the pipeline in."
            )
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)

    def __call__(
        self,
        inputs: Any = None,
        *,
        text: str | list[str] | list[list[str]] | None = None,
        image: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Run the pipeline on one post ``{"text": ..., "image": ...}``, a list of posts, a `datasets.Dataset` (or
        `datasets.IterableDataset`), a generator or a torch `Dataset` of posts (e.g. transformers' `KeyDataset`), or
        on the keyword form ``pipe(text=..., image=...)`` (see the module docs)."""
        if text is not None or image is not None:
            inputs = keyword_posts(inputs, text, image)
        elif inputs is None:
            raise TypeError(
                "inputs: nothing to run on; pass a post {'text': ..., 'image': ...}, a list of them, a dataset, or "
                "text=... and image=..."
            )
        datasets = sys.modules.get("datasets")
        if datasets is not None and isinstance(inputs, (datasets.Dataset, datasets.IterableDataset)):
            inputs, kwargs = dataset_posts(inputs, kwargs, self._preprocess_params, self._dataset_text_columns)
        if isinstance(inputs, list) and not inputs:
            return []
        inputs = listed_posts(inputs)
        if not isinstance(inputs, (Mapping, list)):
            # A generator or dataset streams its results, lazily and in order, through the base class's DataLoader;
            # its notes are logged per post as they come.
            return super().__call__(inputs, **kwargs)
        notes = CallNotes(posts=len(inputs) if isinstance(inputs, list) else 1)
        _notes_of_calls.by_pipeline = {**getattr(_notes_of_calls, "by_pipeline", {}), id(self): notes}
        try:
            results = super().__call__(inputs, **kwargs)
        finally:
            del _notes_of_calls.by_pipeline[id(self)]
        for message in notes.warnings(self.processor):
            logger.warning(message)
        return results

    def _call_notes(self) -> CallNotes | None:
        """The notes of the call on a list or a single post that runs in this thread; None in a stream, or in a
        DataLoader worker process, whose notes would not come back."""
        notes = getattr(_notes_of_calls, "by_pipeline", {}).get(id(self))
        return None if get_worker_info() is not None else notes

    def _note(self, record: Placeholder | TextNote) -> None:
        """Keep what a post reports for its call's single warning of each kind; outside a call on a list or a single
        post, log it now."""
        notes = self._call_notes()
        if notes is None:
            for message in CallNotes.of(record).warnings(self.processor):
                logger.warning(message)
        else:
            notes.add(record)

    def _load_image(self, image: Any, argument: str, timeout: float, total_timeout: float | None, **limits: Any) -> Any:
        """`load_post_image`, with a URL's download held to what is left of the call's ``total_timeout``."""
        notes = self._call_notes()
        if total_timeout is None or not is_http_url(image):
            return load_post_image(image, timeout, argument=argument, **limits)
        if notes is None:
            return load_post_image(image, min(timeout, total_timeout), argument=argument, **limits)
        if notes.download_seconds_left is None:
            notes.download_seconds_left = total_timeout
        started = time.monotonic()
        try:
            return load_post_image(image, min(timeout, notes.download_seconds_left), argument=argument, **limits)
        finally:
            notes.download_seconds_left -= time.monotonic() - started

    def _sanitize_common(
        self,
        allow_missing_image: bool | None = None,
        timeout: float | None = None,
        total_timeout: float | None = None,
        max_image_bytes: int | None = None,
        max_decoded_bytes: int | None = None,
        allow_private_urls: bool | None = None,
        return_exchange: bool | None = None,
        return_image_effect: bool | None = None,
        text_column: str | None = None,
        image_column: str | None = None,
    ) -> tuple[dict, dict, dict]:
        """The call arguments both tasks take (see the module docs)."""
        preprocess_params: dict[str, Any] = {}
        for name, value in (("text_column", text_column), ("image_column", image_column)):
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{name}: expected a column name (a non-empty str), got {value!r}.")
                preprocess_params[name] = value
        forward_params: dict[str, Any] = {}
        postprocess_params: dict[str, Any] = {}
        if allow_missing_image is not None:
            preprocess_params["allow_missing_image"] = bool(allow_missing_image)
        for name, value in (("timeout", timeout), ("total_timeout", total_timeout)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}.")
                preprocess_params[name] = float(value)
        for name, value in (("max_image_bytes", max_image_bytes), ("max_decoded_bytes", max_decoded_bytes)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name}: expected a positive int, got {value!r}.")
                preprocess_params[name] = value
        if allow_private_urls is not None:
            if not isinstance(allow_private_urls, bool):
                raise ValueError(f"allow_private_urls: expected True or False, got {allow_private_urls!r}.")
            preprocess_params["allow_private_urls"] = allow_private_urls
        if return_exchange is not None:
            forward_params["return_exchange"] = bool(return_exchange)
            postprocess_params["return_exchange"] = bool(return_exchange)
        if return_image_effect is not None:
            forward_params["return_image_effect"] = bool(return_image_effect)
            postprocess_params["return_image_effect"] = bool(return_image_effect)
        return preprocess_params, forward_params, postprocess_params

    def preprocess(
        self,
        inputs: Mapping[str, Any] | ListedPost,
        allow_missing_image: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        total_timeout: float | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_decoded_bytes: int | None = None,
        allow_private_urls: bool = False,
        text_column: str | None = None,
        image_column: str | None = None,
    ) -> dict[str, Any]:
        position = None
        if isinstance(inputs, ListedPost):
            position, inputs = inputs.position, inputs.post
        where = "" if position is None else f"post {position}: "
        if not isinstance(inputs, Mapping):
            one_column = (
                " A KeyDataset passes one column only: pass the dataset itself, with text_column= and image_column=."
                if isinstance(inputs, (str, list))
                else ""
            )
            raise TypeError(
                f"{where}inputs: expected a post {{'text': ..., 'image': ...}} or a list of them, got "
                f"{type(inputs).__name__}.{one_column}"
            )
        if text_column is None and image_column is None:
            unknown = sorted(set(inputs) - {"text", "image"}, key=str)
            if unknown:
                raise ValueError(
                    f"{where}inputs: unknown keys {unknown}; a post has the keys 'text' and 'image' (for rows of "
                    f"other columns, name them with text_column= and image_column=)."
                )
        text_column, image_column = text_column or "text", image_column or "image"
        if text_column not in inputs:
            raise ValueError(
                f"{where}{text_column}: the post has no {text_column!r} (its keys: {sorted(inputs, key=str)}); name "
                f"the text's key with text_column=<key>."
            )
        post = PostText.from_input(inputs[text_column], argument=f"{where}{text_column}")
        image = stored_image(inputs.get(image_column), f"{where}{image_column}")
        if image is None:
            if not allow_missing_image:
                raise ValueError(
                    f"{where}image: the post has no image, and MuSE fuses text with an image. Pass {{'text': ..., "
                    f"'image': <PIL image, numpy array, path or URL>}}, or call the pipeline with "
                    f"allow_missing_image=True to use a grey placeholder image (the prediction then rests on the text)."
                )
            self._note(Placeholder(position, f"{where}image: the post has no image."))
            image = placeholder_image()
        else:
            try:
                image = self._load_image(
                    image,
                    f"{where}image",
                    timeout,
                    total_timeout,
                    max_image_bytes=max_image_bytes,
                    max_decoded_bytes=max_decoded_bytes,
                    allow_private_urls=allow_private_urls,
                )
            except _IMAGE_NOT_OBTAINED as error:
                if not allow_missing_image:
                    raise
                self._note(Placeholder(position, str(error)))
                image = placeholder_image()
        encoded, report = self.processor(
            images=[image], text=[post.words], return_tensors="pt", warn=False, return_text_report=True
        )
        self._note(TextNote(position, post, report))
        model_inputs: dict[str, Any] = {name: encoded[name] for name in _MODEL_INPUT_NAMES if name in encoded}
        # In the model's dtype (bf16 or fp16 when loaded with dtype=), as transformers' image pipelines send them:
        # half the bytes to copy to the device.
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)
        model_inputs["post"] = post
        return model_inputs

    @abstractmethod
    def _head_outputs(self, outputs: Any, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The task's per-post tensors, batch first (the first one is how the base class counts the batch)."""

    def _placeholder_pixel_values(self, like: torch.Tensor) -> torch.Tensor:
        """The processor's pixel values of the placeholder picture, one per post of ``like`` (a batch of
        ``pixel_values``): what a post without a picture looks like to the model in training (the dataset builders
        store this placeholder) and in the pipelines (allow_missing_image=True)."""
        if getattr(self, "_placeholder_pixels", None) is None:
            self._placeholder_pixels = self.processor.placeholder_pixel_values()
        pixels = self._placeholder_pixels.to(device=like.device, dtype=like.dtype)
        return pixels.expand(like.shape[0], *pixels.shape[1:])

    def _forward(
        self, model_inputs: dict[str, Any], return_exchange: bool = False, return_image_effect: bool = False
    ) -> dict[str, Any]:
        # "post" is a PostText (one post) or a list of them (a batch); it passes through untouched and the base
        # class hands each post's own entry to postprocess.
        post = model_inputs.pop("post")
        outputs = self.model(
            **model_inputs, output_cls_attentions=return_exchange, output_exchange_masks=return_exchange
        )
        result = self._head_outputs(outputs, model_inputs)
        if return_image_effect:
            # The same posts with the grey placeholder that stands for a missing picture (docs/design.md, section 7),
            # in the same batch: the prediction without the picture.
            without = {**model_inputs, "pixel_values": self._placeholder_pixel_values(model_inputs["pixel_values"])}
            blind = self._head_outputs(self.model(**without), without)
            result.update({f"{_WITHOUT_IMAGE}{name}": value for name, value in blind.items()})
        if return_exchange:
            exchange_layers = [layer - 1 for layer in self.model.config.exchange_layers]
            result.update(
                input_ids=model_inputs["input_ids"],
                attention_mask=model_inputs["attention_mask"],
                word_start_mask=model_inputs["word_start_mask"],
                # Stacked per post as (exchange layer, position); position 0, the CrossTransformer's own cls, is
                # dropped from the attention rows so that they align with the masks.
                text_exchange_masks=torch.stack(outputs.text_exchange_masks, dim=1),
                image_exchange_masks=torch.stack(outputs.image_exchange_masks, dim=1),
                text_cls_attentions=torch.stack([outputs.text_cls_attentions[i][:, 1:] for i in exchange_layers], 1),
                image_cls_attentions=torch.stack([outputs.image_cls_attentions[i][:, 1:] for i in exchange_layers], 1),
            )
        result["post"] = post
        return result

    def _exchange_info(self, model_outputs: dict[str, Any], post: PostText) -> dict[str, Any]:
        """What the CrossTransformer exchanged in one post (the ``exchange`` entry of ``return_exchange=True``).

        Returns a dict with
            - ``grid_size``: P, the image tokens form a P x P grid in row-major order;
            - ``tokens``: the post's sub-word tokens (special tokens included, padding excluded);
            - ``token_words``: per token, the index of its word in ``post.words``, or None for special tokens;
            - ``layers``: per exchange layer, a dict with ``layer`` (1-based CrossTransformer layer),
              ``exchanged_tokens`` (``position`` in ``tokens``, ``token``, ``word``), ``exchanged_patches``
              (``(row, col)`` pairs), ``text_cls_attention`` (one value per token) and ``image_cls_attention``
              (P x P). The attention rows are the cls query's head-averaged attention on which MuSE picks the
              least-attended tokens to exchange; the cls's attention to itself is left out, so they sum to less
              than 1.
        """
        num_tokens = int(model_outputs["attention_mask"][0].sum())
        input_ids = model_outputs["input_ids"][0, :num_tokens].tolist()
        starts = model_outputs["word_start_mask"][0, :num_tokens].tolist()
        tokens = self.tokenizer.convert_ids_to_tokens(input_ids)
        # The tokenizer's own additions ([CLS], [SEP]) belong to no word; [UNK] may stand for a word.
        added = set(self.tokenizer.all_special_ids) - {self.tokenizer.unk_token_id}
        token_words: list[int | None] = []
        word = -1
        for token_id, start in zip(input_ids, starts):
            word += start
            token_words.append(None if (token_id in added and not start) or word < 0 else word)
        grid = self.model.config.image_grid_size
        layers = []
        for index, layer in enumerate(self.model.config.exchange_layers):
            text_mask = model_outputs["text_exchange_masks"][0, index, :num_tokens]
            image_mask = model_outputs["image_exchange_masks"][0, index]
            layers.append(
                {
                    "layer": layer,
                    "exchanged_tokens": [
                        {
                            "position": position,
                            "token": tokens[position],
                            "word": None if token_words[position] is None else post.words[token_words[position]],
                        }
                        for position in text_mask.nonzero().flatten().tolist()
                    ],
                    "exchanged_patches": [divmod(patch, grid) for patch in image_mask.nonzero().flatten().tolist()],
                    "text_cls_attention": model_outputs["text_cls_attentions"][0, index, :num_tokens].tolist(),
                    "image_cls_attention": model_outputs["image_cls_attentions"][0, index].view(grid, grid).tolist(),
                }
            )
        return {"grid_size": grid, "tokens": tokens, "token_words": token_words, "layers": layers}


class MultimodalNERPipeline(MuSEPipeline):
    """Multimodal named entity recognition with `MuSEForTokenClassification` (task ``"multimodal-ner"``).

    Call arguments (also accepted by `pipeline(...)`):
        aggregation_strategy (`str`, defaults to `"simple"`): ``"none"``, ``"simple"`` or ``"first"``, see
            `aggregate_word_tags`.
        return_exchange (`bool`, defaults to `False`): return ``{"entities": [...], "exchange": {...}}`` per post
            instead of the entity list (see `MuSEPipeline._exchange_info`).
        return_image_effect (`bool`, defaults to `False`): return ``{"entities": [...], "only_without_image":
            [...]}`` per post: each entity gets ``"without_image"``, the entity the model finds on the same words
            (same ``start`` and ``end``) with the placeholder picture instead of the post's, as ``{"entity_group"
            (or "entity"): ..., "score": ...}`` (the type may differ), or None where it finds none there;
            ``only_without_image`` lists, in the entity format, what it finds with the placeholder on words where
            the picture's prediction has no entity of the same span. Combines with ``return_exchange``.
        text_column, image_column (`str`): the columns of a dataset's rows to read (see the module docs).
        allow_missing_image (`bool`, defaults to `False`), timeout (`float`, defaults to 10), total_timeout
            (`float`, defaults to none), max_image_bytes (`int`, defaults to 20 MiB), max_decoded_bytes (`int`,
            defaults to 128 MiB), allow_private_urls (`bool`, defaults to `False`): see the module docs.

    Returns, per post, a list of entities as `TokenClassificationPipeline` does: ``entity_group`` (``entity`` with
    ``"none"``), ``score``, ``word``, ``start``, ``end``. ``start``/``end`` are character offsets into the post's
    text; for a word-list input, into ``" ".join(words)``. ``score`` is the CRF's marginal probability of the
    predicted (Viterbi) tag at each word, from the forward-backward algorithm (`CRFTaggingHead.tag_confidences`); a
    multi-word entity gets the mean of its words' scores. Words cut by the model's ``max_text_length`` get no tag.
    """

    # The NER script reads "tokens" (word lists) by default; a column of raw texts is read too.
    _dataset_text_columns = ("tokens", "text")

    def _sanitize_parameters(
        self, aggregation_strategy: str | WordAggregation | None = None, **common: Any
    ) -> tuple[dict, dict, dict]:
        preprocess_params, forward_params, postprocess_params = self._sanitize_common(**common)
        if aggregation_strategy is not None:
            postprocess_params["aggregation_strategy"] = WordAggregation(aggregation_strategy)
        return preprocess_params, forward_params, postprocess_params

    def _head_outputs(self, outputs: Any, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        words = WordPositions(model_inputs["word_start_mask"])
        word_tags = words.gather(outputs.predicted_tag_ids)
        word_scores = self.model.tagger.tag_confidences(outputs.logits, words, outputs.predicted_tag_ids)
        return {"word_tags": word_tags, "word_scores": word_scores, "word_counts": words.counts}

    def _entities(
        self, model_outputs: dict[str, Any], aggregation_strategy: WordAggregation, prefix: str = ""
    ) -> list[dict[str, Any]]:
        count = int(model_outputs[f"{prefix}word_counts"][0])
        id2label = self.model.config.id2label
        tags = [id2label[tag] for tag in model_outputs[f"{prefix}word_tags"][0, :count].tolist()]
        scores = model_outputs[f"{prefix}word_scores"][0, :count].tolist()
        return aggregate_word_tags(model_outputs["post"], tags, scores, aggregation_strategy)

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        aggregation_strategy: WordAggregation = WordAggregation.SIMPLE,
        return_exchange: bool = False,
        return_image_effect: bool = False,
    ) -> list[dict[str, Any]] | dict[str, Any]:
        entities = self._entities(model_outputs, aggregation_strategy)
        if not (return_exchange or return_image_effect):
            return entities
        result: dict[str, Any] = {"entities": entities}
        if return_image_effect:
            # Entities are matched by their words (the same start and end): the type may change without the picture.
            kind = "entity" if aggregation_strategy is WordAggregation.NONE else "entity_group"
            unmatched = {
                (entity["start"], entity["end"]): entity
                for entity in self._entities(model_outputs, aggregation_strategy, prefix=_WITHOUT_IMAGE)
            }
            for entity in entities:
                blind = unmatched.pop((entity["start"], entity["end"]), None)
                entity["without_image"] = None if blind is None else {kind: blind[kind], "score": blind["score"]}
            result["only_without_image"] = list(unmatched.values())
        if return_exchange:
            result["exchange"] = self._exchange_info(model_outputs, model_outputs["post"])
        return result


class MultimodalSentimentPipeline(MuSEPipeline):
    """Multimodal sentiment analysis with `MuSEForSequenceClassification` (task ``"multimodal-sentiment"``).

    Call arguments (also accepted by `pipeline(...)`):
        top_k (`int` or `None`): not given, each post gets its best ``{"label", "score"}``; an int gives the k best
            as a list, sorted by score; `None` gives all labels, sorted.
        function_to_apply (`str`, defaults to the model's): what turns the logits into scores, as in transformers'
            text-classification pipeline: ``"softmax"`` (probabilities over the labels; single-label
            classification), ``"sigmoid"`` (each label's own probability; ``config.problem_type ==
            "multi_label_classification"``, or one output without a problem type) or ``"none"`` (the raw value;
            ``"regression"``, e.g. sentiment intensity).
        return_exchange (`bool`, defaults to `False`): return ``{"prediction": ..., "exchange": {...}}`` per post.
        return_image_effect (`bool`, defaults to `False`): return ``{"prediction": ..., "without_image": ...,
            "image_effect": ...}`` per post: ``without_image`` is the prediction (in the same form, per ``top_k``)
            with the placeholder picture instead of the post's, and ``image_effect`` the score of the predicted
            (best) label minus that label's score without the picture: near +1 where the picture made the
            prediction, near 0 where it did not matter, negative where the picture lowered the winner's score.
            Combines with ``return_exchange``.
        text_column, image_column (`str`): the columns of a dataset's rows to read (see the module docs).
        allow_missing_image (`bool`, defaults to `False`), timeout (`float`, defaults to 10), total_timeout
            (`float`, defaults to none), max_image_bytes (`int`, defaults to 20 MiB), max_decoded_bytes (`int`,
            defaults to 128 MiB), allow_private_urls (`bool`, defaults to `False`): see the module docs.
    """

    def _sanitize_parameters(
        self, top_k: int | None | str = "", function_to_apply: Any = None, **common: Any
    ) -> tuple[dict, dict, dict]:
        preprocess_params, forward_params, postprocess_params = self._sanitize_common(**common)
        if function_to_apply is not None:
            # A name, or transformers' ClassificationFunction (whose values are these names).
            name = str(getattr(function_to_apply, "value", function_to_apply)).lower()
            if name not in _SCORE_FUNCTIONS:
                raise ValueError(
                    f"function_to_apply: expected one of {', '.join(_SCORE_FUNCTIONS)}, got {function_to_apply!r}."
                )
            postprocess_params["function_to_apply"] = name
        # "" (the default) means "not given", as in TextClassificationPipeline, because None asks for all labels.
        if top_k != "":
            if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"top_k: expected a positive int or None (all labels), got {top_k!r}.")
            postprocess_params["top_k"] = top_k
        return preprocess_params, forward_params, postprocess_params

    def _head_outputs(self, outputs: Any, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": outputs.logits.float()}

    def _default_function(self) -> str:
        """transformers' choice (`TextClassificationPipeline.postprocess`) by ``config.problem_type``."""
        config = self.model.config
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        top_k: int | None | str = "",
        return_exchange: bool = False,
        function_to_apply: str | None = None,
        return_image_effect: bool = False,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        function = function_to_apply or self._default_function()
        scores = self._scores(model_outputs["logits"][0], function)
        prediction = self._ranked(scores, top_k)
        if not (return_exchange or return_image_effect):
            return prediction
        result: dict[str, Any] = {"prediction": prediction}
        if return_image_effect:
            blind_scores = self._scores(model_outputs[f"{_WITHOUT_IMAGE}logits"][0], function)
            result["without_image"] = self._ranked(blind_scores, top_k)
            best = max(range(len(scores)), key=scores.__getitem__)
            result["image_effect"] = scores[best] - blind_scores[best]
        if return_exchange:
            result["exchange"] = self._exchange_info(model_outputs, model_outputs["post"])
        return result

    @staticmethod
    def _scores(logits: torch.Tensor, function: str) -> list[float]:
        if function == "softmax":
            logits = logits.softmax(dim=-1)
        elif function == "sigmoid":
            logits = logits.sigmoid()
        return logits.tolist()

    def _ranked(self, scores: list[float], top_k: int | None | str) -> dict[str, Any] | list[dict[str, Any]]:
        """The best label (``top_k`` not given), or the ``top_k`` best (all for None), sorted by score."""
        id2label = self.model.config.id2label
        ranked = sorted(
            ({"label": id2label[index], "score": score} for index, score in enumerate(scores)),
            key=lambda entry: entry["score"],
            reverse=True,
        )
        return ranked[0] if top_k == "" else ranked[:top_k]
