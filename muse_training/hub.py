"""Upload of a finished run's output folder to the Hugging Face Hub (``--push_to_hub``)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

from .checkpoints import BEST_MODEL_MARKER

__all__ = ["create_hub_repo", "files_to_upload", "push_to_hub"]


# What a served model consists of: weights, configurations, tokenizer and image-processor files, the code it carries,
# the model card, the results and predictions. Never argument files or logs (they may name secrets and local folders).
UPLOADED_SUFFIXES = (".safetensors", ".json", ".jsonl", ".py", ".md", ".txt", ".model", ".jinja")
NEVER_UPLOADED = (BEST_MODEL_MARKER,)


def files_to_upload(output_dir: str | os.PathLike) -> list[str]:
    """The files of ``output_dir`` that `push_to_hub` uploads, relative and sorted.

    The top-level files of the kinds in `UPLOADED_SUFFIXES`, except the best-model marker: no training checkpoints
    (``step_*``/``epoch_*``), no hidden entries, no argument files (``args.yaml``) or logs (``train.log``).
    """
    root = Path(output_dir)
    return sorted(
        path.name
        for path in root.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix in UPLOADED_SUFFIXES
        and path.name not in NEVER_UPLOADED
    )


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
