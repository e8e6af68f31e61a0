"""The CrossTransformer's inter-modal exchange (paper section 3.2, eqs. 10-11).

In an exchange layer, after the attention sub-module and before the feed-forward network, each modality's
least-attended tokens are moved towards the other modality's mean token:

1. a = the attention of the cls query to every token, averaged over heads, before attention dropout.
2. Per sample, among the valid non-cls tokens, the k = ceil(theta * n_valid) tokens with the smallest a are
   selected, of tokens with equal a the earlier positions first; padding is never selected.
3. A selected token x becomes x + mean(other modality's valid non-cls tokens) (``mode="residual"``, eqs.
   10-11) or that mean alone (``mode="replace"``). Both means are taken before any token of the layer
   changes.

Deliberate difference from the public reference code (documented in the README): there the mean also
covered the cls token and padding, and padding positions could be selected.

Everything is vectorised over samples and tokens and stays on the device: no loop over samples or tokens, no host
sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

__all__ = ["exchange_least_attended_tokens", "num_tokens_to_exchange"]

# theta * n_valid is computed in floating point, where e.g. 0.1 * 30 = 3.0000000000000004; the tolerance keeps
# ceil() from turning such products into one token too many.
_CEIL_TOLERANCE = 1e-6


def num_tokens_to_exchange(exchange_ratio: float, num_valid: torch.Tensor) -> torch.Tensor:
    """k = ceil(theta * n_valid) per sample, with a 1e-6 tolerance against floating-point round-up."""
    return torch.ceil(exchange_ratio * num_valid.double() - _CEIL_TOLERANCE).clamp(min=0).to(num_valid.dtype)


def _least_attended(cls_attention: torch.Tensor, valid_mask: torch.Tensor, exchange_ratio: float) -> torch.Tensor:
    """The k = ceil(theta * n_valid) valid tokens of each sample with the smallest cls attention, ``(B, n)`` bool.

    ``cls_attention`` is ``(B, n)`` without the cls position. Of tokens with equal attention the earlier positions
    are taken first (docs/design.md, section 3). `torch.topk` leaves the order of equal values unspecified (backends
    and exporters differ), so only its values are used: the k-th smallest attention is the same whichever tied token
    a backend puts first. Every token below it is selected, and of the tokens equal to it the earliest ones, up to k.
    """
    num_selected = num_tokens_to_exchange(exchange_ratio, valid_mask.sum(dim=-1)).unsqueeze(-1)
    scores = cls_attention.masked_fill(~valid_mask, float("inf"))
    ascending = scores.topk(scores.shape[-1], dim=-1, largest=False).values
    # With k = 0 the smallest score serves: nothing lies below it and no tied token fits the quota of 0.
    kth_smallest = ascending.gather(-1, (num_selected - 1).clamp(min=0))
    below = scores < kth_smallest
    tied = scores == kth_smallest
    tied_quota = num_selected - below.sum(dim=-1, keepdim=True)
    return below | (tied & (tied.cumsum(dim=-1) <= tied_quota))


def _valid_mean(tokens: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each sample's valid tokens, ``(B, d)``."""
    weights = valid_mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(dim=-2) / valid_mask.sum(dim=-1, keepdim=True).clamp(min=1).to(tokens.dtype)


def exchange_least_attended_tokens(
    states: Sequence[torch.Tensor],
    cls_attentions: Sequence[torch.Tensor],
    valid_masks: Sequence[torch.Tensor],
    exchange_ratio: float,
    mode: Literal["residual", "replace"] = "residual",
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Exchange the least cls-attended tokens of each modality with the other modality's mean token.

    The two modalities may differ in length: the text stream is padded to its batch's longest post, the image
    stream always holds P*P tokens.

    Args:
        states: ``[text, image]``, each ``(B, 1 + n_m, d)`` with position 0 the CrossTransformer's cls.
        cls_attentions: ``[text, image]``, each ``(B, 1 + n_m)``: row 0 of the modality's attention map, averaged
            over heads.
        valid_masks: ``[text, image]``, each ``(B, n_m)`` bool, True at real (non-padding) non-cls tokens.
        exchange_ratio: theta in [0, 1].
        mode: ``"residual"`` (eqs. 10-11) or ``"replace"``.

    Returns:
        The updated ``[text, image]`` states (same shapes) and their boolean exchange masks ``[(B, n_t), (B, n_i)]``.
    """
    if mode not in ("residual", "replace"):
        raise ValueError(f"exchange mode must be 'residual' or 'replace', got {mode!r}.")
    selections = [
        _least_attended(attention[:, 1:], valid, exchange_ratio) for attention, valid in zip(cls_attentions, valid_masks)
    ]
    # Both means are taken before either modality changes.
    means = [_valid_mean(stream[:, 1:], valid) for stream, valid in zip(states, valid_masks)]
    exchanged_states = []
    for stream, selected, other_mean in zip(states, selections, reversed(means)):
        tokens, other_mean = stream[:, 1:], other_mean.unsqueeze(-2)
        if mode == "residual":
            tokens = tokens + selected.unsqueeze(-1).to(tokens.dtype) * other_mean
        else:
            tokens = torch.where(selected.unsqueeze(-1), other_mean.expand_as(tokens), tokens)
        exchanged_states.append(torch.cat([stream[:, :1], tokens], dim=1))
    return exchanged_states, selections
