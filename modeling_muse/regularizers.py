"""Embedding regularizers (paper section 3.1, eqs. 3-6; components 2 and 3): training only.

Noise and projection, T_n = MLP_t(T_e + sigma * N(0, I)) and I_n = MLP_i(I_e + sigma * N(0, I)) (eqs. 3-4),
then two decoders that pull both embeddings into one space:

- the image-captioning decoder reads I_n and is teacher-forced on the post's own text (L_it, eq. 6);
- the conditional PixelCNN++ reads one vector pooled from T_n and models the 32x32 image (L_ti, eq. 5).

The module exists only when at least one decoder is weighted (`MuSEConfig.has_caption_decoder` /
`has_generation_decoder`); the model calls it only in training, so inference never pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .configuration_muse import MuSEConfig

from .caption_decoder import CaptionDecoder
from .pixelcnn_decoder import PixelCNNPlusPlusDecoder

__all__ = ["EmbeddingRegularizers", "NoisyProjection", "RegularizerLosses", "total_loss"]


class NoisyProjection(nn.Module):
    """MLP(x + sigma * N(0, I)) (eqs. 3-4). The MLP is Linear-ReLU-Linear at width d (the paper names no
    depth; two layers are the smallest MLP with a non-linearity)."""

    def __init__(self, hidden_size: int, noise_std: float):
        super().__init__()
        self.noise_std = noise_std
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(embeddings + self.noise_std * torch.randn_like(embeddings))


@dataclass
class RegularizerLosses:
    """Unweighted regularizer losses; a term is None when its decoder does not exist."""

    caption_loss: torch.Tensor | None = None
    generation_loss: torch.Tensor | None = None
    generation_bits_per_dim: torch.Tensor | None = None


class EmbeddingRegularizers(nn.Module):
    """Noise, projections and the two decoders; returns L_it and L_ti."""

    def __init__(self, config: MuSEConfig):
        super().__init__()
        self.caption_decoder = None
        self.generation_decoder = None
        if config.has_caption_decoder:
            self.image_projection = NoisyProjection(config.hidden_size, config.noise_std)
            self.caption_decoder = CaptionDecoder(
                feature_dim=config.hidden_size,
                vocab_size=config.text_config.vocab_size,
                decoder_dim=config.caption_decoder_dim,
                attention_dim=config.caption_decoder_dim,
                embedding_dim=config.caption_decoder_dim,
                dropout=config.caption_dropout,
            )
        if config.has_generation_decoder:
            self.text_projection = NoisyProjection(config.hidden_size, config.noise_std)
            self.generation_decoder = PixelCNNPlusPlusDecoder(
                condition_dim=config.hidden_size,
                num_filters=config.pixelcnn_filters,
                num_resnet_blocks=config.pixelcnn_resnet_blocks,
                num_mixtures=config.pixelcnn_mixtures,
                dropout=config.pixelcnn_dropout,
            )

    def text_condition(self, text_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The PixelCNN++ condition: T_n mean-pooled over the post's real tokens, ``(B, d)``."""
        noised = self.text_projection(text_embeddings)
        weights = attention_mask.unsqueeze(-1).to(noised.dtype)
        return (noised * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def forward(
        self,
        text_embeddings: torch.Tensor,
        image_embeddings: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_pixel_values: torch.Tensor | None,
    ) -> RegularizerLosses:
        losses = RegularizerLosses()
        if self.caption_decoder is not None:
            captions = self.caption_decoder(self.image_projection(image_embeddings), input_ids, attention_mask)
            losses.caption_loss = captions.loss
        if self.generation_decoder is not None:
            if decoder_pixel_values is None:
                raise ValueError(
                    "decoder_pixel_values is required in training when generation_loss_weight > 0: it is the "
                    "32x32 image the text-to-image regularizer models (MuSEProcessor returns it), or set "
                    "generation_loss_weight=0."
                )
            generated = self.generation_decoder(decoder_pixel_values, self.text_condition(text_embeddings, attention_mask))
            losses.generation_loss = generated.loss
            losses.generation_bits_per_dim = generated.bits_per_dim
        return losses


def total_loss(config: MuSEConfig, task_loss: torch.Tensor, outputs: Any) -> torch.Tensor:
    """L = L_task + alpha * L_it + beta * L_ti (eq. 14); absent regularizer terms (``outputs.caption_loss``,
    ``outputs.generation_loss`` None) count as 0."""
    loss = task_loss
    if outputs.caption_loss is not None:
        loss = loss + config.caption_loss_weight * outputs.caption_loss
    if outputs.generation_loss is not None:
        loss = loss + config.generation_loss_weight * outputs.generation_loss
    return loss
