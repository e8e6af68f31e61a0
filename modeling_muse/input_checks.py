"""The checks of a MuSE forward's inputs, with errors that say what shape was expected and where it comes from."""

from __future__ import annotations

import torch

from .configuration_muse import MuSEConfig

__all__ = ["check_inputs"]


def check_inputs(
    config: MuSEConfig,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    pixel_values: torch.Tensor | None,
) -> None:
    if config.use_text:
        if input_ids is None or input_ids.dim() != 2:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"input_ids must be a (batch, max_text_length) tensor of token ids, got shape {shape}.")
        if input_ids.shape[1] > config.max_text_length:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} positions but this MuSE model fuses text position j with image "
                f"token j and has {config.num_image_tokens} image tokens: truncate to at most max_text_length="
                f"{config.max_text_length} (MuSEProcessor does this)."
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}."
            )
    if config.use_image:
        if pixel_values is None:
            raise ValueError("pixel_values is required: MuSE fuses text with an image (MuSEProcessor(images=...)).")
        batch = input_ids.shape[0] if config.use_text else pixel_values.shape[0]
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[0] != batch:
            raise ValueError(
                f"pixel_values must be a (batch={batch}, 3, height, width) tensor, got shape "
                f"{tuple(pixel_values.shape)}."
            )
