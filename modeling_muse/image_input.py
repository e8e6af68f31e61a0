"""Image input of the pipelines: a post's image from a PIL image, an array, a local file or an ``http(s)://`` URL.

A URL is fetched with the standard library, within limits that hold against slow, large and hostile servers:

- ``timeout`` seconds for the whole download, redirects included (not per read: a server that sends a byte a second
  never trips a read timeout);
- at most ``max_image_bytes`` bytes as they arrive. The request asks for the identity encoding and nothing is
  decompressed here, so what is counted is what is kept: a compressed body cannot inflate past the cap, and a server
  that compresses anyway is refused;
- at most `MAX_REDIRECTS` redirects, each to an ``http(s)://`` URL, under the same deadline and cap.

Neither transformers' `load_image` (no size limit) nor huggingface_hub's session (a Hub client that refuses every
request under ``HF_HUB_OFFLINE``) bounds a whole download, hence this module.
"""

from __future__ import annotations

import io
import os
import re
import threading
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from PIL import Image

from .processing_muse import URL_SCHEME, UnreadableImageError, decode_image, load_rgb_image

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_REDIRECTS",
    "ImageInput",
    "download_image_bytes",
    "load_post_image",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_IMAGE_BYTES = 20 * 2**20
MAX_REDIRECTS = 5
_CHUNK_BYTES = 64 * 1024
_HTTP_URL = re.compile(r"^https?://", re.IGNORECASE)

ImageInput = Image.Image | np.ndarray | str | os.PathLike


class _HttpRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, limited to `MAX_REDIRECTS` hops and to http(s) targets."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, request, fp, code, message, headers, new_url):  # noqa: ANN001 - urllib's signature
        if not _HTTP_URL.match(new_url):
            raise urllib.error.URLError(f"a redirect to {new_url[:100]!r}, which is not an http(s) URL")
        return super().redirect_request(request, fp, code, message, headers, new_url)


_OPENER = urllib.request.build_opener(_HttpRedirects())


def _fetch(url: str, timeout: float, max_bytes: int, outcome: dict[str, Any], abandoned: threading.Event) -> None:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "identity", "User-Agent": "muse-hf"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                outcome["error"] = f"the server sent a {encoding}-compressed body although none was asked for"
                return
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                outcome["too_large"] = f"its Content-Length is {int(declared)} bytes"
                return
            body = bytearray()
            while not abandoned.is_set():
                # read1: at most one read from the connection, so the cap is checked as the bytes arrive.
                chunk = response.read1(_CHUNK_BYTES)
                if not chunk:
                    outcome["body"] = bytes(body)
                    return
                body += chunk
                if len(body) > max_bytes:
                    outcome["too_large"] = f"it sent more than {max_bytes} bytes"
                    return
    except urllib.error.HTTPError as error:
        outcome["error"] = f"HTTP status {error.code} {error.reason}"
    except Exception as error:  # noqa: BLE001 - handed to the waiting caller, which reports it
        reason = getattr(error, "reason", None)
        outcome["error"] = f"{type(error).__name__}: {reason if reason is not None else error}"


def download_image_bytes(url: str, timeout: float, max_bytes: int, argument: str = "image") -> bytes:
    """The body of the ``http(s)://`` URL ``url``, within ``timeout`` seconds all told and at most ``max_bytes`` bytes.

    The download runs in a worker thread that the caller waits on until the deadline; a worker still blocked in a
    read then stops at its next chunk, or at the socket timeout, itself at most ``timeout``.

    Raises:
        TimeoutError: the download took longer than ``timeout``.
        UnreadableImageError: the body is (or is declared) larger than ``max_bytes``.
        ConnectionError: the server could not be reached, answered with an error status, redirected too often or
            elsewhere than http(s), or sent a compressed body.
    """
    if not _HTTP_URL.match(url):
        raise ValueError(f"{argument}: {url!r} is not an http(s):// URL.")
    outcome: dict[str, Any] = {}
    abandoned = threading.Event()
    worker = threading.Thread(
        target=_fetch, args=(url, timeout, max_bytes, outcome, abandoned), name=f"muse-fetch {url[:60]}", daemon=True
    )
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        abandoned.set()
        raise TimeoutError(
            f"{argument}: {url!r} did not arrive within timeout={timeout} s (a deadline for the whole download). "
            f"Raise timeout=, or download the image and pass a local path or a PIL image."
        )
    if "too_large" in outcome:
        reason = f"larger than max_image_bytes={max_bytes}: {outcome['too_large']}"
        raise UnreadableImageError(
            f"{argument}: {url!r} is {reason}. Raise max_image_bytes= if the image is wanted, or pass a local copy.",
            reason=reason,
        )
    if "error" in outcome:
        raise ConnectionError(
            f"{argument}: could not fetch {url!r} ({outcome['error']}). Check the URL and the network, or download the "
            f"image and pass a local path or a PIL image."
        )
    return outcome["body"]


def load_post_image(
    image: ImageInput,
    timeout: float = DEFAULT_TIMEOUT,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    argument: str = "image",
) -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image, a uint8 numpy array, a local path or an ``http(s)://`` URL.

    Pictures are read as `load_rgb_image` reads them. A URL is fetched by `download_image_bytes`.

    Raises:
        FileNotFoundError: no file at the path.
        ConnectionError: the URL could not be fetched (unreachable, an HTTP error status, a bad redirect).
        TimeoutError: the download took longer than ``timeout``.
        UnreadableImageError: (a `ValueError`) the download is over ``max_image_bytes``, or the picture cannot be read
            (see `load_rgb_image`).
        ValueError: a URL of another scheme than http(s), a numpy array that is not uint8.
        TypeError: any other kind of input.

    Errors start with ``argument`` and name the URL or path.
    """
    if isinstance(image, str):
        scheme = URL_SCHEME.match(image)
        if scheme and scheme.group(1).lower() in ("http", "https"):
            data = download_image_bytes(image, timeout, max_image_bytes, argument)
            return decode_image(io.BytesIO(data), image, argument)
        if scheme and not os.path.isfile(image):
            raise ValueError(
                f"{argument}: {image!r} is a {scheme.group(1)}:// URL; the pipelines accept http(s):// URLs, local "
                f"file paths, PIL images and uint8 numpy arrays. Download the image and pass its local path."
            )
    elif not isinstance(image, (os.PathLike, Image.Image, np.ndarray)):
        raise TypeError(
            f"{argument}: expected a PIL image, a uint8 numpy array, a local file path or an http(s):// URL, got "
            f"{type(image).__name__}."
        )
    return load_rgb_image(image, argument=argument)
