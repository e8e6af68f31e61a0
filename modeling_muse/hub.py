"""The Hugging Face Hub as MuSE meets it: whether a tower may be downloaded now, and whether a name is a Hub id.

Whether the Hub can be reached is left to huggingface_hub itself (its proxies, endpoint and errors): with
``HF_HUB_OFFLINE=1`` loading fails at once with a message naming the model and the way out; otherwise the download is
tried and its error is reported with the model's name. A tower named by Hub id (or timm name) means the same on any
machine, a folder does not: `MuSEConfig.to_dict` keeps only the former in a saved configuration.
"""

from __future__ import annotations

import os
import re

from huggingface_hub import is_offline_mode

__all__ = ["OFFLINE_REASON", "is_hub_id", "is_vision_model_id", "offline_reason"]

OFFLINE_REASON = "huggingface_hub's offline mode is on (HF_HUB_OFFLINE=1)"

# "name" or "namespace/name", as the Hugging Face Hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def offline_reason() -> str | None:
    """Why nothing may be downloaded from the Hub now, or None when downloads are allowed."""
    return OFFLINE_REASON if is_offline_mode() else None


def is_hub_id(name_or_path: str | os.PathLike | None) -> bool:
    """Whether ``name_or_path`` reads as a Hugging Face Hub repository id rather than a folder on this machine."""
    if not name_or_path:
        return False
    name = os.fspath(name_or_path)
    return bool(_HUB_ID.match(name)) and not os.path.exists(name)


def is_vision_model_id(name_or_path: str | os.PathLike | None) -> bool:
    """Whether an image tower's name is one that means the same on any machine: a timm name or Hub id (with or
    without timm's ``hf-hub:`` prefix), not a folder (timm's ``local-dir:`` prefix included)."""
    if not name_or_path:
        return False
    name = os.fspath(name_or_path)
    if name.startswith("local-dir:"):
        return False
    return is_hub_id(name.removeprefix("hf-hub:"))
