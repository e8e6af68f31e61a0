"""Task heads on the fusion embedding (docs/design.md, section 4).

MNER (paper section 4.1): dropout -> Linear(d -> num_labels) -> CRF over words, where a word's emission is
its first sub-token's. MSA (paper section 4.2): dropout -> Linear(d -> num_labels) on the fused cls vector.
"""

from __future__ import annotations

import torch
from torch import nn
from torchcrf import CRF

__all__ = ["CRFTaggingHead", "SentimentHead", "WordPositions", "viterbi_decode"]


class WordPositions:
    """Where each word starts among the sub-word positions, left-packed.

    ``index[b, w]`` is the sub-word position of word w of sample b, ``mask[b, w]`` says whether sample b has
    a word w. By default packed to the batch's largest word count, so the CRF runs over words only; that width is
    read from the device (a host synchronisation). A fixed ``width`` (at least the largest word count; the models
    use ``max_text_length`` outside training) keeps the shapes independent of the data, which `torch.compile` and
    ONNX export need. Padding words change no CRF result: every recursion carries its value past a post's last
    word.
    """

    def __init__(self, word_start_mask: torch.Tensor, width: int | None = None):
        starts = word_start_mask.bool()
        self.starts = starts
        self.counts = starts.sum(dim=1)
        if width is None:
            width = max(int(self.counts.max()), 1)
        elif width < 1:
            raise ValueError(f"width: expected a positive number of word slots, got {width}.")
        self.width = width
        # 0-based word number of each sub-word position (that of the word it belongs to; -1 before the first word).
        self._word_number = starts.cumsum(dim=1) - 1
        # Word w starts where a start has word number w: found by comparison, not by a stable sort, which torch's
        # ONNX exporter does not translate. Words past a post's count point at position 0; `mask` marks them.
        slots = torch.arange(width, device=starts.device)
        is_word_start = starts.unsqueeze(2) & (self._word_number.unsqueeze(2) == slots)
        positions = torch.arange(starts.shape[1], device=starts.device).view(1, -1, 1)
        self.index = (is_word_start * positions).sum(dim=1)
        self.mask = slots < self.counts.unsqueeze(1)

    def gather(self, token_values: torch.Tensor) -> torch.Tensor:
        """``(B, n, ...)`` sub-word values -> ``(B, width, ...)`` word values."""
        index = self.index.view(*self.index.shape, *([1] * (token_values.dim() - 2)))
        return token_values.gather(1, index.expand(-1, -1, *token_values.shape[2:]))

    def scatter(self, word_values: torch.Tensor, fill_value: int) -> torch.Tensor:
        """``(B, width)`` word values -> ``(B, n)``, placed at word starts, ``fill_value`` elsewhere."""
        # Each position reads its word's value (a gather, so nothing is written twice); only starts keep it.
        values = word_values.gather(1, self._word_number.clamp(min=0, max=self.width - 1))
        return torch.where(self.starts, values, torch.full_like(values, fill_value))


def viterbi_decode(
    emissions: torch.Tensor,
    mask: torch.Tensor,
    start_transitions: torch.Tensor,
    transitions: torch.Tensor,
    end_transitions: torch.Tensor,
) -> torch.Tensor:
    """The best tag path of a linear-chain CRF for every sequence of a batch, computed on tensors only.

    Max-product (Viterbi) recursion over the padded steps, ``delta_t(j) = max_i delta_{t-1}(i) + A[i, j] + e_t(j)``
    with ``delta_0 = start + e_0``, then backtracking through the arg-max pointers with ``gather``. A step that
    ``mask`` marks as padding carries ``delta`` (and, backwards, the tag) unchanged, so the loop runs over the static
    number of steps: no host synchronisation, no Python lists, one graph under ``torch.compile(fullgraph=True)`` and
    in ONNX export. The sums are formed in pytorch-crf's order, so its ``CRF.decode`` gets the same paths.

    Args:
        emissions: ``(B, T, K)`` emission scores.
        mask: ``(B, T)`` bool, left-packed (True on a prefix of each row). A row with no True step still gets a
            one-step path (pytorch-crf requires its first step on); callers discard it.
        start_transitions, transitions, end_transitions: the CRF's ``(K,)``, ``(K, K)`` (``[i, j]``: tag i followed
            by tag j) and ``(K,)`` scores.

    Returns:
        ``(B, T)`` int64 tags, 0 past each row's length.
    """
    num_steps = emissions.shape[1]
    score = start_transitions + emissions[:, 0]
    backpointers = []
    for step in range(1, num_steps):
        candidates = score.unsqueeze(2) + transitions + emissions[:, step].unsqueeze(1)
        best, best_previous = candidates.max(dim=1)
        score = torch.where(mask[:, step : step + 1], best, score)
        backpointers.append(best_previous)
    score = score + end_transitions
    tag = score.max(dim=1).indices
    tags = [tag]
    for step in range(num_steps - 1, 0, -1):
        previous = backpointers[step - 1].gather(1, tag.unsqueeze(1)).squeeze(1)
        tag = torch.where(mask[:, step], previous, tag)
        tags.append(tag)
    tags.reverse()
    # The first step counts even where the mask has none, as in pytorch-crf.
    keep = mask | (torch.arange(num_steps, device=mask.device) == 0)
    return torch.stack(tags, dim=1) * keep


class CRFTaggingHead(nn.Module):
    """Emission layer and linear-chain CRF (pytorch-crf) over the words of each post.

    The CRF takes its emissions in float32 whatever the model's dtype, and `MuSEForTokenClassification` keeps the
    CRF's transition scores in float32 when loaded with ``dtype=torch.bfloat16`` or ``torch.float16``, so that such
    a model decodes, scores (`marginals`) and trains its CRF in float32. Its recursions add scores over every word of
    a post and take log-sum-exps of them, which bf16's 8 significant bits would round enough to change tags and
    confidences.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        # Float32 whatever the default dtype a model is built under: its numerics need it (`_keep_in_fp32_modules_strict`).
        self.crf = CRF(num_labels, batch_first=True).to(torch.float32)

    def emissions(self, fusion_embeddings: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(fusion_embeddings))

    @staticmethod
    def _crf_mask(words: WordPositions) -> torch.Tensor:
        # pytorch-crf needs the first step of every sequence on; a post without words gets one dummy step,
        # whose score is discarded by the callers.
        mask = words.mask.clone()
        mask[:, 0] = True
        return mask

    def _log_likelihoods(self, emissions: torch.Tensor, words: WordPositions, labels: torch.Tensor) -> torch.Tensor:
        """log p(gold tags | post) of each post, ``(B,)``; the dummy step's score for a post without words."""
        word_labels = words.gather(labels)
        if bool(((word_labels < 0) & words.mask).any()):
            raise ValueError(
                "labels: every word's first sub-token needs a tag id >= 0 (found -100 at a word start). Align "
                "word labels with MuSEProcessor(word_labels=...), which puts them at first sub-tokens."
            )
        return self.crf(
            words.gather(emissions).float(), word_labels.clamp(min=0), mask=self._crf_mask(words), reduction="none"
        )

    def negative_log_likelihood(
        self, emissions: torch.Tensor, words: WordPositions, labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean over posts with at least one word of -log p(gold tags | post): the mean of the non-NaN values of
        `post_negative_log_likelihoods` (0 when no post has a word)."""
        has_words = words.counts > 0
        log_likelihood = self._log_likelihoods(emissions, words, labels)
        return -(log_likelihood * has_words).sum() / has_words.sum().clamp(min=1)

    def post_negative_log_likelihoods(
        self, emissions: torch.Tensor, words: WordPositions, labels: torch.Tensor
    ) -> torch.Tensor:
        """-log p(gold tags | post) of each post, ``(B,)`` in float32; NaN for a post without words, which has no
        tags to score.

        What `negative_log_likelihood` averages, kept per post: an evaluation gathered over processes drops the
        posts repeated to pad the last batches before averaging, which a batch mean would still carry.
        """
        log_likelihood = self._log_likelihoods(emissions, words, labels)
        return torch.where(words.counts > 0, -log_likelihood, torch.full_like(log_likelihood, float("nan")))

    def decode(self, emissions: torch.Tensor, words: WordPositions) -> torch.Tensor:
        """Viterbi paths, ``(B, n)``: the tag at each word's first sub-token, -100 elsewhere (`viterbi_decode`)."""
        crf = self.crf
        paths = viterbi_decode(
            words.gather(emissions).float(),
            words.mask,
            crf.start_transitions.float(),
            crf.transitions.float(),
            crf.end_transitions.float(),
        )
        return words.scatter(paths, fill_value=-100)

    def marginals(self, emissions: torch.Tensor, words: WordPositions) -> torch.Tensor:
        """Posterior probability of every tag at every word under the CRF, ``(B, words.width, num_labels)``.

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

    def tag_confidences(self, emissions: torch.Tensor, words: WordPositions, tag_ids: torch.Tensor) -> torch.Tensor:
        """The CRF's confidence in given tags: ``out[b, w] = p(tag of word w = tag_ids at its start | post b)``,
        ``(B, words.width)`` in float32, 0 for padding words.

        ``tag_ids`` are per sub-word position, like `decode`'s paths (the tag of a word read at its first sub-token;
        other positions are ignored). With the Viterbi paths these are the scores of the NER pipeline and of the
        training scripts' predictions file: the marginal (`marginals`) of the chosen tag at each word. Held to at
        most 1, as a probability is: in float32, ``alpha + beta - log Z`` subtracts sums that grow with the post's
        length and the emissions' size, so a near-certain tag's ``exp`` can come out above 1 (by one ulp at small
        scores, by 1e-4 and more at large ones), which a user would read as a broken probability. Nothing clamps
        below: ``exp`` is never negative.
        """
        word_tags = words.gather(tag_ids).clamp(min=0)
        chosen = self.marginals(emissions, words).gather(2, word_tags.unsqueeze(2)).squeeze(2)
        return chosen.clamp(max=1.0)


class SentimentHead(nn.Module):
    """Dropout and a linear layer on the fused cls vector (paper section 4.2)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled_fusion: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled_fusion))
