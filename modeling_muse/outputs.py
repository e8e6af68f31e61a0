"""Output dataclasses of the MuSE models."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedConfig
from transformers.utils import ModelOutput

__all__ = [
    "MuSEModelOutput",
    "MuSESequenceClassifierOutput",
    "MuSETokenClassifierOutput",
    "as_returned",
    "passed_through",
]

# What the task models pass on from the bare model's output.
_PASSED_THROUGH_FIELDS = (
    "hidden_states",
    "attentions",
    "image_hidden_states",
    "image_attentions",
    "text_cls_attentions",
    "image_cls_attentions",
    "text_exchange_masks",
    "image_exchange_masks",
    "caption_loss",
    "generation_loss",
    "generation_bits_per_dim",
)


@dataclass
class MuSEModelOutput(ModelOutput):
    r"""
    fusion_embeddings (`torch.FloatTensor` of shape `(batch_size, n, d)`):
        F_e: the position-wise fusion of the two final streams, one vector per text position; n is the batch's
        padded text length (at most `max_text_length`; P*P without a text branch).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, d)`):
        The same fusion applied to the two cls positions; the sentiment head reads it.
    text_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + n, d)`):
        T(L), the text stream after the last CrossTransformer layer, cls first.
    image_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + P*P, d)`):
        I(L), the image stream after the last CrossTransformer layer, cls first.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        With `output_hidden_states=True`: the CrossTransformer's text stream (the image stream in a model without a
        text branch) entering its first layer (T(0), eq. 8) and after each of its L layers: L + 1 tensors of shape
        `(batch_size, 1 + n, d)`, the stream's cls slot first. This is the field transformers' tools read.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        With `output_attentions=True`: the same stream's self-attention map in each CrossTransformer layer, L
        tensors of shape `(batch_size, num_attention_heads, 1 + n, 1 + n)`.
    image_hidden_states, image_attentions (`tuple(torch.FloatTensor)`, *optional*):
        With `output_image_stream=True`, the image stream's counterparts of `hidden_states` (with
        `output_hidden_states`) and `attentions` (with `output_attentions`): `(batch_size, 1 + P*P, d)` and
        `(batch_size, num_attention_heads, 1 + P*P, 1 + P*P)`.
    text_cls_attentions, image_cls_attentions (`tuple(torch.FloatTensor)`, *optional*):
        With `output_cls_attentions=True`: per layer, the cls row of the attention map averaged over heads,
        `(batch_size, 1 + n)` for text and `(batch_size, 1 + P*P)` for the image. That row is all the exchange
        reads; without `output_attentions` MuSE never forms the full attention maps.
    text_exchange_masks, image_exchange_masks (`tuple(torch.BoolTensor)`, *optional*):
        With `output_exchange_masks=True`: per exchange layer (mu..eta), `(batch_size, n)` for text and
        `(batch_size, P*P)` for the image, True at the tokens that were exchanged.
    caption_loss (`torch.FloatTensor` of shape `()`, *optional*):
        L_it, the image-captioning regularizer's loss (eq. 6), unweighted; only in training.
    generation_loss (`torch.FloatTensor` of shape `()`, *optional*):
        L_ti, the text-to-image regularizer's loss (eq. 5): each image's negative log-likelihood in nats, summed
        over its sub-pixels and averaged over the batch, unweighted; only in training.
    generation_bits_per_dim (`torch.FloatTensor` of shape `()`, *optional*):
        L_ti in bits per dimension, for logs.
    """

    fusion_embeddings: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
    image_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    image_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_cls_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_cls_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_exchange_masks: tuple[torch.BoolTensor, ...] | None = None
    image_exchange_masks: tuple[torch.BoolTensor, ...] | None = None
    caption_loss: torch.FloatTensor | None = None
    generation_loss: torch.FloatTensor | None = None
    generation_bits_per_dim: torch.FloatTensor | None = None


@dataclass
class MuSESequenceClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        With `labels`: the total loss L = L_task + alpha * L_it + beta * L_ti (eq. 14); the regularizer terms
        enter only in training.
    task_loss (`torch.FloatTensor` of shape `()`, *optional*):
        With `labels`: L_task, the cross-entropy of the sentiment logits.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Sentiment scores before softmax (with ``problem_type="regression"``, the predicted values).
    caption_loss, generation_loss, generation_bits_per_dim, hidden_states, attentions, image_hidden_states,
    image_attentions, text_cls_attentions, image_cls_attentions, text_exchange_masks, image_exchange_masks:
        As in [`MuSEModelOutput`].

    ``logits`` comes right after ``loss``, as in every transformers head, so that tools reading the outputs by
    position (`Trainer`'s predictions) find them first.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    task_loss: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    generation_loss: torch.FloatTensor | None = None
    generation_bits_per_dim: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    image_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_cls_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_cls_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_exchange_masks: tuple[torch.BoolTensor, ...] | None = None
    image_exchange_masks: tuple[torch.BoolTensor, ...] | None = None


@dataclass
class MuSETokenClassifierOutput(MuSESequenceClassifierOutput):
    r"""
    The fields of [`MuSESequenceClassifierOutput`], for tagging, and the Viterbi path:

    task_loss (`torch.FloatTensor` of shape `()`, *optional*):
        With `labels`: L_task, the CRF's negative log-likelihood of the gold tag sequences, averaged over posts.
    logits (`torch.FloatTensor` of shape `(batch_size, n, num_labels)`):
        The CRF emission scores at every sub-word position (only word-first positions enter the CRF).
    predicted_tag_ids (`torch.LongTensor` of shape `(batch_size, n)`, *optional*):
        The CRF's best (Viterbi) tag path, placed at each word's first sub-token and -100 elsewhere, the same
        layout as `labels`. Filled outside training.
    """

    predicted_tag_ids: torch.LongTensor | None = None


def as_returned(config: PreTrainedConfig, outputs: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
    """``outputs``, or its non-None fields as a tuple with ``return_dict=False`` (as transformers models do)."""
    # config.return_dict, not the deprecated use_return_dict, whose warning would break a torch.compile graph.
    return outputs if (config.return_dict if return_dict is None else return_dict) else outputs.to_tuple()


def passed_through(outputs: MuSEModelOutput) -> dict:
    return {name: getattr(outputs, name) for name in _PASSED_THROUGH_FIELDS}
