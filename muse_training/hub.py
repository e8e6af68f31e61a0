"""Upload of a finished run's output folder to the Hugging Face Hub (``--push_to_hub``)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

from .checkpoints import BEST_MODEL_MARKER, is_checkpoint_name

__all__ = ["create_hub_repo", "files_to_upload", "push_to_hub"]


def files_to_upload(output_dir: str | os.PathLike) -> list[str]:
    """The files of ``output_dir`` that `push_to_hub` uploads, relative and sorted.

    Everything except the training checkpoints (``step_*``/``epoch_*``), the best-model marker and hidden entries.
    """
    root = Path(output_dir)
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        top = relative.parts[0]
        if is_checkpoint_name(top) or top.startswith("."):
            continue
        if path.is_file() and relative.as_posix() != BEST_MODEL_MARKER:
            files.append(relative.as_posix())
    return files


def create_hub_repo(repo_id: str, token: str | None) -> str:
    """Create (or reuse) the model repository and return its full id.

    Called before training, so that a missing login or permission stops the run at once, not after training.
    """
    return HfApi(token=token).create_repo(repo_id, exist_ok=True).repo_id


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, token: str | None) -> list[str]:
    """Upload `files_to_upload(output_dir)` (model, processor, results, model card) to ``repo_id``."""
    files = files_to_upload(output_dir)
    api = HfApi(token=token)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        allow_patterns=files,
        commit_message="Upload MuSE model trained with run_mner.py/run_msa.py",
    )
    return files
