"""Whether the Hugging Face Hub can be reached, asked before a download that would otherwise retry for a minute.

huggingface_hub retries a failed connection with back-off (about 46 s in all) before it reports a generic
`LocalEntryNotFoundError`; loading pretrained towers checks first, so that an offline machine gets an immediate
error that names the model and the way out.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from huggingface_hub import constants, is_offline_mode

__all__ = ["hub_unreachable_reason"]

_PROBE_TIMEOUT_SECONDS = 3.0


def hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be used right now (offline mode, or no connection to its endpoint), or None if it can."""
    if is_offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=_PROBE_TIMEOUT_SECONDS).close()
    except OSError as error:
        return f"{constants.ENDPOINT} cannot be reached ({error})"
    return None
