"""Task heads on the fusion embedding (docs/design.md, section 4).

MNER (paper section 4.1): dropout -> Linear(d -> num_labels) -> CRF over words, where a word's emission is
its first sub-token's. MSA (paper section 4.2): dropout -> Linear(d -> num_labels) on the fused cls vector.
"""

from __future__ import annotations

import torch
from torch import nn
from torchcrf import CRF

__all__ = ["CRFTaggingHead", "SentimentHead", "WordPositions"]


class WordPositions:
    """Where each word starts among the sub-word positions, left-packed.

    ``index[b, w]`` is the sub-word position of word w of sample b, ``mask[b, w]`` says whether sample b has
    a word w. Packed to the batch's largest word count so the CRF runs over words only.
    """

    def __init__(self, word_start_mask: torch.Tensor):
        starts = word_start_mask.bool()
        self.counts = starts.sum(dim=1)
        max_words = max(int(self.counts.max()), 1)
        # A stable sort of "not a start" moves the starts, in order, to the front of each row.
        self.index = (~starts).to(torch.int8).argsort(dim=1, stable=True)[:, :max_words]
        self.mask = torch.arange(max_words, device=starts.device) < self.counts.unsqueeze(1)

    def gather(self, token_values: torch.Tensor) -> torch.Tensor:
        """``(B, n, ...)`` sub-word values -> ``(B, max_words, ...)`` word values."""
        index = self.index.view(*self.index.shape, *([1] * (token_values.dim() - 2)))
        return token_values.gather(1, index.expand(-1, -1, *token_values.shape[2:]))

    def scatter(self, word_values: torch.Tensor, sequence_length: int, fill_value: int) -> torch.Tensor:
        """``(B, max_words)`` word values -> ``(B, n)``, placed at word starts, ``fill_value`` elsewhere."""
        out = torch.full((word_values.shape[0], sequence_length), fill_value, dtype=word_values.dtype,
                         device=word_values.device)
        values = torch.where(self.mask, word_values, torch.full_like(word_values, fill_value))
        # Positions past a sample's word count point at non-starts; writing fill_value there is harmless.
        return out.scatter(1, self.index, values)


class CRFTaggingHead(nn.Module):
    """Emission layer and linear-chain CRF (pytorch-crf) over the words of each post."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.crf = CRF(num_labels, batch_first=True)

    def emissions(self, fusion_embeddings: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(fusion_embeddings))

    @staticmethod
    def _crf_mask(words: WordPositions) -> torch.Tensor:
        # pytorch-crf needs the first step of every sequence on; a post without words gets one dummy step,
        # whose score is discarded by the callers.
        mask = words.mask.clone()
        mask[:, 0] = True
        return mask

    def negative_log_likelihood(
        self, emissions: torch.Tensor, words: WordPositions, labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean over posts with at least one word of -log p(gold tags | post)."""
        word_labels = words.gather(labels)
        if bool(((word_labels < 0) & words.mask).any()):
            raise ValueError(
                "labels: every word's first sub-token needs a tag id >= 0 (found -100 at a word start). Align "
                "word labels with MuSEProcessor(word_labels=...), which puts them at first sub-tokens."
            )
        has_words = words.counts > 0
        log_likelihood = self.crf(
            words.gather(emissions), word_labels.clamp(min=0), mask=self._crf_mask(words), reduction="none"
        )
        return -(log_likelihood * has_words).sum() / has_words.sum().clamp(min=1)

    def decode(self, emissions: torch.Tensor, words: WordPositions) -> torch.Tensor:
        """Viterbi paths, ``(B, n)``: the tag at each word's first sub-token, -100 elsewhere."""
        paths = self.crf.decode(words.gather(emissions), mask=self._crf_mask(words))
        width = words.mask.shape[1]
        padded = torch.tensor([path + [0] * (width - len(path)) for path in paths], device=emissions.device)
        return words.scatter(padded, emissions.shape[1], fill_value=-100)

    def marginals(self, emissions: torch.Tensor, words: WordPositions) -> torch.Tensor:
        """Posterior probability of every tag at every word under the CRF, ``(B, max_words, num_labels)``.

        ``out[b, w, k] = p(tag of word w = k | post b)``, summed over all tag paths, from the forward-backward
        algorithm in log space (logsumexp) with the CRF's ``start_transitions``, ``transitions`` and
        ``end_transitions``, vectorised over the batch. Rows of padding words (and of posts without words)
        are zero; every real word's row sums to 1. Computed in float32 whatever the emissions' dtype.
        """
        scores = words.gather(emissions).float()
        mask = words.mask
        start = self.crf.start_transitions.float()
        transitions = self.crf.transitions.float()  # [i, j]: score of tag i followed by tag j
        end = self.crf.end_transitions.float()
        num_steps = scores.shape[1]

        # alpha[t][b, j]: log-sum of the scores of all paths over words 0..t that end in tag j. Past a post's
        # last word alpha is carried unchanged, so the last step holds the value at its last real word.
        alphas = [start + scores[:, 0]]
        for step in range(1, num_steps):
            extended = torch.logsumexp(alphas[-1].unsqueeze(2) + transitions + scores[:, step].unsqueeze(1), dim=1)
            alphas.append(torch.where(mask[:, step : step + 1], extended, alphas[-1]))
        log_partition = torch.logsumexp(alphas[-1] + end, dim=1)

        # beta[t][b, i]: log-sum of the scores of all continuations after word t given tag i at t. At a post's
        # last word (and beyond) only the end transition remains; masks are left-packed, so "the next word is
        # padding" means exactly that.
        final = end.expand_as(alphas[0])
        betas = [final]
        for step in range(num_steps - 2, -1, -1):
            extended = torch.logsumexp(transitions + (scores[:, step + 1] + betas[-1]).unsqueeze(1), dim=2)
            betas.append(torch.where(mask[:, step + 1 : step + 2], extended, final))
        betas.reverse()

        log_marginals = torch.stack(alphas, dim=1) + torch.stack(betas, dim=1) - log_partition[:, None, None]
        return log_marginals.exp() * mask.unsqueeze(-1)


class SentimentHead(nn.Module):
    """Dropout and a linear layer on the fused cls vector (paper section 4.2)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled_fusion: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled_fusion))
