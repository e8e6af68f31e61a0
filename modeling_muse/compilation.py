"""`torch.compile` of a MuSE task model's inference path: the evaluation forward and, for NER, the CRF marginals.

The evaluation forward compiles into one graph (``fullgraph=True``): the words are packed to the static
``max_text_length`` outside training and decoded by the tensor Viterbi (`viterbi_decode`), so there is no graph
break and no host synchronisation in it. With ``dynamic=True`` (the default here) the batch size and the text
length are symbolic, so batches of other sizes and lengths reuse the compiled code (a batch of one post is
specialised once, as `torch.compile` does for size-1 axes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .heads import WordPositions

__all__ = ["compile_for_inference"]


def compile_for_inference(model: nn.Module, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Compile ``model``'s evaluation forward in place and return it (put in eval mode).

    ``model(...)`` then runs the compiled forward (`nn.Module.compile`: the model stays the same object, its
    attributes and ``state_dict`` unchanged). A tagging model's ``tagger.marginals`` (the NER pipeline's
    scores, `CRFTaggingHead.marginals`) is replaced on that instance by a compiled version that packs the words
    to ``max_text_length`` and returns the same values at the caller's width (padding words are carried
    unchanged through the forward-backward recursions, so the values are those of the batch's width).

    Args:
        model: a MuSE task model.
        options: `torch.compile` arguments; ``fullgraph=True`` and ``dynamic=True`` unless given (``backend``,
            ``mode``, ...).
    """
    settings = {"fullgraph": True, "dynamic": True, **(options or {})}
    model.eval()
    model.compile(**settings)
    tagger = getattr(model, "tagger", None)
    if tagger is not None and hasattr(tagger, "crf"):
        tagger.marginals = _static_width_marginals(tagger, model.config.max_text_length, settings)
    return model


def _static_width_marginals(
    tagger: nn.Module, width: int, settings: Mapping[str, Any]
) -> Callable[[torch.Tensor, WordPositions], torch.Tensor]:
    # The class's function, not the instance attribute this replaces.
    marginals = type(tagger).marginals

    def packed_to_width(emissions: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return marginals(tagger, emissions, WordPositions(starts, width=width))

    compiled = torch.compile(packed_to_width, **settings)

    def static_width_marginals(emissions: torch.Tensor, words: WordPositions) -> torch.Tensor:
        if words.width > width:
            return marginals(tagger, emissions, words)
        return compiled(emissions, words.starts)[:, : words.width]

    static_width_marginals.__doc__ = marginals.__doc__
    return static_width_marginals
