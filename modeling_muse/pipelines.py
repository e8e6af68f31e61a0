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
the model calls; results do not depend on it). An empty list gives an empty list.

- ``text``: the raw post (`str`, split on whitespace, as the datasets are) or its words (`list[str]`).
- ``image``: a PIL image, a uint8 numpy array, a local file path, an image file's bytes, or an ``http(s)://`` URL.
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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import get_worker_info
from transformers import Pipeline

from .entities import PostText, WordAggregation, aggregate_word_tags
from .heads import WordPositions
from .image_input import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_TIMEOUT,
    PLACEHOLDER_SIZE,
    UnreadableImageError,
    is_http_url,
    load_post_image,
    placeholder_image,
)
from .processing_muse import MuSEProcessor
from .reporting import PostCut, TextReport, placeholder_warning, truncation_warning, unknown_words_warning

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
# What the model reads; the processor's decoder_pixel_values only feed a training-time regularizer.
_MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "word_start_mask", "pixel_values")



@dataclass(frozen=True)
class _ListedPost:
    """A post of a list input with its 0-based position, which errors and warnings name."""

    position: int
    post: Any


@dataclass(frozen=True)
class _Placeholder:
    """A post that got the placeholder image (allow_missing_image=True), and why (a message naming the post)."""

    position: int | None
    reason: str


@dataclass(frozen=True)
class _TextNote:
    """What the processor did to a post's words."""

    position: int | None
    post: PostText
    report: TextReport


@dataclass
class _CallNotes:
    """What the posts of one call report, gathered into one warning of each kind."""

    posts: int
    placeholders: list[_Placeholder] = field(default_factory=list)
    texts: list[_TextNote] = field(default_factory=list)
    # What is left of total_timeout for the call's URL images; None until the first one.
    download_seconds_left: float | None = None

    @classmethod
    def of(cls, record: _Placeholder | _TextNote) -> _CallNotes:
        notes = cls(posts=1)
        notes.add(record)
        return notes

    def add(self, record: _Placeholder | _TextNote) -> None:
        (self.placeholders if isinstance(record, _Placeholder) else self.texts).append(record)

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


class MuSEPipeline(Pipeline):
    """What the MuSE pipelines share: reading posts, running the model, reporting the exchange.

    The `MuSEProcessor` is loaded from the checkpoint folder (or pass ``processor=``).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

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

    def __call__(self, inputs: Mapping[str, Any] | list[Mapping[str, Any]], **kwargs: Any) -> Any:
        """Run the pipeline on one post ``{"text": ..., "image": ...}`` or a list of posts (see the module docs)."""
        if isinstance(inputs, list):
            if not inputs:
                return []
            inputs = [_ListedPost(position, post) for position, post in enumerate(inputs)]
        elif not isinstance(inputs, Mapping):
            # A generator or dataset streams its results: its notes are logged per post as they come.
            return super().__call__(inputs, **kwargs)
        notes = _CallNotes(posts=len(inputs) if isinstance(inputs, list) else 1)
        _notes_of_calls.by_pipeline = {**getattr(_notes_of_calls, "by_pipeline", {}), id(self): notes}
        try:
            results = super().__call__(inputs, **kwargs)
        finally:
            del _notes_of_calls.by_pipeline[id(self)]
        for message in notes.warnings(self.processor):
            logger.warning(message)
        return results

    def _call_notes(self) -> _CallNotes | None:
        """The notes of the call on a list or a single post that runs in this thread; None in a stream, or in a
        DataLoader worker process, whose notes would not come back."""
        notes = getattr(_notes_of_calls, "by_pipeline", {}).get(id(self))
        return None if get_worker_info() is not None else notes

    def _note(self, record: _Placeholder | _TextNote) -> None:
        """Keep what a post reports for its call's single warning of each kind; outside a call on a list or a single
        post, log it now."""
        notes = self._call_notes()
        if notes is None:
            for message in _CallNotes.of(record).warnings(self.processor):
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
    ) -> tuple[dict, dict, dict]:
        """The call arguments both tasks take (see the module docs)."""
        preprocess_params: dict[str, Any] = {}
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
        return preprocess_params, forward_params, postprocess_params

    def preprocess(
        self,
        inputs: Mapping[str, Any] | _ListedPost,
        allow_missing_image: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        total_timeout: float | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_decoded_bytes: int | None = None,
        allow_private_urls: bool = False,
    ) -> dict[str, Any]:
        position = None
        if isinstance(inputs, _ListedPost):
            position, inputs = inputs.position, inputs.post
        where = "" if position is None else f"post {position}: "
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"{where}inputs: expected a post {{'text': ..., 'image': ...}} or a list of them, got "
                f"{type(inputs).__name__}."
            )
        unknown = sorted(set(inputs) - {"text", "image"}, key=str)
        if unknown:
            raise ValueError(f"{where}inputs: unknown keys {unknown}; a post has the keys 'text' and 'image'.")
        post = PostText.from_input(inputs.get("text"), argument=f"{where}text")
        image = inputs.get("image")
        if image is None:
            if not allow_missing_image:
                raise ValueError(
                    f"{where}image: the post has no image, and MuSE fuses text with an image. Pass {{'text': ..., "
                    f"'image': <PIL image, numpy array, path or URL>}}, or call the pipeline with "
                    f"allow_missing_image=True to use a grey placeholder image (the prediction then rests on the text)."
                )
            self._note(_Placeholder(position, f"{where}image: the post has no image."))
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
                self._note(_Placeholder(position, str(error)))
                image = placeholder_image()
        encoded, report = self.processor(
            images=[image], text=[post.words], return_tensors="pt", warn=False, return_text_report=True
        )
        self._note(_TextNote(position, post, report))
        model_inputs: dict[str, Any] = {name: encoded[name] for name in _MODEL_INPUT_NAMES if name in encoded}
        # In the model's dtype (bf16 or fp16 when loaded with dtype=), as transformers' image pipelines send them:
        # half the bytes to copy to the device.
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)
        model_inputs["post"] = post
        return model_inputs

    @abstractmethod
    def _head_outputs(self, outputs: Any, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The task's per-post tensors, batch first (the first one is how the base class counts the batch)."""

    def _forward(self, model_inputs: dict[str, Any], return_exchange: bool = False) -> dict[str, Any]:
        # "post" is a PostText (one post) or a list of them (a batch); it passes through untouched and the base
        # class hands each post's own entry to postprocess.
        post = model_inputs.pop("post")
        outputs = self.model(
            **model_inputs, output_cls_attentions=return_exchange, output_exchange_masks=return_exchange
        )
        result = self._head_outputs(outputs, model_inputs)
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
        allow_missing_image (`bool`, defaults to `False`), timeout (`float`, defaults to 10), total_timeout
            (`float`, defaults to none), max_image_bytes (`int`, defaults to 20 MiB), max_decoded_bytes (`int`,
            defaults to 128 MiB), allow_private_urls (`bool`, defaults to `False`): see the module docs.

    Returns, per post, a list of entities as `TokenClassificationPipeline` does: ``entity_group`` (``entity`` with
    ``"none"``), ``score``, ``word``, ``start``, ``end``. ``start``/``end`` are character offsets into the post's
    text; for a word-list input, into ``" ".join(words)``. ``score`` is the CRF's marginal probability of the
    predicted (Viterbi) tag at each word, from the forward-backward algorithm (`CRFTaggingHead.tag_confidences`); a
    multi-word entity gets the mean of its words' scores. Words cut by the model's ``max_text_length`` get no tag.
    """

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

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        aggregation_strategy: WordAggregation = WordAggregation.SIMPLE,
        return_exchange: bool = False,
    ) -> list[dict[str, Any]] | dict[str, Any]:
        post = model_outputs["post"]
        count = int(model_outputs["word_counts"][0])
        id2label = self.model.config.id2label
        tags = [id2label[tag] for tag in model_outputs["word_tags"][0, :count].tolist()]
        scores = model_outputs["word_scores"][0, :count].tolist()
        entities = aggregate_word_tags(post, tags, scores, aggregation_strategy)
        if return_exchange:
            return {"entities": entities, "exchange": self._exchange_info(model_outputs, post)}
        return entities


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
    ) -> dict[str, Any] | list[dict[str, Any]]:
        id2label = self.model.config.id2label
        logits = model_outputs["logits"][0]
        function = function_to_apply or self._default_function()
        if function == "softmax":
            logits = logits.softmax(dim=-1)
        elif function == "sigmoid":
            logits = logits.sigmoid()
        scores = logits.tolist()
        ranked = sorted(
            ({"label": id2label[index], "score": score} for index, score in enumerate(scores)),
            key=lambda entry: entry["score"],
            reverse=True,
        )
        prediction = ranked[0] if top_k == "" else ranked[:top_k]
        if return_exchange:
            return {"prediction": prediction, "exchange": self._exchange_info(model_outputs, model_outputs["post"])}
        return prediction
