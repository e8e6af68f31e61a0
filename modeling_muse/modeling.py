"""MuSE models: the bare fusion model and its NER and sentiment heads.

Data path (paper Figure 2): TextEncoder (eq. 1) and ImageEncoder (eq. 2) -> [embedding regularizers,
training only, eqs. 3-6] -> CrossTransformer (eqs. 8-13) -> fusion Linear(2d -> d) -> task head.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchcrf import CRF
from transformers import PreTrainedModel
from transformers import initialization as init

from configuration_muse import MuSEConfig

from .cross_transformer import CrossTransformer
from .heads import CRFTaggingHead, SentimentHead, WordPositions
from .image_encoder import ImageEncoder, create_vision_backbone
from .outputs import MuSEModelOutput, MuSESequenceClassifierOutput, MuSETokenClassifierOutput
from .text_encoder import TextEncoder, load_pretrained_text_backbone

__all__ = ["MuSEForSequenceClassification", "MuSEForTokenClassification", "MuSEModel", "MuSEPreTrainedModel"]

logger = logging.getLogger(__name__)

_DIAGNOSTIC_FIELDS = ("text_cls_attentions", "image_cls_attentions", "text_exchange_masks", "image_exchange_masks")


class MuSEPreTrainedModel(PreTrainedModel):
    config: MuSEConfig
    config_class = MuSEConfig
    base_model_prefix = "muse"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CrossTransformer):
            # Paper section 4: the cls vectors use Kaiming initialisation.
            init.kaiming_normal_(module.text_cls)
            init.kaiming_normal_(module.image_cls)
        elif isinstance(module, CRF):
            # pytorch-crf's own initialisation, which the generic one would otherwise skip.
            init.uniform_(module.start_transitions, -0.1, 0.1)
            init.uniform_(module.end_transitions, -0.1, 0.1)
            init.uniform_(module.transitions, -0.1, 0.1)

    @classmethod
    def from_text_vision_pretrained(
        cls,
        text_model_name_or_path: str,
        vision_model_name: str,
        *,
        pretrained_vision: bool = True,
        text_model_kwargs: dict | None = None,
        **config_kwargs,
    ) -> MuSEPreTrainedModel:
        """A fresh MuSE around a pretrained text encoder and a (pretrained) timm image backbone.

        In the manner of `VisionTextDualEncoderModel.from_vision_text_pretrained`: the towers carry their
        pretrained weights, everything MuSE adds (projections, CrossTransformer, fusion, head) is newly
        initialised and needs training.

        Args:
            text_model_name_or_path: Hub id or local folder of any `AutoModel` text encoder.
            vision_model_name: timm model name, e.g. ``"resnet152"``.
            pretrained_vision: load timm's pretrained weights for the backbone (downloads them).
            text_model_kwargs: extra arguments for `AutoModel.from_pretrained` (``revision``, ``token``, ...).
            **config_kwargs: `MuSEConfig` fields (``num_cross_layers``, ``exchange_ratio``, ``id2label``, ...).
        """
        text_backbone = load_pretrained_text_backbone(text_model_name_or_path, **(text_model_kwargs or {}))
        config = MuSEConfig(text_config=text_backbone.config, vision_model_name=vision_model_name, **config_kwargs)
        model = cls(config)
        muse = model.muse if hasattr(model, "muse") else model
        muse.text_encoder.backbone.load_state_dict(text_backbone.state_dict())
        if pretrained_vision:
            vision_backbone = create_vision_backbone(vision_model_name, config.vision_model_kwargs, pretrained=True)
            muse.image_encoder.backbone.load_state_dict(vision_backbone.state_dict())
        logger.warning(
            "MuSE was built around pretrained towers (%s, %s); its projections, CrossTransformer, fusion layer "
            "and head are newly initialised: train the model before using it for predictions.",
            text_model_name_or_path,
            vision_model_name,
        )
        return model


def _check_inputs(config: MuSEConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  pixel_values: torch.Tensor | None) -> None:
    if input_ids is None or input_ids.dim() != 2:
        shape = None if input_ids is None else tuple(input_ids.shape)
        raise ValueError(f"input_ids must be a (batch, max_text_length) tensor of token ids, got shape {shape}.")
    if input_ids.shape[1] != config.max_text_length:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} positions but this MuSE model fuses exactly max_text_length="
            f"{config.max_text_length} text positions with {config.num_image_tokens} image tokens: pad or truncate "
            f"to max_length={config.max_text_length} (MuSEProcessor does this)."
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}."
        )
    if pixel_values is None:
        raise ValueError("pixel_values is required: MuSE fuses text with an image (MuSEProcessor(images=...)).")
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"pixel_values must be a (batch={input_ids.shape[0]}, 3, height, width) tensor, got shape "
            f"{tuple(pixel_values.shape)}."
        )


class MuSEModel(MuSEPreTrainedModel):
    """The bare MuSE model: encoders, CrossTransformer and fusion, returning the fusion embeddings F_e."""

    base_model_prefix = "muse"

    def __init__(self, config: MuSEConfig):
        super().__init__(config)
        self.text_encoder = TextEncoder(config.text_config, config.hidden_size)
        self.image_encoder = ImageEncoder(
            config.vision_model_name,
            config.vision_model_kwargs,
            config.image_grid_size,
            config.hidden_size,
            config.vision_trainable_stages,
        )
        self.cross_transformer = CrossTransformer(config)
        self.fusion = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_encoder.backbone.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        decoder_pixel_values: torch.Tensor | None = None,
        word_start_mask: torch.Tensor | None = None,
        output_cls_attentions: bool = False,
        output_exchange_masks: bool = False,
    ) -> MuSEModelOutput:
        r"""
        Args:
            input_ids: `(batch, n)` token ids, padded to `config.max_text_length`.
            pixel_values: `(batch, 3, H, W)` normalised images for the image encoder.
            attention_mask: `(batch, n)`, 1 at real tokens; defaults to all ones.
            token_type_ids: passed to the text encoder when given.
            decoder_pixel_values: `(batch, 3, 32, 32)` images in [-1, 1], the text-to-image regularizer's
                target; unused at inference. Accepted so that processor outputs pass as `**inputs`.
            word_start_mask: unused by the bare model (the NER head reads it); accepted for the same reason.
            output_cls_attentions: return each layer's cls attention row per modality.
            output_exchange_masks: return each exchange layer's boolean exchange masks per modality.
        """
        _check_inputs(self.config, input_ids, attention_mask, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_embeddings = self.text_encoder(input_ids, attention_mask, token_type_ids)
        image_embeddings = self.image_encoder(pixel_values)
        cross = self.cross_transformer(
            text_embeddings,
            image_embeddings,
            attention_mask,
            output_cls_attentions=output_cls_attentions,
            output_exchange_masks=output_exchange_masks,
        )
        fused = self.fusion(torch.cat([cross.text_hidden_state, cross.image_hidden_state], dim=-1))
        return MuSEModelOutput(
            fusion_embeddings=fused[:, 1:],
            pooler_output=fused[:, 0],
            text_last_hidden_state=cross.text_hidden_state,
            image_last_hidden_state=cross.image_hidden_state,
            text_cls_attentions=cross.text_cls_attentions,
            image_cls_attentions=cross.image_cls_attentions,
            text_exchange_masks=cross.text_exchange_masks,
            image_exchange_masks=cross.image_exchange_masks,
        )


def _diagnostics(outputs: MuSEModelOutput) -> dict:
    return {name: getattr(outputs, name) for name in _DIAGNOSTIC_FIELDS}


class MuSEForTokenClassification(MuSEPreTrainedModel):
    """MuSE for multimodal named entity recognition: fusion embeddings -> emissions -> CRF over words."""

    def __init__(self, config: MuSEConfig):
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
    ) -> MuSETokenClassifierOutput:
        r"""
        Args:
            word_start_mask: `(batch, n)`, 1 at each word's first sub-token (MuSEProcessor returns it). The CRF
                runs over these positions. Derived from `labels != -100` when only labels are given.
            labels: `(batch, n)` tag ids at word-first sub-tokens, -100 elsewhere.

            Other arguments as in [`MuSEModel.forward`].
        """
        if word_start_mask is None:
            if labels is None:
                raise ValueError(
                    "word_start_mask is required to know where words start (MuSEProcessor returns it); "
                    "alternatively pass labels with -100 at every position that is not a word's first sub-token."
                )
            word_start_mask = labels != -100
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
        )
        emissions = self.tagger.emissions(outputs.fusion_embeddings)
        words = WordPositions(word_start_mask)
        loss = self.tagger.negative_log_likelihood(emissions, words, labels) if labels is not None else None
        predicted = None if self.training else self.tagger.decode(emissions, words)
        return MuSETokenClassifierOutput(loss=loss, logits=emissions, predicted_tag_ids=predicted, **_diagnostics(outputs))


class MuSEForSequenceClassification(MuSEPreTrainedModel):
    """MuSE for multimodal sentiment analysis: fused cls vector -> dropout -> linear -> cross-entropy."""

    def __init__(self, config: MuSEConfig):
        super().__init__(config)
        self.muse = MuSEModel(config)
        self.classifier = SentimentHead(config.hidden_size, config.num_labels, config.sequence_classifier_dropout)
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
    ) -> MuSESequenceClassifierOutput:
        r"""
        Args:
            labels: `(batch,)` class ids in `[0, num_labels)`.

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
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            if labels.shape != (input_ids.shape[0],):
                raise ValueError(
                    f"labels must be a (batch={input_ids.shape[0]},) tensor of class ids, got shape {tuple(labels.shape)}."
                )
            loss = nn.functional.cross_entropy(logits, labels)
        return MuSESequenceClassifierOutput(loss=loss, logits=logits, **_diagnostics(outputs))
