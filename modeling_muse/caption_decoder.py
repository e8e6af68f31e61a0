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

How it runs: the recurrence is one autograd function (:class:`_AttendAndStep`) with its backward pass
(backpropagation through time) written out, because run as ordinary autograd operations its cost is
mostly not arithmetic: dozens of tiny operators per step, and every step materialises and accumulates a
full gradient of each weight it uses and of the image vectors. Everything that does not depend on the
recurrence is computed once for all steps (the word-embedding part of the LSTM input, the projected image
vectors), the three matrix products that read the previous hidden state run as one, and the backward
pass computes the gradients of the weights and of the image vectors as one matrix product each over all
steps. The arithmetic is that of the step-by-step formulation (``tests/test_caption_decoder.py`` pins it
to one written with ``nn.LSTMCell``), up to float rounding.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .dropout import Dropout


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
    """Parameters of the additive soft attention of Show, Attend and Tell:
    alpha = softmax_n(w^T relu(W_f f_n + W_h h) + b), evaluated by :class:`_AttendAndStep`."""

    def __init__(self, feature_dim: int, decoder_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(decoder_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)


class _AttendAndStep(torch.autograd.Function):
    """All steps of the attention LSTM, forward and backward (backpropagation through time).

    Step t, from the state (h, c) before it (B = batch, N = image vectors, D = LSTM width):

        [hh, a, b] = h W^T + w                      W = [W_hh; W_att; W_beta], w = [b_hh; b_att; b_beta]
        e = relu(P + a)                            P = projected image vectors (B, N, A)
        alpha = softmax_n(e v + v_0)               v, v_0 = attention score weight and bias
        z = sigmoid(b) * (alpha @ features)        gated context (B, F)
        i, f, g, o = LSTM gates of X_t + hh + z W_z^T   X_t = precomputed word-embedding part (B, 4D)
        c' = f c + i g;  h' = o tanh(c');  (h, c) <- (h', c') where keep_t, else unchanged

    Returns the hidden states after every step (B, T, D) and the attention weights (B, T, N).
    """

    @staticmethod
    def forward(
        ctx,
        features: Tensor,
        projected_features: Tensor,
        input_gates: Tensor,
        keep: Tensor,
        h: Tensor,
        c: Tensor,
        hidden_weight: Tensor,
        hidden_bias: Tensor,
        context_weight: Tensor,
        score_weight: Tensor,
        score_bias: Tensor,
    ) -> tuple[Tensor, Tensor]:
        num_steps = input_gates.size(1)
        width = h.size(1)
        splits = [4 * width, projected_features.size(2), features.size(2)]
        keep = keep.unsqueeze(-1)
        saved = {name: [] for name in ("c", "activated", "gate", "context", "gated_context", "cell_tanh", "e")}
        initial_h = h
        hiddens, alphas = [], []
        # The per-step products have a batch of rows only: the weight as the left operand, read in its stored order,
        # runs them several times faster than the usual input-times-transposed-weight order on CPUs.
        hidden_bias = hidden_bias.unsqueeze(1)
        for t in range(num_steps):
            hidden_output = torch.addmm(hidden_bias, hidden_weight, h.t()).t()
            hidden_gates, attention_query, gate_input = hidden_output.split(splits, 1)
            e = torch.relu(projected_features + attention_query.unsqueeze(1))
            alpha = torch.softmax((e @ score_weight.unsqueeze(-1)).squeeze(-1) + score_bias, dim=-1)
            context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)
            gate = torch.sigmoid(gate_input)
            gated_context = gate * context
            gates = torch.addmm((input_gates[:, t] + hidden_gates).t(), context_weight, gated_context.t()).t()
            activated = torch.sigmoid(gates)
            activated[:, 2 * width : 3 * width] = torch.tanh(gates[:, 2 * width : 3 * width])
            in_gate, forget_gate, candidate, out_gate = activated.chunk(4, dim=1)
            new_c = torch.addcmul(forget_gate * c, in_gate, candidate)
            cell_tanh = torch.tanh(new_c)
            new_h = out_gate * cell_tanh
            for name, value in (("c", c), ("activated", activated), ("gate", gate), ("context", context),
                                ("gated_context", gated_context), ("cell_tanh", cell_tanh), ("e", e)):
                saved[name].append(value)
            h = torch.where(keep[:, t], new_h, h)
            c = torch.where(keep[:, t], new_c, c)
            hiddens.append(h)
            alphas.append(alpha)
        hiddens = torch.stack(hiddens, dim=1)
        alphas = torch.stack(alphas, dim=1)
        ctx.save_for_backward(
            features, keep, hidden_weight, context_weight, score_weight, alphas, initial_h, hiddens,
            *(torch.stack(values) for values in saved.values()),
        )
        return hiddens, alphas

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hiddens: Tensor, grad_alphas: Tensor):
        (features, keep, hidden_weight, context_weight, score_weight, alphas, initial_h, hiddens,
         cs, activations, gates, contexts, gated_contexts, cell_tanhs, es) = ctx.saved_tensors
        # The state each step started from: the initial one, then the previous step's output.
        hs = torch.cat([initial_h.unsqueeze(0), hiddens.transpose(0, 1)[:-1]])
        num_steps, batch, width = hs.shape
        # Contiguous transposes, so that the per-step products read the weights as their left operand (see forward).
        hidden_weight_t = hidden_weight.t().contiguous()
        context_weight_t = context_weight.t().contiguous()
        grad_h = torch.zeros_like(hs[0])
        grad_c = torch.zeros_like(cs[0])
        grad_projected = torch.zeros_like(es[0])
        grad_gates, grad_hidden_outputs, grad_contexts, grad_scores = [], [], [], []
        for t in range(num_steps - 1, -1, -1):
            step_keep = keep[:, t]
            grad_h_total = grad_h + grad_hiddens[:, t]
            grad_new_h = torch.where(step_keep, grad_h_total, 0.0)
            grad_new_c = torch.where(step_keep, grad_c, 0.0)
            in_gate, forget_gate, candidate, out_gate = activations[t].chunk(4, dim=1)
            cell_tanh = cell_tanhs[t]
            grad_new_c = grad_new_c + grad_new_h * out_gate * (1.0 - cell_tanh * cell_tanh)
            grad_gate_outputs = torch.cat(
                [
                    grad_new_c * candidate * in_gate * (1.0 - in_gate),
                    grad_new_c * cs[t] * forget_gate * (1.0 - forget_gate),
                    grad_new_c * in_gate * (1.0 - candidate * candidate),
                    grad_new_h * cell_tanh * out_gate * (1.0 - out_gate),
                ],
                dim=1,
            )
            grad_gated_context = torch.mm(context_weight_t, grad_gate_outputs.t()).t()
            gate = gates[t]
            grad_gate_input = grad_gated_context * contexts[t] * gate * (1.0 - gate)
            grad_context = grad_gated_context * gate
            alpha = alphas[:, t]
            grad_alpha = torch.bmm(features, grad_context.unsqueeze(-1)).squeeze(-1) + grad_alphas[:, t]
            grad_score = alpha * (grad_alpha - (alpha * grad_alpha).sum(dim=-1, keepdim=True))
            grad_pre_relu = torch.where(es[t] > 0, grad_score.unsqueeze(-1) * score_weight, 0.0)
            grad_projected += grad_pre_relu
            grad_hidden_output = torch.cat([grad_gate_outputs, grad_pre_relu.sum(dim=1), grad_gate_input], dim=1)
            grad_h = torch.mm(hidden_weight_t, grad_hidden_output.t()).t() + torch.where(step_keep, 0.0, grad_h_total)
            grad_c = grad_new_c * forget_gate + torch.where(step_keep, 0.0, grad_c)
            grad_gates.append(grad_gate_outputs)
            grad_hidden_outputs.append(grad_hidden_output)
            grad_contexts.append(grad_context)
            grad_scores.append(grad_score)
        # Collected in reverse step order; the weight gradients below are sums over steps, so only the per-step
        # tensors that are matched with saved ones need the forward order back.
        grad_gates = torch.stack(grad_gates[::-1])
        grad_hidden_outputs = torch.stack(grad_hidden_outputs[::-1])
        grad_scores = torch.stack(grad_scores[::-1])
        grad_features = torch.bmm(alphas.transpose(1, 2), torch.stack(grad_contexts[::-1], dim=1))
        grad_hidden_weight = grad_hidden_outputs.flatten(0, 1).t() @ hs.flatten(0, 1)
        grad_context_weight = grad_gates.flatten(0, 1).t() @ gated_contexts.flatten(0, 1)
        grad_score_weight = (grad_scores.reshape(1, -1) @ es.reshape(-1, es.size(-1))).squeeze(0)
        return (
            grad_features,
            grad_projected,
            grad_gates.transpose(0, 1),
            None,
            grad_h,
            grad_c,
            grad_hidden_weight,
            grad_hidden_outputs.sum(dim=(0, 1)),
            grad_context_weight,
            grad_score_weight,
            grad_scores.sum().reshape(1),
        )


# Rows of the vocabulary projection computed at a time (at least): about 4M scores (16 MB in float32) fit the
# reference CPU's 32 MB L3 cache, and no tensor of the loss then gets to the full (rows, vocabulary) size.
_SCORES_PER_CHUNK = 2**22


class _VocabularyNegativeLogLikelihood(torch.autograd.Function):
    """``F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")`` over chunks of rows, with the
    gradients computed in the same pass.

    For every chunk of rows the scores, their log-softmax and, in training, the gradient of the summed negative
    log-likelihood with respect to the scores (softmax minus one-hot) are computed one after the other while the chunk
    is in cache, and turned at once into the chunk's share of the gradients of ``hidden``, ``weight`` and ``bias``;
    backward only scales those by the loss's incoming gradient. The arithmetic is the unfused one's (the same three
    matrix products per row), but the (rows, vocabulary) scores, log-probabilities and their gradient, each 70 MB at
    the README's CPU configuration, are never materialised: on CPU their allocation, filling and copying cost more
    than the products. ``tests/test_caption_decoder.py`` pins the loss and all three gradients to the unfused formula.
    """

    @staticmethod
    def forward(
        ctx, hidden: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, compute_gradients: bool
    ) -> Tensor:
        needs_hidden, needs_weight, needs_bias = (compute_gradients and needed for needed in ctx.needs_input_grad[:3])
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        # The first chunk writes the weight and bias gradients, the others add to them.
        grad_weight = torch.empty_like(weight) if needs_weight else None
        grad_bias = torch.empty_like(bias) if needs_bias else None
        total = hidden.new_zeros(())
        # Every chunk also reads the weight twice and adds into its gradient: at LSTM width 512 (62 MB of weight
        # gradient at BERT's vocabulary) those passes cost more than the cache misses of larger chunks.
        rows_per_chunk = max(_SCORES_PER_CHUNK // weight.size(0), 2 * weight.size(1))
        for start in range(0, hidden.size(0), rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            chunk_hidden, chunk_targets = hidden[rows], targets[rows].unsqueeze(1)
            log_probs = torch.log_softmax(torch.addmm(bias, chunk_hidden, weight.t()), dim=1)
            total -= log_probs.gather(1, chunk_targets).sum()
            if not (needs_hidden or needs_weight or needs_bias):
                continue
            grad_scores = log_probs.exp_()
            grad_scores.scatter_add_(1, chunk_targets, grad_scores.new_full(chunk_targets.shape, -1.0))
            if needs_hidden:
                torch.mm(grad_scores, weight, out=grad_hidden[rows])
            if needs_weight:
                if start == 0:
                    torch.mm(grad_scores.t(), chunk_hidden, out=grad_weight)
                else:
                    grad_weight.addmm_(grad_scores.t(), chunk_hidden)
            if needs_bias:
                if start == 0:
                    torch.sum(grad_scores, dim=0, out=grad_bias)
                else:
                    grad_bias += grad_scores.sum(dim=0)
        ctx.gradients = (grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total: Tensor):
        # In place: the gradients are this function's own, and the weight's can be large (62 MB at LSTM width 512).
        gradients = tuple(None if gradient is None else gradient.mul_(grad_total) for gradient in ctx.gradients)
        ctx.gradients = None
        return (*gradients, None, None)


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
        self.dropout = Dropout(dropout)
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
            return _VocabularyNegativeLogLikelihood.apply(
                hidden_states.to(self.fc.weight.dtype), self.fc.weight, self.fc.bias, targets, torch.is_grad_enabled()
            )

    def _recurrence(self, image_features: Tensor, input_ids: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """Hidden states (B, T, D) and attention weights (B, T, N) of the teacher-forced steps.

        ``keep`` (B, T) is False at padding inputs, whose steps leave the state unchanged. Under autocast the
        recurrence runs in the weights' precision: it is a small part of the decoder's arithmetic, and its state
        is carried over all steps.
        """
        lstm, attention = self.lstm, self.attention
        embedding_dim = self.embedding.embedding_dim
        device_type = image_features.device.type
        with torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext():
            dtype = self.fc.weight.dtype
            features = image_features.to(dtype)
            mean_features = features.mean(dim=1)
            input_weight, context_weight = lstm.weight_ih.split([embedding_dim, self.feature_dim], dim=1)
            # The word-embedding part of every step's LSTM input, for all steps at once.
            input_gates = F.linear(self.embedding(input_ids), input_weight, lstm.bias_ih)
            return _AttendAndStep.apply(
                features,
                F.linear(features, attention.feature_proj.weight, attention.feature_proj.bias),
                input_gates,
                keep,
                self.init_h(mean_features),
                self.init_c(mean_features),
                torch.cat([lstm.weight_hh, attention.hidden_proj.weight, self.f_beta.weight]),
                torch.cat([lstm.bias_hh, attention.hidden_proj.bias, self.f_beta.bias]),
                # A strided view of weight_ih would slow every step's product down by half.
                context_weight.contiguous(),
                attention.score.weight.squeeze(0),
                attention.score.bias,
            )
