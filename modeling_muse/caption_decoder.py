"""Image-captioning embedding regularizer of MuSE (the "TextDecoder" of paper eq. 6, loss L_it).

MuSE regularizes the image embeddings by asking an attention LSTM to caption the image with the
post's own text: T_hat = TextDecoder(I_n) (paper eq. 6), where I_n are the noised image tokens
(eq. 4). The paper names NIC-Att as the decoder, i.e. "Show, Attend and Tell" (Xu et al., 2015):
soft attention over the N image vectors, a sigmoid gate on the attended context, an LSTM cell fed
with the previous word's embedding and the gated context, and an initial state computed from the
mean image vector. Its loss L_it enters the total objective with weight alpha (paper eq. 14).

Choices the paper leaves open, fixed here (see also MUSE_SPEC.md section 2):

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    """Additive soft attention of Show, Attend and Tell: alpha = softmax_n(w^T relu(W_f f_n + W_h h))."""

    def __init__(self, feature_dim: int, decoder_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(decoder_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, features: Tensor, projected_features: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Attend over ``features`` (B, N, F) given the decoder state ``hidden`` (B, D).

        ``projected_features`` is ``self.feature_proj(features)``, computed once per caption by the
        caller because it does not depend on the time step.

        Returns the context (B, F) and the attention weights (B, N).
        """
        scores = self.score(torch.relu(projected_features + self.hidden_proj(hidden).unsqueeze(1))).squeeze(-1)
        weights = scores.softmax(dim=-1)
        context = torch.bmm(weights.unsqueeze(1), features).squeeze(1)
        return context, weights


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
        self._init_weights()

    def _init_weights(self) -> None:
        # Small uniform word embeddings and output layer with zero bias: the initial next-token
        # distribution is close to uniform, which keeps the first (large) caption losses from
        # swamping the task loss they regularize.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.fc.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc.bias)

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
        num_steps = caption_ids.size(1) - 1

        mean_features = image_features.mean(dim=1)
        h = self.init_h(mean_features)
        c = self.init_c(mean_features)
        projected_features = self.attention.feature_proj(image_features)
        embeddings = self.embedding(caption_ids[:, :-1])

        hiddens = []
        attention_weights = []
        for t in range(num_steps):
            context, alpha = self.attention(image_features, projected_features, h)
            gate = torch.sigmoid(self.f_beta(h))
            h_next, c_next = self.lstm(torch.cat([embeddings[:, t], gate * context], dim=-1), (h, c))
            # Padding inputs must not move the state, so that the amount and side of padding
            # cannot change what the real steps compute.
            keep = mask[:, t].unsqueeze(-1)
            h = torch.where(keep, h_next, h)
            c = torch.where(keep, c_next, c)
            hiddens.append(h)
            attention_weights.append(alpha)

        hidden_states = self.dropout(torch.stack(hiddens, dim=1))
        step_weights = step_mask.to(hidden_states.dtype)
        # The vocabulary projection dominates the decoder's cost, so it runs on the real steps only (posts fill
        # about a third of the padded length); full logits are computed only when asked for.
        real_logits = self.fc(hidden_states[step_mask])
        token_nll = F.cross_entropy(real_logits, caption_ids[:, 1:][step_mask], reduction="sum")
        has_steps = step_mask.any(dim=1).to(token_nll.dtype)
        token_loss = token_nll / has_steps.sum().clamp(min=1.0)

        alphas = torch.stack(attention_weights, dim=1) * step_weights.unsqueeze(-1)
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
