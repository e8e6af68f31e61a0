"""The CrossTransformer's inter-modal exchange (paper section 3.2, eqs. 10-11).

In an exchange layer, after the attention sub-module and before the feed-forward network, each modality's
least-attended tokens are moved towards the other modality's mean token:

1. a = the attention of the cls query to every token, averaged over heads, before attention dropout.
2. Per sample, among the valid non-cls tokens, the k = ceil(theta * n_valid) tokens with the smallest a are
   selected; padding is never selected.
3. A selected token x becomes x + mean(other modality's valid non-cls tokens) (``mode="residual"``, eqs.
   10-11) or that mean alone (``mode="replace"``). Both means are taken before any token of the layer
   changes.

Deliberate difference from the public reference code (documented in the README): there the mean also
covered the cls token and padding, and padding positions could be selected.

Everything is vectorised over samples and tokens and stays on the device: no Python loop, no host sync.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["exchange_least_attended_tokens", "num_tokens_to_exchange"]

# theta * n_valid is computed in floating point, where e.g. 0.1 * 30 = 3.0000000000000004; the tolerance keeps
# ceil() from turning such products into one token too many.
_CEIL_TOLERANCE = 1e-6


def num_tokens_to_exchange(exchange_ratio: float, num_valid: torch.Tensor) -> torch.Tensor:
    """k = ceil(theta * n_valid) per sample, with a 1e-6 tolerance against floating-point round-up."""
    return torch.ceil(exchange_ratio * num_valid.double() - _CEIL_TOLERANCE).clamp(min=0).to(num_valid.dtype)


def exchange_least_attended_tokens(
    states: torch.Tensor,
    cls_attention: torch.Tensor,
    valid_mask: torch.Tensor,
    exchange_ratio: float,
    mode: Literal["residual", "replace"] = "residual",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange the least cls-attended tokens of each modality with the other modality's mean token.

    Args:
        states: ``(2, B, 1 + n, d)``, modality 0 = text, 1 = image, position 0 = the CrossTransformer's cls.
        cls_attention: ``(2, B, 1 + n)``, row 0 of each modality's attention map, averaged over heads.
        valid_mask: ``(2, B, n)`` bool, True at real (non-padding) non-cls tokens.
        exchange_ratio: theta in [0, 1].
        mode: ``"residual"`` (eqs. 10-11) or ``"replace"``.

    Returns:
        The updated states (same shape) and the boolean exchange mask ``(2, B, n)``.
    """
    tokens = states[:, :, 1:]
    num_valid = valid_mask.sum(dim=-1)
    num_selected = num_tokens_to_exchange(exchange_ratio, num_valid)

    scores = cls_attention[:, :, 1:].masked_fill(~valid_mask, float("inf"))
    order = scores.argsort(dim=-1, stable=True)
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(-1, order, positions)
    selected = ranks < num_selected.unsqueeze(-1)

    valid = valid_mask.unsqueeze(-1).to(tokens.dtype)
    means = (tokens * valid).sum(dim=-2) / num_valid.clamp(min=1).unsqueeze(-1).to(tokens.dtype)
    other_mean = means.flip(0).unsqueeze(-2)
    if mode == "residual":
        exchanged = tokens + selected.unsqueeze(-1).to(tokens.dtype) * other_mean
    elif mode == "replace":
        exchanged = torch.where(selected.unsqueeze(-1), other_mean.expand_as(tokens), tokens)
    else:
        raise ValueError(f"exchange mode must be 'residual' or 'replace', got {mode!r}.")
    return torch.cat([states[:, :, :1], exchanged], dim=2), selected
