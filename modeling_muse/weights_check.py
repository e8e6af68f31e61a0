"""A local folder's configuration held against its weight files before anything is allocated
(`MuSEPreTrainedModel.from_pretrained`): a ``config.json`` claiming sizes its weights do not have is refused."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from transformers import PreTrainedConfig, PreTrainedModel

__all__ = ["NEW_WEIGHTS_ALLOWANCE", "ConfigurationWeightsMismatchError", "check_configuration_against_weights"]

# How many bytes of weights a folder's configuration may ask for beyond what its weight files hold, whatever they hold:
# new heads and the decoders of a small model fit in it; a configuration claiming far larger sizes does not.
NEW_WEIGHTS_ALLOWANCE = 256 * 2**20


class ConfigurationWeightsMismatchError(RuntimeError):
    """A folder's configuration asks for weights its weight files do not hold (a RuntimeError, as transformers' own
    size-mismatch error is)."""


def check_configuration_against_weights(
    model_class: type[PreTrainedModel],
    config: PreTrainedConfig,
    folder: Path,
    subfolder: str = "",
    ignore_mismatched_sizes: bool = False,
) -> None:
    """Refuse, before any memory is allocated, a configuration whose sizes disagree with the folder's weights.

    ``model_class(config)`` is built on the meta device; each tensor of the folder's ``*.safetensors`` files is read
    from the file header only. A tensor whose shape differs from the model's is refused (unless
    ``ignore_mismatched_sizes``), and so is a configuration that asks for more bytes of weights that the files lack
    (new decoders, heads, towers, and resized tensors) than the files hold, or than `NEW_WEIGHTS_ALLOWANCE`: every
    legitimate addition to a saved MuSE (decoders for training on, a new head) is smaller than the model it is added
    to.
    """
    weight_files = sorted((folder / subfolder).glob("*.safetensors"))
    if not weight_files:
        return
    from safetensors import safe_open

    with torch.device("meta"):
        expected = {
            name: (tuple(tensor.shape), tensor.element_size())
            for name, tensor in model_class(copy.deepcopy(config)).state_dict().items()
        }
    prefix = f"{model_class.base_model_prefix}."
    found, held_bytes = {}, 0
    for weight_file in weight_files:
        with safe_open(weight_file, framework="pt") as weights:
            for key in weights.keys():
                shape = tuple(weights.get_slice(key).get_shape())
                name = key if key in expected else prefix + key if prefix + key in expected else key.removeprefix(prefix)
                held_bytes += math.prod(shape) * expected.get(name, ((), 4))[1]
                found[name] = (shape, weight_file.name)
    new_bytes = 0
    for name, (shape, element_size) in expected.items():
        if name not in found:
            new_bytes += math.prod(shape) * element_size
            continue
        file_shape, file_name = found[name]
        if file_shape != shape:
            if not ignore_mismatched_sizes:
                raise ConfigurationWeightsMismatchError(
                    f"{folder / 'config.json'} asks for {name} of shape {list(shape)}, but {file_name} holds "
                    f"{list(file_shape)}: the configuration and the weights disagree. Use the configuration saved "
                    f"with these weights, or pass ignore_mismatched_sizes=True to start the mismatched tensors afresh."
                )
            new_bytes += math.prod(shape) * element_size
    if new_bytes > max(held_bytes, NEW_WEIGHTS_ALLOWANCE):
        raise ConfigurationWeightsMismatchError(
            f"{folder / 'config.json'} asks for {new_bytes / 2**20:.1f} MiB of weights that the folder's weight files "
            f"({', '.join(file.name for file in weight_files)}) do not hold, more than the "
            f"{held_bytes / 2**20:.1f} MiB they do hold (and than the {NEW_WEIGHTS_ALLOWANCE / 2**20:.0f} MiB any "
            f"folder may add): the configuration does not describe these weights. Use the configuration saved with "
            f"them."
        )
