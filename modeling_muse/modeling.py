"""MuSE models: the bare fusion model and its NER and sentiment heads.

Data path (paper Figure 2): TextEncoder (eq. 1) and ImageEncoder (eq. 2) -> [embedding regularizers,
training only, eqs. 3-6] -> CrossTransformer (eqs. 8-13) -> fusion Linear(2d -> d) -> task head, with the
total loss of eq. 14.

The fusion layer is applied position-wise to all 1 + n positions of the two final streams: positions 1..n
are F_e (docs/design.md, section 4), position 0 fuses the two cls vectors, which is the "fusion embedding of the cls
token" the sentiment head reads (paper section 4.2). One layer serves both heads. n is the batch's padded text
length: the processor pads to the longest post, not to max_text_length, and since padding is kept out of every
attention, exchange and mean, the outputs at real positions do not depend on it.

Ablations (paper Table 3) are configurations: without a branch (only-T / only-I) the fusion reads the one
remaining stream; without the CrossTransformer (w/o-CT) each stream is [mean of its valid tokens ; tokens],
so the fused cls slot is the fusion of the two mean-pooled embeddings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .configuration_muse import MuSEConfig

from .cross_transformer import CrossTransformer, with_mean_summary
from .heads import CRFTaggingHead, SentimentHead, WordPositions
from .image_encoder import ImageEncoder
from .outputs import (
    MuSEModelOutput,
    MuSESequenceClassifierOutput,
    MuSETokenClassifierOutput,
    as_returned,
    passed_through,
)
from .pretrained_towers import build_around_pretrained_towers
from .input_checks import check_inputs
from .regularizers import EmbeddingRegularizers, total_loss
from .serving import custom_pipeline_entries, save_serving_files
from .text_encoder import TextEncoder
from .weight_initialization import initialize_module, initialize_timm_towers
from .weights_check import ConfigurationWeightsMismatchError, check_configuration_against_weights

__all__ = [
    "AUTO_MODEL_CLASSES",
    "ConfigurationWeightsMismatchError",
    "MuSEForSequenceClassification",
    "MuSEForTokenClassification",
    "MuSEModel",
    "MuSEPreTrainedModel",
]

logger = logging.getLogger(__name__)



class MuSEPreTrainedModel(PreTrainedModel):
    config: MuSEConfig
    config_class = MuSEConfig
    # forward takes **kwargs for the text encoder, which would tell transformers' Trainer that the loss is normalised
    # by the num_items_in_batch it passes; MuSE's loss is a batch mean, which the Trainer must scale for accumulation.
    accepts_loss_kwargs = False
    base_model_prefix = "muse"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # Blocks that must stay on one device and be one FSDP unit: each is called through its forward and combines its
    # sub-modules' outputs (residual sums, recurrent steps). The text encoder's (and a transformers vision tower's) own
    # layers join these per model (TextEncoder / ImageEncoder carry their backbone's, which `post_init` collects).
    _no_split_modules = ["CrossTransformerLayer", "CaptionDecoder", "PixelCNNPlusPlusDecoder"]

    def _init_weights(self, module: nn.Module) -> None:
        """Every parameter and buffer gets the initialisation its own library gives it (`initialize_module`); also
        what `from_pretrained` runs on weights a checkpoint lacks (a served model's decoders, a tower left out), and
        `init_weights` after building on the meta device."""
        initialize_module(module, super()._init_weights)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """transformers' `initialize_weights` (every module through `_init_weights`), then timm's initialisation of a
        timm image tower's parameters and buffers that were not loaded (`initialize_timm_towers`)."""
        super().initialize_weights()
        initialize_timm_towers(self)

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Callable = checkpoint, **kwargs
    ) -> None:
        """Switch activation (gradient) checkpointing of every layer stack on or off.

        Reached by ``gradient_checkpointing_enable`` / ``activation_checkpointing_enable`` and their ``_disable``.
        transformers sets the flag of every `GradientCheckpointingLayer` in the model: the CrossTransformer layers
        (each one unit over both streams and the exchange, eqs. 8-13), the PixelCNN++ decoder's gated resnet blocks,
        the text encoder's layers and a transformers vision tower's. A timm backbone has its own switch
        (``set_grad_checkpointing``, which checkpoints its stages with timm's ``checkpoint_seq``). Gradients are
        those without checkpointing; a batch-norm backbone (ResNet) updates its running statistics once more per
        checkpointed step, in the recomputation.
        """
        super()._set_gradient_checkpointing(
            enable=enable, gradient_checkpointing_func=gradient_checkpointing_func, **kwargs
        )
        for module in self.modules():
            if isinstance(module, ImageEncoder):
                module.set_grad_checkpointing(enable)
            elif isinstance(module, TextEncoder) and enable and not module.supports_gradient_checkpointing:
                logger.warning(
                    "The text encoder (%s) does not support gradient checkpointing in transformers: it keeps its "
                    "activations; the rest of MuSE is checkpointed.",
                    type(module.backbone).__name__,
                )

    def enable_input_require_grads(self) -> None:
        # Without a text branch (the only-I ablation) there are no input embeddings to hook, which transformers would
        # report as a missing `get_input_embeddings`.
        if self.config.use_text:
            super().enable_input_require_grads()

    @classmethod
    def from_text_vision_pretrained(
        cls,
        text_model_name_or_path: str,
        vision_model_name_or_path: str,
        *,
        pretrained_vision: bool = True,
        text_model_kwargs: dict | None = None,
        vision_model_kwargs: dict | None = None,
        **config_kwargs,
    ) -> MuSEPreTrainedModel:
        """A fresh MuSE around a pretrained text encoder and a (pretrained) image tower.

        In the manner of `VisionTextDualEncoderModel.from_vision_text_pretrained`: the towers carry their
        pretrained weights, everything MuSE adds (projections, CrossTransformer, fusion, head) is newly
        initialised and needs training. The towers' configurations are stored in the `MuSEConfig`, so the saved
        model reloads without their repositories.

        Args:
            text_model_name_or_path: Hub id or local folder of any `AutoModel` text encoder.
            vision_model_name_or_path: the image tower: a timm name (``"resnet152"``, ``"vit_base_patch16_224"``),
                a timm Hub id (``"timm/<name>"``, ``"hf-hub:<repo>"``) or folder, or a `transformers` vision model's
                Hub id or folder (ViT, CLIP / SigLIP vision, ConvNeXt, DINOv2, Swin, ...); see `resolve_vision_tower`.
            pretrained_vision: load the tower's pretrained weights. For a timm name or Hub id they come from the
                local Hugging Face cache, else from the Hub; without the Hub (``HF_HUB_OFFLINE=1`` or no connection)
                and without a cached copy this fails at once naming the tower. ``False`` starts the tower from
                random weights (its configuration is still read).
            text_model_kwargs: extra arguments for `AutoModel.from_pretrained` of the text encoder (``revision``,
                ``token``, ...).
            vision_model_kwargs: for a transformers tower, extra arguments for its `from_pretrained`; for a timm
                tower, extra arguments for `timm.create_model` (stored in the config).
            **config_kwargs: `MuSEConfig` fields (``num_cross_layers``, ``exchange_ratio``, ``id2label``, ...).
        """
        return build_around_pretrained_towers(
            cls,
            text_model_name_or_path,
            vision_model_name_or_path,
            pretrained_vision=pretrained_vision,
            text_model_kwargs=text_model_kwargs,
            vision_model_kwargs=vision_model_kwargs,
            **config_kwargs,
        )

    def get_input_embeddings(self) -> nn.Module | None:
        """The text encoder's token embeddings (None without a text branch, the only-I ablation, which
        transformers' embedding hooks skip)."""
        text_encoder = self.base_muse.text_encoder
        return None if text_encoder is None else text_encoder.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        text_encoder = self.base_muse.text_encoder
        if text_encoder is None:
            raise ValueError("This MuSE model has no text branch (use_text=False): it has no input embeddings to set.")
        text_encoder.backbone.set_input_embeddings(value)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """`PreTrainedModel.resize_token_embeddings` of the text encoder, e.g. after adding tokens to the tokenizer.

        The image-captioning decoder predicts the same vocabulary (eq. 6), so its word embeddings and output layer
        are resized with it (new rows initialised as transformers initialises new embedding rows); the configured
        ``text_config.vocab_size`` follows.
        """
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        regularizers = self.base_muse.regularizers
        decoder = None if regularizers is None else regularizers.caption_decoder
        if decoder is not None and decoder.embedding.num_embeddings != embeddings.num_embeddings:
            decoder.replace_vocabulary_layers(
                self._get_resized_embeddings(decoder.embedding, embeddings.num_embeddings, mean_resizing=mean_resizing),
                self._get_resized_lm_head(decoder.fc, embeddings.num_embeddings, mean_resizing=mean_resizing),
            )
        return embeddings

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, first holding a local folder's configuration against its weight files.

        The model is built on the meta device (no memory) from the configuration that loading would use, and the
        shapes it asks for are compared with the tensors' shapes in the folder's safetensors headers (no weights are
        read), so that a ``config.json`` claiming sizes its weights do not have is refused before anything is
        allocated (`check_configuration_against_weights`).
        """
        folder = None if pretrained_model_name_or_path is None else Path(pretrained_model_name_or_path)
        # A folder without its own config.json (a PEFT adapter's) is not a MuSE checkpoint to hold against.
        has_config = folder is not None and (folder / kwargs.get("subfolder", "") / "config.json").is_file()
        if has_config and "state_dict" not in kwargs:
            config = kwargs.get("config")
            if not isinstance(config, PreTrainedConfig):
                # As transformers resolves it: the folder's configuration with the keyword arguments that are its
                # fields applied, the others left to loading.
                config, _ = cls.config_class.from_pretrained(
                    folder, return_unused_kwargs=True, **{key: value for key, value in kwargs.items() if key != "config"}
                )
            check_configuration_against_weights(
                cls, config, folder, kwargs.get("subfolder", ""), kwargs.get("ignore_mismatched_sizes", False)
            )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @property
    def base_muse(self) -> MuSEModel:
        """The bare `MuSEModel` inside this model (the model itself for `MuSEModel`)."""
        return getattr(self, self.base_model_prefix, self)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, writing the code and what serving needs beside the weights.

        MuSE's classes are registered for their Auto classes (`modeling_muse/__init__.py`), so transformers copies
        `modeling.py` and every file it imports relatively into ``save_directory``. Added here:

        - the ``auto_map`` lists all three model classes, so that any Auto model class loads any MuSE checkpoint
          with ``trust_remote_code=True`` as it does with this package installed;
        - ``custom_pipelines`` lists the pipeline tasks registered with this code (``multimodal-ner`` and
          ``multimodal-sentiment`` when the package is imported), and their modules are copied too: the model code
          does not import its pipelines, the checkpoint carries them;
        - ``handler.py`` (an Inference Endpoints `EndpointHandler` over the pipeline) and ``requirements.txt``
          (the packages the saved code imports, `SERVING_REQUIREMENTS`).
        """
        references = {
            auto_class.__name__: f"{model_class.__module__.rpartition('.')[2]}.{model_class.__name__}"
            for auto_class, model_class in AUTO_MODEL_CLASSES.items()
        }
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **references}
        registered = custom_pipeline_entries(type(self).__module__.rpartition(".")[0])
        if registered:
            self.config.custom_pipelines = registered
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            save_serving_files(self, save_directory)

    def remove_regularizers(self) -> None:
        """Drop the decoder weights for serving: `save_pretrained` then writes a checkpoint without them,
        which every Auto class loads, since the config now says `include_regularizers=False`."""
        self.base_muse.regularizers = None
        self.config.include_regularizers = False


class MuSEModel(MuSEPreTrainedModel):
    """The bare MuSE model: encoders, regularizers (training only), CrossTransformer and fusion."""

    def __init__(self, config: MuSEConfig):
        super().__init__(config)
        self.text_encoder = TextEncoder(config.text_config, config.hidden_size) if config.use_text else None
        self.image_encoder = None
        if config.use_image:
            self.image_encoder = ImageEncoder(config)
        has_regularizers = config.has_caption_decoder or config.has_generation_decoder
        self.regularizers = EmbeddingRegularizers(config) if has_regularizers else None
        self.cross_transformer = CrossTransformer(config) if config.use_cross_transformer else None
        num_streams = int(config.use_text) + int(config.use_image)
        self.fusion = nn.Linear(num_streams * config.hidden_size, config.hidden_size)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        decoder_pixel_values: torch.Tensor | None = None,
        word_start_mask: torch.Tensor | None = None,
        output_cls_attentions: bool = False,
        output_exchange_masks: bool = False,
        compute_regularizer_losses: bool | None = None,
        output_attentions: bool | list[int] | None = None,
        output_hidden_states: bool | list[int] | None = None,
        output_image_stream: bool = False,
        return_dict: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MuSEModelOutput | tuple:
        r"""
        Args:
            input_ids: `(batch, n)` token ids, n at most `config.max_text_length` (MuSEProcessor pads to the batch's
                longest post; padding changes nothing at real positions).
            pixel_values: `(batch, 3, H, W)` normalised images for the image encoder. Without them (a post whose
                picture is gone, a text-only call) every post gets the placeholder picture: the mid-grey image that
                MuSEProcessor, the dataset builders and the pipelines' ``allow_missing_image`` use, at the tower's
                input size (`ImageEncoder.placeholder_pixel_values`).
            attention_mask: `(batch, n)`, 1 at real tokens; defaults to all ones.
            token_type_ids: passed to the text encoder when given.
            decoder_pixel_values: `(batch, 3, 32, 32)` images in [-1, 1], the text-to-image regularizer's
                target; needed only when that regularizer runs.
            word_start_mask: unused by the bare model (the NER head reads it); accepted so that processor
                outputs pass as `**inputs`.
            output_cls_attentions: return each layer's cls attention row per modality.
            output_exchange_masks: return each exchange layer's boolean exchange masks per modality.
            compute_regularizer_losses: run the regularizer decoders (eqs. 3-6); defaults to `self.training`.
                Never runs without decoder weights.
            output_attentions: return the CrossTransformer's attention maps as ``attentions`` (the text stream's;
                see `MuSEModelOutput`); defaults to ``config.output_attentions``. A list of layer indices keeps those
                maps only (None at the others), as transformers' models take it.
            output_hidden_states: return the CrossTransformer's text stream before and after every layer as
                ``hidden_states``; defaults to ``config.output_hidden_states``. A list of indices into
                ``hidden_states`` (negative ones count from the end) keeps those only (None at the others).
            output_image_stream: with ``output_hidden_states`` / ``output_attentions``, also return the image
                stream's as ``image_hidden_states`` / ``image_attentions``.
            return_dict: a `ModelOutput` (default, ``config.return_dict``) or a plain tuple of its non-None fields.
            kwargs: passed on to the text encoder (transformers' `TransformersKwargs`).
        """
        unknown = sorted(set(kwargs) - set(TransformersKwargs.__annotations__))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.forward got unexpected arguments {unknown}; besides its own it takes "
                f"transformers' {sorted(TransformersKwargs.__annotations__)}."
            )
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if self.image_encoder is not None and pixel_values is None:
            reference = input_ids if input_ids is not None else attention_mask
            if reference is None:
                raise ValueError("MuSEModel needs input_ids or pixel_values: it got neither.")
            parameter = self.fusion.weight
            pixel_values = self.image_encoder.placeholder_pixel_values(len(reference), parameter.device, parameter.dtype)
        check_inputs(self.config, input_ids, attention_mask, pixel_values)
        if self.config.use_text and attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_embeddings = (
            self.text_encoder(input_ids, attention_mask, token_type_ids, **kwargs)
            if self.text_encoder is not None
            else None
        )
        image_embeddings = self.image_encoder(pixel_values) if self.image_encoder is not None else None

        if compute_regularizer_losses is None:
            compute_regularizer_losses = self.training
        regularizer_losses = None
        if compute_regularizer_losses and self.regularizers is not None:
            regularizer_losses = self.regularizers(
                text_embeddings, image_embeddings, input_ids, attention_mask, decoder_pixel_values
            )

        if self.cross_transformer is not None:
            cross = self.cross_transformer(
                text_embeddings,
                image_embeddings,
                attention_mask,
                output_cls_attentions=output_cls_attentions,
                output_exchange_masks=output_exchange_masks,
                output_hidden_states=bool(output_hidden_states),
                output_attentions=bool(output_attentions),
            )
            text_states, image_states = cross.text_hidden_state, cross.image_hidden_state
            # The standard fields carry the text stream, or the image stream where there is no text branch.
            has_text = self.text_encoder is not None
            image_stream = has_text and output_image_stream
            hidden_states = cross.text_hidden_states if has_text else cross.image_hidden_states
            attentions = cross.text_attentions if has_text else cross.image_attentions
            diagnostics = {
                "hidden_states": layers_selected(hidden_states, output_hidden_states),
                "attentions": layers_selected(attentions, output_attentions),
                "image_hidden_states": (
                    layers_selected(cross.image_hidden_states, output_hidden_states) if image_stream else None
                ),
                "image_attentions": (
                    layers_selected(cross.image_attentions, output_attentions) if image_stream else None
                ),
                "text_cls_attentions": cross.text_cls_attentions,
                "image_cls_attentions": cross.image_cls_attentions,
                "text_exchange_masks": cross.text_exchange_masks,
                "image_exchange_masks": cross.image_exchange_masks,
            }
        else:
            text_states = None if text_embeddings is None else with_mean_summary(text_embeddings, attention_mask)
            image_states = (
                None
                if image_embeddings is None
                else with_mean_summary(image_embeddings, torch.ones(image_embeddings.shape[:2], device=image_embeddings.device))
            )
            diagnostics = {}
        streams = [states for states in (text_states, image_states) if states is not None]
        # Position j fuses text position j with image token j; image tokens past the batch's text length have no
        # text partner and stay out of the fusion (they still took part in the CrossTransformer).
        # The first positions are gathered rather than sliced: a slice is contiguous only when the text is as long as
        # the image stream, which an exported or compiled graph would otherwise guard on (the length it was traced
        # with), failing for posts of max_text_length tokens.
        positions = torch.arange(streams[0].shape[1], device=streams[0].device)
        fused = self.fusion(torch.cat([states.index_select(1, positions) for states in streams], dim=-1))
        outputs = MuSEModelOutput(
            fusion_embeddings=fused[:, 1:],
            pooler_output=fused[:, 0],
            text_last_hidden_state=text_states,
            image_last_hidden_state=image_states,
            caption_loss=regularizer_losses.caption_loss if regularizer_losses else None,
            generation_loss=regularizer_losses.generation_loss if regularizer_losses else None,
            generation_bits_per_dim=regularizer_losses.generation_bits_per_dim if regularizer_losses else None,
            **diagnostics,
        )
        return as_returned(self.config, outputs, return_dict)


def layers_selected(
    per_layer: tuple[torch.Tensor, ...] | None, selection: bool | list[int] | tuple[int, ...]
) -> tuple[torch.Tensor | None, ...] | None:
    """``per_layer`` with only the entries at the indices of ``selection`` (None at the others) when it is a list of
    indices, as `output_hidden_states=[0, 2, -1]` asks; unchanged when it is a bool."""
    if per_layer is None or isinstance(selection, bool) or selection is None:
        return per_layer
    outside = [index for index in selection if not -len(per_layer) <= index < len(per_layer)]
    if outside:
        raise IndexError(f"layer indices {outside} are outside the {len(per_layer)} entries (-{len(per_layer)} to {len(per_layer) - 1}).")
    kept = {index % len(per_layer) for index in selection}
    return tuple(item if index in kept else None for index, item in enumerate(per_layer))


class MuSEForTokenClassification(MuSEPreTrainedModel):
    """MuSE for multimodal named entity recognition: fusion embeddings -> emissions -> CRF over words.

    Loaded with ``dtype=torch.bfloat16`` (or float16), everything runs in that dtype except the CRF, whose transition
    scores stay float32 and which takes its emissions in float32 (see `CRFTaggingHead`).
    """

    # from_pretrained keeps these parameters float32 under dtype=torch.bfloat16 or float16 (the non-strict
    # `_keep_in_fp32_modules` would do so under float16 only).
    _keep_in_fp32_modules_strict = ["tagger.crf"]

    def __init__(self, config: MuSEConfig):
        if not config.use_text:
            raise ValueError(
                "MuSEForTokenClassification tags words, so it needs the text branch: use_text=False (the only-I "
                "ablation) is defined for sentiment analysis only (paper Table 3)."
            )
        super().__init__(config)
        self.muse = MuSEModel(config)
        self.tagger = CRFTaggingHead(config.hidden_size, config.num_labels, config.token_classifier_dropout)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        decoder_pixel_values: torch.Tensor | None = None,
        word_start_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_cls_attentions: bool = False,
        output_exchange_masks: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_image_stream: bool = False,
        return_dict: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MuSETokenClassifierOutput | tuple:
        r"""
        Args:
            word_start_mask: `(batch, n)`, 1 at each word's first sub-token (MuSEProcessor returns it). The CRF
                runs over these positions. Derived from `labels != -100` when only labels are given; without
                either, every real token (``attention_mask``) is tagged, as in transformers' token classifiers.
            labels: `(batch, n)` tag ids at word-first sub-tokens, -100 elsewhere. In training, the regularizer
                decoders run only when labels are given.

            Other arguments as in [`MuSEModel.forward`].
        """
        if word_start_mask is None:
            # Without word boundaries every real token is tagged, as transformers' token-classification models tag
            # every token; labels mark the word starts they score (-100 elsewhere).
            if labels is not None:
                word_start_mask = labels != -100
            elif attention_mask is not None:
                word_start_mask = attention_mask.bool()
            else:
                word_start_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if word_start_mask.shape != input_ids.shape:
            raise ValueError(
                f"word_start_mask has shape {tuple(word_start_mask.shape)} but input_ids has {tuple(input_ids.shape)}."
            )
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels has shape {tuple(labels.shape)} but input_ids has {tuple(input_ids.shape)}: give one tag "
                f"id per sub-word position (-100 off word starts), as MuSEProcessor(word_labels=...) does."
            )
        outputs = self.muse(
            input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            decoder_pixel_values=decoder_pixel_values,
            output_cls_attentions=output_cls_attentions,
            output_exchange_masks=output_exchange_masks,
            compute_regularizer_losses=self.training and labels is not None,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_image_stream=output_image_stream,
            return_dict=True,
            **kwargs,
        )
        emissions = self.tagger.emissions(outputs.fusion_embeddings)
        # Outside training the words are packed to the static max_text_length, so that decoding has data-independent
        # shapes (torch.compile, ONNX); training keeps the batch's word count, which the CRF's loop then runs over.
        words = WordPositions(word_start_mask, width=None if self.training else self.config.max_text_length)
        task_loss = loss = None
        if labels is not None:
            task_loss = self.tagger.negative_log_likelihood(emissions, words, labels)
            loss = total_loss(self.config, task_loss, outputs)
        predicted = None if self.training else self.tagger.decode(emissions, words)
        result = MuSETokenClassifierOutput(
            loss=loss, task_loss=task_loss, logits=emissions, predicted_tag_ids=predicted, **passed_through(outputs)
        )
        return as_returned(self.config, result, return_dict)


class MuSEForSequenceClassification(MuSEPreTrainedModel):
    """MuSE for multimodal sentiment analysis: fused cls vector -> dropout -> linear -> cross-entropy."""

    def __init__(self, config: MuSEConfig):
        super().__init__(config)
        self.muse = MuSEModel(config)
        self.classifier = SentimentHead(config.hidden_size, config.num_labels, config.sequence_classifier_dropout)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        decoder_pixel_values: torch.Tensor | None = None,
        word_start_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_cls_attentions: bool = False,
        output_exchange_masks: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_image_stream: bool = False,
        return_dict: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MuSESequenceClassifierOutput | tuple:
        r"""
        Args:
            labels: what ``config.problem_type`` asks for, as in transformers' sequence-classification heads:
                ``"single_label_classification"``: `(batch,)` class ids in `[0, num_labels)` (cross-entropy);
                ``"regression"``: `(batch,)` (num_labels 1) or `(batch, num_labels)` float targets, e.g. sentiment
                intensity (mean squared error); ``"multi_label_classification"``: `(batch, num_labels)` multi-hot
                targets (binary cross-entropy with logits). Unset, it is inferred from the first labels seen
                (num_labels 1: regression; integer labels: single-label; else multi-label) and stored in the
                config. In training, the regularizer decoders run only when labels are given.

            Other arguments as in [`MuSEModel.forward`].
        """
        outputs = self.muse(
            input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            decoder_pixel_values=decoder_pixel_values,
            output_cls_attentions=output_cls_attentions,
            output_exchange_masks=output_exchange_masks,
            compute_regularizer_losses=self.training and labels is not None,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_image_stream=output_image_stream,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(outputs.pooler_output)
        task_loss = loss = None
        if labels is not None:
            task_loss = self.task_loss(logits, labels)
            loss = total_loss(self.config, task_loss, outputs)
        result = MuSESequenceClassifierOutput(loss=loss, task_loss=task_loss, logits=logits, **passed_through(outputs))
        return as_returned(self.config, result, return_dict)


    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_task for ``config.problem_type`` (see `forward`'s ``labels``)."""
        if self.config.problem_type is None:
            if self.config.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        batch, num_labels = logits.shape
        problem = self.config.problem_type
        if problem == "single_label_classification":
            if labels.shape != (batch,) or labels.is_floating_point():
                raise ValueError(
                    f"labels must be a (batch={batch},) tensor of class ids for problem_type={problem!r}, got "
                    f"{labels.dtype} of shape {tuple(labels.shape)}."
                )
            return nn.functional.cross_entropy(logits, labels)
        if problem == "regression":
            if num_labels == 1 and labels.shape == (batch,):
                labels = labels[:, None]
            if labels.shape != (batch, num_labels):
                raise ValueError(
                    f"labels must be a (batch={batch},) or (batch, num_labels={num_labels}) tensor of target values "
                    f"for problem_type='regression', got shape {tuple(labels.shape)}."
                )
            return nn.functional.mse_loss(logits, labels.to(logits.dtype))
        if labels.shape != (batch, num_labels):
            raise ValueError(
                f"labels must be a (batch={batch}, num_labels={num_labels}) multi-hot tensor for "
                f"problem_type='multi_label_classification', got shape {tuple(labels.shape)}."
            )
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


# The Auto class of each MuSE model: `modeling_muse` registers them, and every saved checkpoint names all of them in
# its auto_map (see `MuSEPreTrainedModel.save_pretrained`).
AUTO_MODEL_CLASSES: dict[type, type[MuSEPreTrainedModel]] = {
    AutoModel: MuSEModel,
    AutoModelForTokenClassification: MuSEForTokenClassification,
    AutoModelForSequenceClassification: MuSEForSequenceClassification,
}
