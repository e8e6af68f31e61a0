"""Image input: a post's image from a PIL image, an array, a local file or an ``http(s)://`` URL, as 8-bit RGB.

How pictures are read (`load_rgb_image`, `decode_image`): files are decoded completely and turned upright by their
EXIF orientation; 16-bit and [0, 1] float greyscale are scaled by their bit depth; modes without a defined 8-bit
reading, empty images, decompression bombs and pictures that would take more than ``max_decoded_bytes`` decoded
(`DEFAULT_MAX_DECODED_BYTES`, checked on the header before any pixel is decoded) are refused with
`UnreadableImageError`. The processor, the dataset builders, the pipelines, the endpoint handler and the demo all read
images here, so that training and serving see the same pixels and the same limits hold everywhere.

A URL (pipelines and dataset preparation, `load_post_image`, `download_image_bytes`) is fetched by
`url_fetch.fetch_url` with the standard library, within limits that hold against slow, large and hostile servers and
against URLs that point into the serving machine's own network:

- only public (globally routable) addresses, checked on every address the host name resolves to and connected to
  exactly, at every redirect; ``allow_private_urls=True`` also fetches private, loopback and link-local ones;
- ``timeout`` seconds for the whole download, redirects included, on every read (not per read: a server that sends a
  byte a second is cut off at the deadline); no thread is started and nothing stays open after the call;
- at most ``max_image_bytes`` bytes as they arrive. The request asks for the identity encoding and nothing is
  decompressed here, so what is counted is what is kept: a compressed body cannot inflate past the cap;
- at most `MAX_REDIRECTS` redirects, each to an ``http(s)://`` URL, under the same deadline and cap.

Every fetch that fails, for whatever reason (a refused address, no answer, a refused connection, an error status, a
TLS failure, a bad redirect), raises one `ImageFetchError` with one message, so that a URL's sender cannot map the
network behind the server by the errors it gets; only a body over ``max_image_bytes`` is reported as such.

Neither transformers' `load_image` (no size limit, any address) nor huggingface_hub's session (a Hub client that
refuses every request under ``HF_HUB_OFFLINE``) bounds a whole download, hence this module.
"""

from __future__ import annotations

import io
import logging
import os
import re
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageMode, ImageOps, UnidentifiedImageError

from .url_fetch import (
    MAX_REDIRECTS,
    AddressPolicy,
    FetchFailedError,
    FetchTooLargeError,
    fetch_url,
    is_public_address,
    is_usable_address,
)

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_DECODED_BYTES",
    "MAX_REDIRECTS",
    "PLACEHOLDER_COLOR",
    "PLACEHOLDER_SIZE",
    "ImageFetchError",
    "ImageInput",
    "UnreadableImageError",
    "decode_image",
    "decoded_bytes",
    "download_image_bytes",
    "is_http_url",
    "load_post_image",
    "load_rgb_image",
    "placeholder_image",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_IMAGE_BYTES = 20 * 2**20
# 128 MiB: a 44-megapixel photo as 8-bit RGB. A post's picture is shrunk to the vision tower's input (224 x 224 in the
# paper), so larger pictures buy nothing and cost memory in proportion to their claimed size.
DEFAULT_MAX_DECODED_BYTES = 128 * 2**20
# What `decode_image` and `load_rgb_image` refuse when no max_decoded_bytes is passed (the processor, the dataset
# builders); raise it as PIL.Image.MAX_IMAGE_PIXELS is raised, to read larger pictures you trust.
MAX_DECODED_BYTES = DEFAULT_MAX_DECODED_BYTES
_URL_SHOWN_CHARACTERS = 200
_HTTP_URL = re.compile(r"^https?://", re.IGNORECASE)

# A scheme of two characters at least, so that a Windows path such as "C://photos/a.jpg" is not taken for a URL.
URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
PLACEHOLDER_SIZE = (224, 224)
PLACEHOLDER_COLOR = (128, 128, 128)
# PIL's modes for 16-bit greyscale. "I" (32-bit integers) is where PIL puts 16-bit data from PPM/PGM files and
# `convert("I")`, so it is read on the same 0..65535 scale.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SIXTEEN_BIT_MAX = 65535
# Modes with 8 bits per channel whose conversion to RGB PIL defines.
_EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")

ImageInput = Image.Image | np.ndarray | str | os.PathLike


class UnreadableImageError(ValueError):
    """An image input that names a picture which cannot be read as 8-bit RGB.

    Raised for undecodable files (damaged, truncated, a header without image data), decompression bombs, pictures over
    ``max_decoded_bytes``, pixel formats without a defined 8-bit reading (see `load_rgb_image`), empty images and, in
    the pipelines, downloads over the size limit. The message starts with the argument and names the file or URL;
    ``reason`` is the cause alone.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


class ImageFetchError(ConnectionError):
    """An image URL that was not fetched, whatever the cause: an address that is not fetched (by default anything but
    a public one), no answer in time, a refused connection, an error status, a TLS failure, a bad redirect or a
    compressed body. The message is the same for all of them (see the module docs); the cause is logged at DEBUG level
    by the `modeling_muse.image_input` logger, for the operator."""


def placeholder_image() -> Image.Image:
    """The stand-in for a missing image, used alike by the dataset builders and the pipelines: 224x224, mid-grey."""
    return Image.new("RGB", PLACEHOLDER_SIZE, PLACEHOLDER_COLOR)


def _upright(image: Image.Image) -> Image.Image:
    # As `datasets.Image` decodes training images and transformers' `load_image` reads pipeline inputs: a phone photo
    # stored sideways with an EXIF orientation is turned the way it is shown.
    try:
        if image.getexif().get(ExifTags.Base.Orientation) in (None, 1):
            return image
        return ImageOps.exif_transpose(image)
    # A damaged EXIF block says nothing reliable about the orientation; the pixels themselves are fine.
    except Exception:  # noqa: BLE001
        return image


def decoded_bytes(mode: str, width: int, height: int) -> int:
    """The bytes a ``width`` x ``height`` picture of PIL mode ``mode`` takes decoded: its pixels times the larger of
    its mode's bytes per pixel (2 for 16-bit greyscale, 4 for RGBA or 32-bit modes, ...) and the 3 of the 8-bit RGB
    copy it is read into. A mode PIL does not describe counts 4 bytes per band."""
    try:
        description = ImageMode.getmode(mode)
        per_pixel = len(description.bands) * np.dtype(description.typestr).itemsize
    except (KeyError, TypeError, ValueError):
        per_pixel = 4 * max(len(mode), 1)
    return width * height * max(per_pixel, 3)


def _check_decoded_size(image: Image.Image, max_decoded_bytes: int | None, described: str) -> None:
    """Refuse, from its header alone, a picture that would take more than ``max_decoded_bytes`` decoded."""
    limit = MAX_DECODED_BYTES if max_decoded_bytes is None else max_decoded_bytes
    size = decoded_bytes(image.mode, image.width, image.height)
    if size > limit:
        reason = (
            f"refused before decoding: {image.width}x{image.height} pixels of PIL mode {image.mode!r} would take "
            f"{size} bytes decoded, over max_decoded_bytes={limit}"
        )
        raise UnreadableImageError(
            f"{described} is {reason}. If you trust the picture, pass max_decoded_bytes= to the pipeline (or raise "
            f"modeling_muse.image_input.MAX_DECODED_BYTES, now {MAX_DECODED_BYTES}), or pass a downscaled copy.",
            reason=reason,
        )


def decode_image(
    file: str | os.PathLike | IO[bytes], name: str, argument: str = "images", max_decoded_bytes: int | None = None
) -> Image.Image:
    """Decode an image file completely (all of its pixel data, not only the header) into an upright 8-bit RGB image,
    as `load_rgb_image` reads files.

    Args:
        file: a path or a binary file object.
        name: the path or URL, for messages.
        argument: the argument the image came in, for messages.
        max_decoded_bytes: the most bytes the picture may take decoded (`decoded_bytes`, read from the header before
            any pixel is decoded); None: `MAX_DECODED_BYTES`, `DEFAULT_MAX_DECODED_BYTES` unless raised.

    Raises:
        UnreadableImageError: the data cannot be decoded, PIL refuses it as a decompression bomb, it would take more
            than ``max_decoded_bytes`` decoded, or its pixel format has no 8-bit reading (see `load_rgb_image`).
    """

    def unreadable(reason: str) -> UnreadableImageError:
        return UnreadableImageError(f"{argument}: {name!r} is not a readable image ({reason}).", reason=reason)

    try:
        with Image.open(file) as opened:
            if not opened.tile:
                raise unreadable("it has an image header but no image data")
            # PIL refuses images over twice MAX_IMAGE_PIXELS when it opens them and only warns between one and two
            # times; decoded, such an image would take gigabytes. Both are refused before any pixel is decoded.
            if opened.width * opened.height > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(
                    f"Image size ({opened.width * opened.height} pixels) exceeds limit of {Image.MAX_IMAGE_PIXELS} "
                    f"pixels"
                )
            # The pixel limit alone lets through a 16-bit picture of 89 megapixels, gigabytes on the way to RGB.
            _check_decoded_size(opened, max_decoded_bytes, f"{argument}: {name!r}")
            opened.load()
            upright = _upright(opened)
            # A copy, so that the pixels outlive the file that `with` closes.
            image = upright if upright is not opened else opened.copy()
    except Image.DecompressionBombError as error:
        reason = f"refused as a possible decompression bomb: {error}"
        raise UnreadableImageError(
            f"{argument}: {name!r} is {reason} If you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS (now "
            f"{Image.MAX_IMAGE_PIXELS}) before loading it, or pass a downscaled copy.",
            reason=reason,
        ) from None
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        raise unreadable("its data is in no image format that PIL knows") from None
    # PIL's format plugins report damaged data as whatever their parsing runs into (OSError, SyntaxError, ValueError,
    # IndexError, struct.error, EOFError, ...), so every failure to decode is reported as one unreadable image.
    except Exception as error:  # noqa: BLE001
        raise unreadable(f"{type(error).__name__}: {error}") from error
    return _as_rgb(image, f"{argument}: {name!r}")


def _as_rgb(image: Image.Image, described: str) -> Image.Image:
    """Convert a decoded image to 8-bit RGB by its mode's bit depth and value range (see `load_rgb_image`)."""
    if image.width == 0 or image.height == 0:
        raise UnreadableImageError(f"{described} has no pixels ({image.width}x{image.height}).", reason="no pixels")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > _SIXTEEN_BIT_MAX:
            reason = (
                f"PIL mode {mode!r} with values from {low} to {high}, outside the 16-bit range 0..65535 in which "
                f"integer images are read"
            )
            raise UnreadableImageError(
                f"{described} has {reason}; scale it to 0..255 yourself and pass a uint8 array or an 8-bit image.",
                reason=reason,
            )
        # 65535 / 255 = 257 exactly: the 16-bit scale maps onto the 8-bit one with the mean preserved.
        return Image.fromarray(np.rint(values.astype(np.float32) / 257.0).astype(np.uint8)).convert("RGB")
    if mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            finite = values[np.isfinite(values)]
            span = f"from {finite.min():g} to {finite.max():g}" if finite.size else "none finite"
            nan = ", and NaN or infinite values" if finite.size < values.size else ""
            reason = f"PIL mode 'F' (32-bit float) with values {span}{nan}; float images are read in [0, 1]"
            raise UnreadableImageError(
                f"{described} has {reason}. Scale it to [0, 1] (or to a uint8 array) first.", reason=reason
            )
        return Image.fromarray(np.rint(values * 255.0).astype(np.uint8)).convert("RGB")
    if mode not in _EIGHT_BIT_MODES:
        reason = f"PIL mode {mode!r}, which has no defined reading as 8-bit RGB"
        raise UnreadableImageError(
            f"{described} has {reason}; convert it yourself (e.g. image.convert('RGB')) and pass the result.",
            reason=reason,
        )
    if mode == "La":
        image = image.convert("LA")  # PIL converts premultiplied greyscale only to its plain form
    elif mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb_image(image: ImageInput, argument: str = "images", max_decoded_bytes: int | None = None) -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image, a uint8 numpy array or a local file path.

    How each kind of picture is read:

    - 8-bit modes convert as PIL converts them: greyscale, RGBA/LA (alpha dropped), palette, CMYK, YCbCr, LAB, HSV.
    - 16-bit greyscale (modes ``I;16``, ``I;16B``, ..., and ``I``, PIL's mode for 16-bit PPM/PGM data) is scaled by
      its bit depth, 0..65535 to 0..255; a mode ``I`` image with values outside 0..65535 is refused.
    - 32-bit float greyscale (mode ``F``, e.g. a float TIFF) in [0, 1] is scaled by 255; other values are refused.
    - Files are decoded completely (a damaged one fails here, not later) and turned upright by their EXIF
      orientation, as `datasets.Image` does for training images; so are PIL images that carry an orientation.
    - A file, or a PIL image opened from one and not loaded yet, that would take more than ``max_decoded_bytes``
      decoded (see `decode_image`) is refused before it is decoded.

    Raises:
        FileNotFoundError: no file at the path.
        UnreadableImageError: (a `ValueError`) undecodable data, a decompression bomb, a picture over
            ``max_decoded_bytes``, an empty image or a mode or value range refused above.
        ValueError: a URL (this function reads local files; the pipelines fetch http(s) URLs) or a numpy array that
            is not uint8 with shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
        TypeError: any other kind of input.

    Every message starts with ``argument`` and names the file.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            if URL_SCHEME.match(str(path)):
                raise ValueError(
                    f"{argument}: {path!r} is a URL; MuSEProcessor reads local files, PIL images and uint8 numpy "
                    f"arrays (the multimodal pipelines also fetch http(s):// URLs). Download the image first."
                )
            raise FileNotFoundError(f"{argument}: no image file at {path!r}.")
        return decode_image(path, path, argument, max_decoded_bytes)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(
                f"{argument}: numpy images must be uint8 arrays of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                f"got dtype {image.dtype} and shape {image.shape}. Scale other data to 0..255 first; 16-bit or [0, 1] "
                f"float greyscale may also be passed as Image.fromarray(array)."
            )
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        return _as_rgb(image, f"{argument}: the numpy array")
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"{argument}: expected a PIL image, a uint8 numpy array or a local file path, got {type(image).__name__}."
        )
    described = f"{argument}: the PIL image"
    if getattr(image, "tile", None):  # opened from a file and not decoded yet
        _check_decoded_size(image, max_decoded_bytes, described)
    try:
        image.load()
    # A lazily opened image decodes here; see decode_image for why any exception means undecodable data.
    except Exception as error:  # noqa: BLE001
        reason = f"{type(error).__name__}: {error}"
        raise UnreadableImageError(
            f"{described} cannot be decoded ({reason}); if it was opened from a file, load it (image.load()) while "
            f"the file is open, or pass the path instead.",
            reason=reason,
        ) from error
    return _as_rgb(_upright(image), described)


def is_http_url(image: object) -> bool:
    """Whether ``image`` is an ``http://`` or ``https://`` URL (any case)."""
    return isinstance(image, str) and _HTTP_URL.match(image) is not None


def _shown(url: str) -> str:
    """A URL as messages quote it: as given, cut to its first `_URL_SHOWN_CHARACTERS` characters."""
    if len(url) <= _URL_SHOWN_CHARACTERS:
        return repr(url)
    return f"{url[:_URL_SHOWN_CHARACTERS]!r}... ({len(url)} characters)"


def download_image_bytes(
    url: str,
    timeout: float,
    max_bytes: int,
    argument: str = "image",
    *,
    address_allowed: AddressPolicy = is_public_address,
) -> bytes:
    """The body of the ``http(s)://`` URL ``url``, within ``timeout`` seconds all told and at most ``max_bytes`` bytes,
    from an address that ``address_allowed`` lets through (by default a public one; see `url_fetch` for how addresses
    are checked and connected to).

    Raises:
        ValueError: ``url`` is not an http(s):// URL.
        UnreadableImageError: the body is (or is declared) larger than ``max_bytes``.
        ImageFetchError: (a `ConnectionError`) anything else that stops the download, with one message whatever the
            cause (see the module docs).
    """
    if not is_http_url(url):
        raise ValueError(f"{argument}: {_shown(url)} is not an http(s):// URL.")
    try:
        if timeout <= 0:
            raise FetchFailedError("no time left for the download")
        return fetch_url(url, timeout, max_bytes, address_allowed)
    except FetchTooLargeError as error:
        reason = f"larger than max_image_bytes={max_bytes}: {error}"
        raise UnreadableImageError(
            f"{argument}: {_shown(url)} is {reason}. Raise max_image_bytes= if the image is wanted, or pass a local "
            f"copy.",
            reason=reason,
        ) from None
    except FetchFailedError as error:
        logger.debug("%s: %s not fetched: %s", argument, _shown(url), error.detail)
        raise ImageFetchError(
            f"{argument}: could not fetch image URL {_shown(url)}: only public http(s) addresses are fetched, within "
            f"the time limit and {MAX_REDIRECTS} redirects, and the server must answer with the image. Check the URL, "
            f"or send the image itself (a file's bytes, a local path or a PIL image); pictures on your own network "
            f"are fetched only with allow_private_urls=True."
        ) from None


def load_post_image(
    image: ImageInput | bytes,
    timeout: float = DEFAULT_TIMEOUT,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    argument: str = "image",
    *,
    allow_private_urls: bool = False,
    max_decoded_bytes: int | None = None,
) -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image, a uint8 numpy array, a local path, an ``http(s)://`` URL or the bytes
    of an image file.

    Pictures are read as `load_rgb_image` reads them, refused before decoding if they would take more than
    ``max_decoded_bytes`` (None: `MAX_DECODED_BYTES`). A URL is fetched by `download_image_bytes` from public
    addresses only, unless ``allow_private_urls`` (then private, loopback and link-local addresses too: for pictures
    served on your own network); bytes (an uploaded or base64-decoded file) are held to ``max_image_bytes`` as a
    download is.

    Raises:
        FileNotFoundError: no file at the path.
        ImageFetchError: (a `ConnectionError`) the URL was not fetched: an address that is not fetched, no answer
            within ``timeout``, an error status, a bad redirect; one message for all.
        UnreadableImageError: (a `ValueError`) the download or the bytes are over ``max_image_bytes``, or the picture
            cannot be read (see `load_rgb_image`).
        ValueError: a URL of another scheme than http(s), a numpy array that is not uint8.
        TypeError: any other kind of input.

    Errors start with ``argument`` and name the URL or path.
    """
    if isinstance(image, (bytes, bytearray)):
        if len(image) > max_image_bytes:
            reason = f"larger than max_image_bytes={max_image_bytes}: {len(image)} bytes"
            raise UnreadableImageError(
                f"{argument}: the image data is {reason}. Raise max_image_bytes= if the image is wanted, or send a "
                f"smaller copy.",
                reason=reason,
            )
        return decode_image(io.BytesIO(image), f"{len(image)} bytes of image data", argument, max_decoded_bytes)
    if isinstance(image, str):
        scheme = URL_SCHEME.match(image)
        if is_http_url(image):
            policy = is_usable_address if allow_private_urls else is_public_address
            data = download_image_bytes(image, timeout, max_image_bytes, argument, address_allowed=policy)
            return decode_image(io.BytesIO(data), image, argument, max_decoded_bytes)
        if scheme and not os.path.isfile(image):
            raise ValueError(
                f"{argument}: {image!r} is a {scheme.group(1)}:// URL; the pipelines accept http(s):// URLs, local "
                f"file paths, PIL images and uint8 numpy arrays (and an image file's bytes). Download the image and "
                f"pass its local path."
            )
    elif not isinstance(image, (os.PathLike, Image.Image, np.ndarray)):
        raise TypeError(
            f"{argument}: expected a PIL image, a uint8 numpy array, a local file path, an http(s):// URL or the bytes "
            f"of an image file, got {type(image).__name__}."
        )
    return load_rgb_image(image, argument=argument, max_decoded_bytes=max_decoded_bytes)
