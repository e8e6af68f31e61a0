"""Image-captioning embedding regularizer of MuSE (the "TextDecoder" of paper eq. 6, loss L_it).

MuSE regularizes the image embeddings by asking an attention LSTM to caption the image with the
post's own text: T_hat = TextDecoder(I_n) (paper eq. 6), where I_n are the noised image tokens
(eq. 4). The paper names NIC-Att as the decoder, i.e. "Show, Attend and Tell" (Xu et al., 2015):
soft attention over the N image vectors, a sigmoid gate on the attended context, an LSTM cell fed
with the previous word's embedding and the gated context, and an initial state computed from the
mean image vector. Its loss L_it enters the total objective with weight alpha (paper eq. 14).

Choices the paper leaves open, fixed here (docs/design.md, section 2):

* Teacher forcing on the post's own token ids: step t reads ``caption_ids[:, t]`` and predicts
  ``caption_ids[:, t + 1]``. A step is *real* when both its input and its target are real tokens.
* The token loss is the negative log-likelihood of each caption, i.e. the cross-entropy summed over
  the caption's real steps, averaged over the samples that have at least one real step. Summing over
  the caption (as Show, Attend and Tell and the PixelCNN++ image likelihood do) keeps the loss on the
  scale for which the paper's small weight alpha = 1e-4 was chosen (see the README's notes on loss
  scales).
* The doubly stochastic attention penalty of Show, Attend and Tell (their eq. 14) is
  ``attention_penalty_weight * mean_b sum_n (1 - sum_t alpha_{b,t,n})^2`` where t runs over the
  real steps of sample b and the mean runs over the samples that have at least one real step.
  (The public MuSE reference code used the mean over the N positions instead of the sum, i.e.
  ``attention_penalty_weight = 1 / N`` reproduces it.)
* The LSTM state is carried unchanged through steps whose input is padding, so left and right
  padding, and any amount of extra padding, give the same loss.

How it runs: plain PyTorch modules and autograd, one step after the other (attention, gate, ``nn.LSTMCell``), so a
different recurrence (a GRU, another attention) is a change of these few lines. What does not depend on the state
is computed once for all steps (the word embeddings, the projected image vectors), and the vocabulary projection
runs on the real steps only.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn



# Set on a layer, the half-width of the uniform distribution its weight starts from (its bias starts at zero).
UNIFORM_INIT_RANGE = "muse_uniform_init_range"


@dataclass
class CaptionDecoderOutput:
    """Result of :class:`CaptionDecoder`.

    Attributes:
        loss: ``token_loss + attention_penalty``: the image-captioning loss L_it (paper eq. 6 and 14).
        token_loss: the captions' negative log-likelihood in nats: cross-entropy summed over each
            caption's real target tokens, averaged over the captions with at least one real target.
        attention_penalty: the weighted doubly stochastic attention penalty.
        attention_weights: (B, T-1, N) attention of every step over the image vectors; rows of
            steps that are not real are zero.
        logits: (B, T-1, vocab_size) next-token scores; only filled when asked for, since at BERT
            vocabulary sizes it is by far the largest tensor of the decoder.
    """

    loss: Tensor
    token_loss: Tensor
    attention_penalty: Tensor
    attention_weights: Tensor
    logits: Tensor | None = None


class SoftAttention(nn.Module):
    """The additive soft attention of Show, Attend and Tell: alpha = softmax_n(w^T relu(W_f f_n + W_h h) + b)."""

    def __init__(self, feature_dim: int, decoder_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(decoder_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, projected_features: Tensor, hidden: Tensor) -> Tensor:
        """Attention weights (B, N) over the image vectors, from their projections (B, N, A) and the state (B, D)."""
        scores = self.score(torch.relu(projected_features + self.hidden_proj(hidden).unsqueeze(1))).squeeze(-1)
        return scores.softmax(dim=-1)


class CaptionDecoder(nn.Module):
    """Show, Attend and Tell caption decoder used as MuSE's image-captioning regularizer (eq. 6).

    Args:
        feature_dim: width of the image vectors I_n.
        vocab_size: size of the caption vocabulary (the text tokenizer's, since the captions are
            the post's own token ids).
        decoder_dim: LSTM width (512 in the paper's reference setting).
        attention_dim: width of the additive attention.
        embedding_dim: width of the word embeddings.
        dropout: dropout on the LSTM output before the vocabulary projection.
        attention_penalty_weight: weight of the doubly stochastic attention penalty
            (Show, Attend and Tell's lambda).
    """

    def __init__(
        self,
        feature_dim: int,
        vocab_size: int,
        decoder_dim: int = 512,
        attention_dim: int = 512,
        embedding_dim: int = 512,
        dropout: float = 0.5,
        attention_penalty_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.vocab_size = vocab_size
        self.attention_penalty_weight = attention_penalty_weight

        self.attention = SoftAttention(feature_dim, decoder_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTMCell(embedding_dim + feature_dim, decoder_dim)
        self.init_h = nn.Linear(feature_dim, decoder_dim)
        self.init_c = nn.Linear(feature_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(decoder_dim, vocab_size)
        # Small uniform word embeddings and output layer with zero bias: the initial next-token distribution is
        # close to uniform, which keeps the first (large) caption losses from swamping the task loss they regularize.
        # The attribute tells `MuSEPreTrainedModel._init_weights` (which initialises every MuSE model) to keep it so.
        for layer in (self.embedding, self.fc):
            setattr(layer, UNIFORM_INIT_RANGE, 0.1)
            nn.init.uniform_(layer.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc.bias)

    def replace_vocabulary_layers(self, embedding: nn.Embedding, fc: nn.Linear) -> None:
        """Use ``embedding`` and ``fc`` (a resized vocabulary: the text encoder's after
        ``resize_token_embeddings``) as the word embeddings and output layer."""
        if embedding.num_embeddings != fc.out_features:
            raise ValueError(f"embedding has {embedding.num_embeddings} words but fc predicts {fc.out_features}.")
        self.embedding, self.fc, self.vocab_size = embedding, fc, embedding.num_embeddings
        for layer in (self.embedding, self.fc):
            setattr(layer, UNIFORM_INIT_RANGE, 0.1)

    def forward(
        self,
        image_features: Tensor,
        caption_ids: Tensor,
        caption_mask: Tensor,
        return_logits: bool = False,
    ) -> CaptionDecoderOutput:
        """Teacher-forced captioning loss L_it of the image vectors (paper eq. 6).

        Args:
            image_features: (B, N, feature_dim) noised image tokens I_n.
            caption_ids: (B, T) token ids of the post's text, [CLS] first.
            caption_mask: (B, T) 1 for real tokens, 0 for padding.
            return_logits: also return the (B, T-1, vocab_size) next-token scores.
        """
        if image_features.dim() != 3 or image_features.size(-1) != self.feature_dim:
            raise ValueError(
                f"image_features must be (B, N, {self.feature_dim}), got {tuple(image_features.shape)}"
            )
        if caption_ids.shape != caption_mask.shape or caption_ids.dim() != 2:
            raise ValueError(
                f"caption_ids and caption_mask must both be (B, T), got {tuple(caption_ids.shape)} "
                f"and {tuple(caption_mask.shape)}"
            )
        if caption_ids.size(0) != image_features.size(0):
            raise ValueError("image_features and caption_ids must have the same batch size")
        if caption_ids.size(1) < 2:
            raise ValueError("captions need at least two positions (an input and a target)")

        mask = caption_mask.to(dtype=torch.bool)
        # Step t is real when both its input token t and its target token t + 1 are real.
        step_mask = mask[:, :-1] & mask[:, 1:]

        hiddens, attention_weights = self._recurrence(image_features, caption_ids[:, :-1], mask[:, :-1])
        hidden_states = self.dropout(hiddens)
        step_weights = step_mask.to(hidden_states.dtype)
        # The vocabulary projection dominates the decoder's cost, so it runs on the real steps only (posts fill
        # about a third of the padded length); full logits are computed only when asked for.
        token_nll = self._vocabulary_nll(hidden_states[step_mask], caption_ids[:, 1:][step_mask])
        has_steps = step_mask.any(dim=1).to(token_nll.dtype)
        token_loss = token_nll / has_steps.sum().clamp(min=1.0)

        alphas = attention_weights * step_weights.unsqueeze(-1)
        per_sample_penalty = (1.0 - alphas.sum(dim=1)).pow(2).sum(dim=-1)
        attention_penalty = self.attention_penalty_weight * (
            (per_sample_penalty * has_steps).sum() / has_steps.sum().clamp(min=1.0)
        )

        return CaptionDecoderOutput(
            loss=token_loss + attention_penalty,
            token_loss=token_loss,
            attention_penalty=attention_penalty,
            attention_weights=alphas,
            logits=self.fc(hidden_states) if return_logits else None,
        )

    def _vocabulary_nll(self, hidden_states: Tensor, targets: Tensor) -> Tensor:
        """Summed cross-entropy of the vocabulary projection of ``hidden_states`` (R, D) against ``targets`` (R,).

        Under autocast it runs in the weights' precision, as the recurrence does: the log-softmax over the vocabulary
        would run in float32 anyway, and the products are a small part of the model's arithmetic.
        """
        device_type = hidden_states.device.type
        with torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext():
            logits = self.fc(hidden_states.to(self.fc.weight.dtype))
            return F.cross_entropy(logits, targets, reduction="sum")

    def _recurrence(self, image_features: Tensor, input_ids: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """Hidden states (B, T, D) and attention weights (B, T, N) of the teacher-forced steps.

        ``keep`` (B, T) is False at padding inputs, whose steps leave the state unchanged. Under autocast the
        recurrence runs in the weights' precision: it is a small part of the decoder's arithmetic, and its state
        is carried over all steps.
        """
        device_type = image_features.device.type
        with torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext():
            features = image_features.to(self.fc.weight.dtype)
            mean_features = features.mean(dim=1)
            hidden, cell = self.init_h(mean_features), self.init_c(mean_features)
            projected = self.attention.feature_proj(features)
            embeddings = self.embedding(input_ids)
            hiddens, alphas = [], []
            for step in range(input_ids.size(1)):
                alpha = self.attention(projected, hidden)
                context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)
                gate = torch.sigmoid(self.f_beta(hidden))
                next_hidden, next_cell = self.lstm(torch.cat([embeddings[:, step], gate * context], dim=-1), (hidden, cell))
                kept = keep[:, step].unsqueeze(-1)
                hidden, cell = torch.where(kept, next_hidden, hidden), torch.where(kept, next_cell, cell)
                hiddens.append(hidden)
                alphas.append(alpha)
            return torch.stack(hiddens, dim=1), torch.stack(alphas, dim=1)
