"""Upload of a finished run's own files to the Hugging Face Hub (``--push_to_hub``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from accelerate.logging import get_logger
from huggingface_hub import CommitOperationAdd, HfApi

from .checkpoints import MODEL_CARD_FILE, RESULTS_FILE, marker_files
from .lora import ADAPTER_CONFIG_FILE
from .predictions import PREDICTIONS_FILE

__all__ = ["create_hub_repo", "files_to_upload", "published_adapter_config", "push_to_hub"]

logger = get_logger(__name__)


def files_to_upload(output_dir: str | os.PathLike, include_predictions: bool = False) -> list[str]:
    """The files of ``output_dir`` that `push_to_hub` uploads, sorted: the run's own and nothing else.

    Those the kept model's marker lists (model, configuration, processor, tokenizer and code files, as `save_model`
    wrote them), the model card and the results, and ``predictions.jsonl`` only with ``include_predictions`` (it holds
    the test posts' text). Never checkpoints, the marker, argument files, logs, links, or anything else in the folder.
    """
    root = Path(output_dir)
    names = {*marker_files(root), MODEL_CARD_FILE, RESULTS_FILE}
    if include_predictions:
        names.add(PREDICTIONS_FILE)
    return sorted(name for name in names if (root / name).is_file() and not (root / name).is_symlink())


def create_hub_repo(repo_id: str, token: str | None, private: bool | None = None) -> tuple[str, bool]:
    """Create (or reuse) the model repository; return its full id and whether it is private.

    Called before training, so that a missing login or permission stops the run at once, not after training. The
    visibility is logged; an existing repository whose visibility is not the asked ``private`` is refused (the Hub
    keeps an existing repository's visibility, so the upload would go where the run was told it would not).
    """
    api = HfApi(token=token)
    full_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    is_private = bool(api.repo_info(full_id).private)
    if private is not None and is_private != private:
        raise SystemExit(
            f"--hub_private_repo {str(private).lower()}: the Hub repository {full_id} exists and is "
            f"{_visibility(is_private)}; change its visibility on the Hub, or choose another --hub_model_id."
        )
    logger.info(
        "--push_to_hub: the model goes to https://huggingface.co/%s, a %s repository%s.",
        full_id,
        _visibility(is_private),
        "" if is_private else " (anyone can read and download it; --hub_private_repo true creates a new one private)",
    )
    return full_id, is_private


def _visibility(is_private: bool) -> str:
    return "private" if is_private else "public"


def published_adapter_config(path: str | os.PathLike, base_model_hub_id: str | None) -> bytes:
    """``adapter_config.json`` as uploaded: the base model named by its Hub id, or not at all (null) when it is a folder
    of this machine, whose path means nothing elsewhere and says where the user keeps their files."""
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model_hub_id
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    token: str | None,
    include_predictions: bool = False,
    base_model_hub_id: str | None = None,
) -> list[str]:
    """Upload `files_to_upload(output_dir, include_predictions)` to ``repo_id`` in one commit; an adapter's
    configuration goes as `published_adapter_config` (``base_model_hub_id``: the base's Hub id, or None)."""
    root = Path(output_dir)
    files = files_to_upload(root, include_predictions)
    operations = [
        CommitOperationAdd(
            path_in_repo=name,
            path_or_fileobj=(
                published_adapter_config(root / name, base_model_hub_id)
                if name == ADAPTER_CONFIG_FILE
                else str(root / name)
            ),
        )
        for name in files
    ]
    HfApi(token=token).create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message="Upload MuSE model trained with run_mner.py/run_msa.py",
    )
    return files
