"""When a pretrained tower may not be downloaded: huggingface_hub's own offline mode, asked before a download.

Whether the Hub can be reached is left to huggingface_hub itself (its proxies, endpoint and errors): with
``HF_HUB_OFFLINE=1`` loading fails at once with a message naming the model and the way out; otherwise the download is
tried and its error is reported with the model's name.
"""

from __future__ import annotations

from huggingface_hub import is_offline_mode

__all__ = ["OFFLINE_REASON", "offline_reason"]

OFFLINE_REASON = "huggingface_hub's offline mode is on (HF_HUB_OFFLINE=1)"


def offline_reason() -> str | None:
    """Why nothing may be downloaded from the Hub now, or None when downloads are allowed."""
    return OFFLINE_REASON if is_offline_mode() else None
