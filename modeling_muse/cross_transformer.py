"""CrossTransformer (paper section 3.2, component 4; eqs. 8-13).

Two Transformer encoders with shared parameters: one stack of post-norm layers processes the text stream
T(0) = [v_cls_t ; T_e] (eq. 8) and the image stream I(0) = [v_cls_i ; I_e] (eq. 9), each on its own length (the
text stream is padded to its batch's longest post, the image stream has P*P tokens). Layers mu..eta additionally
exchange tokens between the streams after their attention sub-module (eqs. 10-11) and before their
feed-forward sub-module (eqs. 12-13).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_muse import MuSEConfig
from .exchange import exchange_least_attended_tokens

__all__ = ["CrossTransformer", "CrossTransformerLayer", "CrossTransformerLayerOutput", "CrossTransformerOutput"]

# What one layer returns for its two streams (None for a stream the model does not have): the new text and image
# states, their cls attention rows (None unless asked for or exchanging), their exchange masks (None outside exchange
# layers), their full attention maps (None unless asked for). A flat tuple of tensors, so that checkpointing with
# either torch.utils.checkpoint mode sees every output.
CrossTransformerLayerOutput = tuple[torch.Tensor | None, ...]


def eager_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor, dropout_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d_head)) V written out, returning the attention map too.

    The same computation as `scaled_dot_product_attention` (boolean ``key_mask``: True where a key may be attended
    to), with the softmax in float32 as transformers' eager attention does, so that half precision keeps its
    normalisation. ``dropout_p`` drops attention weights (training only).
    """
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    scores = scores.masked_fill(~key_mask, float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    context = F.dropout(weights, p=dropout_p) @ value
    return context, weights


class CrossTransformerLayer(GradientCheckpointingLayer):
    """A post-norm Transformer encoder layer (eq. 7) over both streams, exchanging between its two sub-modules.

    ``forward`` runs one layer of the CrossTransformer on the text and the image stream: ``attend`` (multi-head
    self-attention, Add & LayerNorm) on each stream, the exchange of eqs. 10-11 between them in exchange layers, then
    ``feed_forward`` (FFN 4d, ReLU, Add & LayerNorm; eqs. 12-13) on each. The attention follows
    ``config._attn_implementation``: ``"sdpa"`` (the default) runs ``scaled_dot_product_attention``, ``"eager"``
    writes it out (`eager_attention`), and either gives the same outputs; the eager form also runs whenever the full
    attention maps are asked for (``output_attentions``), since SDPA does not return them. The cls row of the
    attention map, which is all the exchange needs, is computed separately from the cls query alone (O(n) per head),
    so that the exchange never needs the full n x n map.

    As a `GradientCheckpointingLayer`, the whole layer (both streams and the exchange) is one activation-checkpointing
    unit when the model's gradient checkpointing is on (docs/design.md, "Memory"); it is also the unit that FSDP shards
    and that ``device_map`` keeps on one device (``_no_split_modules``), which is why the streams go through
    ``__call__`` together rather than through ``attend`` and ``feed_forward`` one by one.
    """

    def __init__(self, config: MuSEConfig):
        super().__init__()
        # Read at each call, so that `set_attn_implementation` on the model switches the layers too.
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout_p = config.cross_dropout
        self.dropout = nn.Dropout(config.cross_dropout)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def attend(
        self,
        hidden_states: torch.Tensor,
        key_mask: torch.Tensor,
        return_cls_attention: bool,
        return_attention_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Self-attention sub-module.

        Args:
            hidden_states: ``(N, L, d)``.
            key_mask: ``(N, L)`` bool, True where a key may be attended to.
            return_cls_attention: also return row 0 of the attention map, averaged over heads, ``(N, L)``.
            return_attention_weights: also return the attention map, ``(N, heads, L, L)``.

        Returns:
            The new states, the cls row (or None) and the attention map (or None).
        """
        batch, length, width = hidden_states.shape
        query, key, value = (
            self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )
        attention_mask = key_mask[:, None, None, :]
        dropout_p = self.dropout_p if self.training else 0.0
        weights = None
        if return_attention_weights or self.config._attn_implementation == "eager":
            context, weights = eager_attention(query, key, value, attention_mask, dropout_p)
        else:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout_p)
        context = context.transpose(1, 2).reshape(batch, length, width)
        attended = self.dropout(self.attention_output(context))
        hidden_states = self.attention_norm(hidden_states + attended)

        cls_attention = None
        if return_cls_attention:
            # Selection is not differentiable, so the cls row carries no gradient and is computed without one.
            with torch.no_grad():
                scores = query[:, :, :1] @ key.transpose(-1, -2) / math.sqrt(self.head_dim)
                scores = scores.masked_fill(~attention_mask, float("-inf"))
                cls_attention = scores.softmax(dim=-1).mean(dim=1)[:, 0]
        return hidden_states, cls_attention, weights if return_attention_weights else None

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Feed-forward sub-module (eqs. 12-13)."""
        intermediate = self.dropout(F.relu(self.intermediate(hidden_states)))
        output = self.dropout(self.output(intermediate))
        return self.output_norm(hidden_states + output)

    def forward(
        self,
        text_states: torch.Tensor | None,
        image_states: torch.Tensor | None,
        text_valid_mask: torch.Tensor | None,
        image_valid_mask: torch.Tensor | None,
        exchange: bool = False,
        return_cls_attention: bool = False,
        exchange_ratio: float = 0.0,
        exchange_mode: str = "residual",
        return_attention_weights: bool = False,
    ) -> CrossTransformerLayerOutput:
        """One CrossTransformer layer on both streams (eqs. 8-13 for layer l).

        Args:
            text_states: ``(B, 1 + n_t, d)``, position 0 the text cls; None without a text branch.
            image_states: ``(B, 1 + n_i, d)``, position 0 the image cls; None without an image branch.
            text_valid_mask, image_valid_mask: ``(B, n_m)`` bool, True at real (non-padding) non-cls tokens; None
                with their stream.
            exchange: exchange the least cls-attended tokens between the streams (layers mu..eta, both streams
                present, theta > 0).
            return_cls_attention: return each stream's cls attention row even when not exchanging.
            exchange_ratio, exchange_mode: theta and the exchange rule (`exchange_least_attended_tokens`).
            return_attention_weights: return each stream's attention map, ``(B, heads, 1 + n_m, 1 + n_m)``.

        Returns:
            ``(text_states, image_states, text_cls_attention, image_cls_attention, text_exchange_mask,
            image_exchange_mask, text_attention_map, image_attention_map)``; see `CrossTransformerLayerOutput`.
        """
        if exchange and (text_states is None or image_states is None):
            raise ValueError("exchange=True needs both streams: the exchange moves tokens between text and image.")
        streams = [states for states in (text_states, image_states) if states is not None]
        valid_masks = [mask for mask in (text_valid_mask, image_valid_mask) if mask is not None]
        if len(valid_masks) != len(streams):
            raise ValueError("Give a valid mask for every stream and none for a missing stream.")
        # The streams are attended, then both fed forward, in this order, so that dropout draws its random numbers in
        # the same sequence whatever the checkpointing.
        attended = [
            self.attend(
                stream,
                F.pad(valid, (1, 0), value=True),
                return_cls_attention=exchange or return_cls_attention,
                return_attention_weights=return_attention_weights,
            )
            for stream, valid in zip(streams, valid_masks)
        ]
        streams, cls_attentions, maps = (list(items) for items in zip(*attended))
        selected: list[torch.Tensor | None] = [None] * len(streams)
        if exchange:
            streams, selected = exchange_least_attended_tokens(
                streams, cls_attentions, valid_masks, exchange_ratio, exchange_mode
            )
        streams = [self.feed_forward(stream) for stream in streams]
        if text_states is None:
            streams, cls_attentions, selected, maps = ([None, *items] for items in (streams, cls_attentions, selected, maps))
        elif image_states is None:
            streams, cls_attentions, selected, maps = ([*items, None] for items in (streams, cls_attentions, selected, maps))
        return (*streams, *cls_attentions, *selected, *maps)


@dataclass
class CrossTransformerOutput:
    """Final streams, ``(B, 1 + n, d)`` each (None for a branch the model does not have), and per-layer
    diagnostics when asked for.

    ``*_hidden_states``: the stream entering the first layer (T(0), I(0)) and after each layer, L + 1 tensors.
    ``*_attentions``: one ``(B, heads, 1 + n, 1 + n)`` attention map per layer.
    ``*_cls_attentions``: one ``(B, 1 + n)`` tensor per layer. ``*_exchange_masks``: one ``(B, n)`` bool tensor
    per exchange layer (mu..eta), True at the tokens that were exchanged.
    """

    text_hidden_state: torch.Tensor | None
    image_hidden_state: torch.Tensor | None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: tuple[torch.Tensor, ...] | None = None
    text_cls_attentions: tuple[torch.Tensor, ...] | None = None
    image_cls_attentions: tuple[torch.Tensor, ...] | None = None
    text_exchange_masks: tuple[torch.Tensor, ...] | None = None
    image_exchange_masks: tuple[torch.Tensor, ...] | None = None


class CrossTransformer(nn.Module):
    """L shared-weight layers over the text and image streams, exchanging tokens in layers mu..eta.

    With one branch switched off (the only-T / only-I ablations) the stack runs on the remaining stream
    alone and nothing is exchanged.
    """

    def __init__(self, config: MuSEConfig):
        super().__init__()
        self.text_cls = nn.Parameter(torch.empty(1, config.hidden_size)) if config.use_text else None
        self.image_cls = nn.Parameter(torch.empty(1, config.hidden_size)) if config.use_image else None
        self.layers = nn.ModuleList(CrossTransformerLayer(config) for _ in range(config.num_cross_layers))
        self.exchange_layers = frozenset(config.exchange_layers)
        self.exchange_ratio = config.exchange_ratio
        self.exchange_mode = config.exchange_mode

    def forward(
        self,
        text_embeddings: torch.Tensor | None,
        image_embeddings: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        output_cls_attentions: bool = False,
        output_exchange_masks: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> CrossTransformerOutput:
        """
        Args:
            text_embeddings: T_e, ``(B, n_t, d)`` with n_t the batch's padded text length, or None without a text
                branch.
            image_embeddings: I_e, ``(B, P*P, d)``, or None without an image branch.
            text_mask: ``(B, n_t)``, 1 at real text tokens, 0 at padding.
            output_cls_attentions, output_exchange_masks, output_hidden_states, output_attentions: return those
                per-layer diagnostics (see `CrossTransformerOutput`).
        """
        # Each stream runs through the shared layers on its own length: the text stream is no longer than its
        # batch's longest post, while the image stream keeps its P*P tokens.
        text_states = text_valid = image_states = image_valid = None
        if text_embeddings is not None:
            text_states = torch.cat([self.text_cls.expand(text_embeddings.shape[0], 1, -1), text_embeddings], dim=1)
            text_valid = text_mask.bool()
        if image_embeddings is not None:
            image_states = torch.cat([self.image_cls.expand(image_embeddings.shape[0], 1, -1), image_embeddings], dim=1)
            image_valid = torch.ones(image_embeddings.shape[:2], dtype=torch.bool, device=image_embeddings.device)
        exchanging = text_states is not None and image_states is not None and self.exchange_ratio > 0

        cls_attentions, exchange_masks, attention_maps, hidden_states = [], [], [], [(text_states, image_states)]
        for layer_number, layer in enumerate(self.layers, start=1):
            is_exchange_layer = layer_number in self.exchange_layers
            # The streams are positional so that reentrant checkpointing (use_reentrant=True) sees them as inputs.
            (
                text_states, image_states, text_attention, image_attention, text_selected, image_selected, text_map,
                image_map,
            ) = layer(
                text_states,
                image_states,
                text_valid,
                image_valid,
                exchange=exchanging and is_exchange_layer,
                return_cls_attention=output_cls_attentions,
                exchange_ratio=self.exchange_ratio,
                exchange_mode=self.exchange_mode,
                return_attention_weights=output_attentions,
            )
            cls_attentions.append((text_attention, image_attention))
            attention_maps.append((text_map, image_map))
            hidden_states.append((text_states, image_states))
            if is_exchange_layer:
                # Outside an exchange (one stream, theta = 0) nothing was exchanged: all-False masks.
                exchange_masks.append(
                    tuple(
                        selected if selected is not None or valid is None else torch.zeros_like(valid)
                        for selected, valid in ((text_selected, text_valid), (image_selected, image_valid))
                    )
                )

        text_index = 0 if text_embeddings is not None else None
        image_index = 1 if image_embeddings is not None else None

        def per_stream(items: list[tuple[torch.Tensor, ...]], index: int | None) -> tuple[torch.Tensor, ...] | None:
            return None if index is None else tuple(item[index] for item in items)

        return CrossTransformerOutput(
            text_hidden_state=text_states,
            image_hidden_state=image_states,
            text_hidden_states=per_stream(hidden_states, text_index) if output_hidden_states else None,
            image_hidden_states=per_stream(hidden_states, image_index) if output_hidden_states else None,
            text_attentions=per_stream(attention_maps, text_index) if output_attentions else None,
            image_attentions=per_stream(attention_maps, image_index) if output_attentions else None,
            text_cls_attentions=per_stream(cls_attentions, text_index) if output_cls_attentions else None,
            image_cls_attentions=per_stream(cls_attentions, image_index) if output_cls_attentions else None,
            text_exchange_masks=per_stream(exchange_masks, text_index) if output_exchange_masks else None,
            image_exchange_masks=per_stream(exchange_masks, image_index) if output_exchange_masks else None,
        )


def with_mean_summary(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[mean of the valid tokens ; tokens]: the w/o-CT stand-in for a CrossTransformer stream."""
    weights = valid.unsqueeze(-1).to(tokens.dtype)
    mean = (tokens * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.cat([mean, tokens], dim=1)
