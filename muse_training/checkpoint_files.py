"""Reading a checkpoint folder's pickled files without running what they hold.

`accelerate.Accelerator.save_state` writes the optimizer, scheduler, sampler and random states with ``torch.save``
(pickle); a pickle can name any importable callable, so a replaced file would run its author's code when loaded.
Every such file of a checkpoint is read here first with torch's weights-only unpickler and an allow-list of exactly
the types these scripts save (tensors and plain containers, and the four numpy types of numpy's random state), and
a file holding anything else is refused naming it. While the checkpoint is then loaded, every ``torch.load`` is held
to the same rules (`weights_only_loading`), including those of accelerate's FSDP and DeepSpeed paths; the one file
those read with plain `pickle`, torch.distributed.checkpoint's ``.metadata``, is checked against its own allow-list.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .environment import environment_variables

__all__ = [
    "PICKLED_SUFFIXES",
    "READ_ONLY_PLAIN_VALUES",
    "RNG_STATE_GLOBALS",
    "UnsafeCheckpointFile",
    "check_pickled_files",
    "load_weights_only",
    "weights_only_loading",
]

# What numpy's random state (``np.random.get_state()``: a name, a uint32 array and three numbers) pickles as: the
# array's reconstructor (looked up from numpy itself, whose module moved in numpy 2), the array and dtype classes.
RNG_STATE_GLOBALS = (
    np.ndarray(0).__reduce__()[0],
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
)
# The files torch.save writes in a checkpoint (accelerate: .bin and .pkl; GradScaler, DeepSpeed: .pt); safetensors
# and JSON files cannot carry code.
PICKLED_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
READ_ONLY_PLAIN_VALUES = (
    "a checkpoint is read for tensors and plain values only, since unpickling anything else can run code"
)
# torch.distributed.checkpoint's index (``.metadata``, a plain pickle): its dataclasses, paths, sizes, layouts (and
# dtypes, `_AllowListUnpickler`).
_DCP_METADATA_FILE = ".metadata"
_DCP_METADATA_GLOBALS = frozenset(
    {
        *(f"torch.distributed.checkpoint.metadata.{name}" for name in (
            "Metadata", "MetadataIndex", "TensorProperties", "TensorStorageMetadata", "BytesStorageMetadata",
            "ChunkStorageMetadata", "StorageMeta", "_MEM_FORMAT_ENCODING",
        )),
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.Size",
        "torch.serialization._get_layout",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "collections.OrderedDict",
    }
)  # fmt: skip


class UnsafeCheckpointFile(ValueError):
    """A checkpoint file that holds something other than what these scripts save; the message names the file.

    Attributes:
        path: the file.
        reason: what the restricted unpickler met (a global outside the allow-list, damaged data).
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} cannot be read ({reason}); {READ_ONLY_PLAIN_VALUES}")


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load`` of ``path`` with the weights-only unpickler and `RNG_STATE_GLOBALS` allowed, on the CPU.

    Raises:
        UnsafeCheckpointFile: the file names a type or callable outside the allow-list, or is no torch file.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(RNG_STATE_GLOBALS)), warnings.catch_warnings():
            # A foreign pickle's protocol draws a warning from torch before the refusal that matters.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            try:
                # Memory-mapped: checking a large optimizer state reads its pickle, not its tensors' bytes.
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - the unpickler and torch's readers raise many kinds
        raise UnsafeCheckpointFile(path, _reason(error)) from error


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # A dtype pickles as the global naming it (torch.float32): a value, not a callable.
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if not is_dtype and f"{module}.{name}" not in _DCP_METADATA_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return super().find_class(module, name)


def _check_dcp_metadata(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            _AllowListUnpickler(handle).load()
    except Exception as error:  # noqa: BLE001 - whatever a hostile or damaged pickle raises
        raise UnsafeCheckpointFile(path, f"as a torch.distributed.checkpoint index: {_reason(error)}") from error


def check_pickled_files(folder: str | os.PathLike) -> list[Path]:
    """Read every pickled file under ``folder`` (`PICKLED_SUFFIXES`, torch.distributed.checkpoint's ``.metadata``)
    with its allow-list, before anything else loads them; return them.

    Raises:
        UnsafeCheckpointFile: for the first file that holds anything else, naming it, or for a link that leads out
            of ``folder`` (its files would be loaded unchecked: a walk does not enter linked folders).
    """
    checked = []
    for path in sorted(_entries_within(Path(folder))):
        if not path.is_file():
            continue
        if path.name == _DCP_METADATA_FILE:
            _check_dcp_metadata(path)
        elif path.suffix in PICKLED_SUFFIXES:
            load_weights_only(path)
        else:
            continue
        checked.append(path)
    return checked


def _entries_within(root: Path) -> Iterator[Path]:
    """Every file and folder under ``root``, refusing links that lead outside it; a link within it leads to entries
    the walk reaches anyway."""
    resolved_root = root.resolve()
    for directory, folders, files in os.walk(root):
        for name in (*folders, *files):
            path = Path(directory, name)
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.is_relative_to(resolved_root):
                    raise UnsafeCheckpointFile(
                        path, f"a link to {target}, outside the checkpoint; copy what it links to into the checkpoint"
                    )
            yield path


@contextmanager
def weights_only_loading() -> Iterator[None]:
    """Inside the block every ``torch.load`` uses the weights-only unpickler, also where the caller asks otherwise
    (accelerate's custom states, torch.distributed.checkpoint's non-tensor values), with `RNG_STATE_GLOBALS`
    allowed; the environment and torch's allow-list are restored afterwards."""
    # torch reads both variables at every load; setting both is an error, so the opposite one goes meanwhile.
    forced = {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": None}
    with environment_variables(forced), torch.serialization.safe_globals(list(RNG_STATE_GLOBALS)):
        yield


def _reason(error: BaseException) -> str:
    """What the unpickler met, without torch's advice around it (to load the file with ``weights_only=False``)."""
    text = " ".join(str(error).split())
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Please use| Check the documentation|$)", text)
    return f"{type(error).__name__}: {(found.group(1) if found else text)[:200]}"
