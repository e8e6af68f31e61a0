"""Image lookup shared by the MuSE dataset builders.

Text and images of the MuSE datasets are distributed separately, and some images of the public
releases are known to be missing or unreadable. Every builder therefore resolves its images through
:func:`resolve_images`, which checks each file once and applies one of two policies:

* ``"error"`` (default): raise :class:`MissingImagesError`, listing the first few offending ids,
  the file that was looked for and the switch for the other policy;
* ``"placeholder"``: store a plain 224x224 mid-grey RGB image instead and log ONE warning line per
  split with the number of replaced images.

Nothing is dropped. A placeholder is stored as image bytes with ``path=None`` while a real image is
stored as its file path (decoded lazily by :class:`datasets.Image`), which is how
:func:`count_placeholder_images` tells them apart, also after a Parquet export.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import pyarrow.compute as pc
from datasets import Dataset
from PIL import Image

from modeling_muse.image_input import (
    PLACEHOLDER_COLOR,
    PLACEHOLDER_SIZE,
    UnreadableImageError,
    decode_image,
    placeholder_image,
)
from modeling_muse.reporting import first_then_count

from .errors import file_id_problem, leaves_folder, quoted

__all__ = [
    "MISSING_IMAGE_POLICIES",
    "check_missing_images_policy",
    "PLACEHOLDER_COLOR",
    "PLACEHOLDER_SIZE",
    "MissingImagesError",
    "check_image_file",
    "count_placeholder_images",
    "placeholder_image",
    "placeholder_image_bytes",
    "resolve_images",
]

logger = logging.getLogger(__name__)

MISSING_IMAGE_POLICIES = ("error", "placeholder")


def check_missing_images_policy(policy: str) -> None:
    """Reject a ``missing_images`` value that is not one of :data:`MISSING_IMAGE_POLICIES`."""
    if policy not in MISSING_IMAGE_POLICIES:
        raise ValueError(f"missing_images must be one of {MISSING_IMAGE_POLICIES}, got {policy!r}.")


class MissingImagesError(FileNotFoundError):
    """Raised under ``missing_images="error"`` when images are missing or unreadable."""


@cache
def placeholder_image_bytes() -> bytes:
    """Return :func:`placeholder_image` encoded as PNG (lossless, so it decodes to exact grey)."""
    buffer = io.BytesIO()
    placeholder_image().save(buffer, format="PNG")
    return buffer.getvalue()


def check_image_file(path: str | os.PathLike) -> str | None:
    """Check that ``path`` is an image that the processor can read, by reading it as the processor does.

    Cost per file: one ``stat``, PIL's header/structure ``verify()`` (chunk CRCs for PNG) and one
    full decode (:func:`processing_muse.decode_image`: all of the pixel data, PIL's
    decompression-bomb limit, 16-bit and float greyscale), about 3 ms for a 640x480 JPEG, once per
    build (the prepared dataset is cached). Header checks alone miss what only decoding meets: a
    JPEG whose data is damaged between an intact start and end-of-image marker, a PNG whose chunks
    are intact but whose image data is missing or cut short.

    Returns:
        ``None`` if the image is readable, otherwise a short reason such as ``"missing"``.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable ({type(error).__name__}: {error})"
    if size == 0:
        return "unreadable (empty file)"
    try:
        with Image.open(path) as image:
            # verify() of a file without image data fails on PIL's side (IndexError); decoding says what is wrong.
            if image.tile:
                image.verify()
    # As in decode_image: PIL's plugins report damaged data as whatever their parsing runs into.
    except Exception as error:  # noqa: BLE001
        return f"unreadable ({type(error).__name__}: {error})"
    try:
        decode_image(path, str(path))
    except UnreadableImageError as error:
        return f"unreadable ({error.reason})"
    return None


def resolve_images(
    image_ids: Mapping[str, Sequence[str]],
    image_dir: str | os.PathLike | None,
    policy: str,
    dataset_name: str,
    suffix: str = ".jpg",
    root: str | os.PathLike | None = None,
) -> dict[str, list[str | bytes]]:
    """Look up ``<image_dir>/<image_id><suffix>`` for every post of every split and apply ``policy``.

    An image file that is a symbolic link leading outside ``root`` is not read: it counts as unreadable.

    Args:
        image_ids: split name -> the image id of each post, in post order.
        image_dir: folder holding the images; ``None`` means that no image is available.
        policy: ``"error"`` or ``"placeholder"`` (see the module docstring).
        dataset_name: used in messages only.
        suffix: file name extension of the images.
        root: the folder the images must stay inside, where they lie: the dataset's folder when ``image_dir`` is one
            of its subfolders (which may itself not be a link out); ``None`` means ``image_dir``.

    Returns:
        split name -> one value per post for the :class:`datasets.Image` feature: the absolute
        file path of a readable image, or the placeholder's PNG bytes.

    Raises:
        MissingImagesError: under ``policy="error"`` if any image is missing or unreadable.
        ValueError: for an unknown policy.
    """
    check_missing_images_policy(policy)
    directory = Path(image_dir).resolve() if image_dir is not None else None
    for ids in image_ids.values():
        for image_id in ids:
            problem = file_id_problem(image_id)
            if problem is not None:
                raise ValueError(
                    f"{dataset_name}: the image id {quoted(image_id)} cannot name a file in image_dir ({problem})."
                )
    problems: dict[str, str | None] = {}
    if directory is not None:
        for ids in image_ids.values():
            for image_id in ids:
                if image_id not in problems:
                    path = directory / f"{image_id}{suffix}"
                    if leaves_folder(path, root if root is not None else directory):
                        where = "image_dir" if root is None else str(root)
                        problems[image_id] = f"unreadable (a symbolic link that leads outside {where})"
                    else:
                        problems[image_id] = check_image_file(path)

    bad_per_split = {
        split: [image_id for image_id in ids if directory is None or problems[image_id] is not None]
        for split, ids in image_ids.items()
    }
    total_bad = sum(len(bad) for bad in bad_per_split.values())
    total = sum(len(ids) for ids in image_ids.values())
    if total_bad and policy == "error":
        raise MissingImagesError(
            _error_message(dataset_name, directory, suffix, bad_per_split, problems, total, total_bad)
        )

    placeholder = placeholder_image_bytes()
    resolved: dict[str, list[str | bytes]] = {}
    for split, ids in image_ids.items():
        if bad_per_split[split]:
            where = "no image_dir was given" if directory is None else f"looked in {directory}"
            if directory is not None and not directory.is_dir():
                where += ", which does not exist"
            logger.warning(
                "%s %s: replaced %d of %d images by a %dx%d grey placeholder (missing_images='placeholder'; %s).",
                dataset_name,
                split,
                len(bad_per_split[split]),
                len(ids),
                *PLACEHOLDER_SIZE,
                where,
            )
        resolved[split] = [
            placeholder
            if directory is None or problems[image_id] is not None
            else str(directory / f"{image_id}{suffix}")
            for image_id in ids
        ]
    return resolved


def _error_message(
    dataset_name: str,
    directory: Path | None,
    suffix: str,
    bad_per_split: Mapping[str, Sequence[str]],
    problems: Mapping[str, str | None],
    total: int,
    total_bad: int,
) -> str:
    switch = "missing_images='placeholder' (command line: --missing_images placeholder)"
    if directory is None:
        return (
            f"{dataset_name}: no image_dir was given, so all {total} images are missing. Pass "
            f"image_dir=<folder holding <image_id>{suffix}> (command line: --image_dir), or pass "
            f"{switch} to use a grey placeholder image for every post."
        )
    per_split = ", ".join(f"{split}: {len(bad)}" for split, bad in bad_per_split.items() if bad)
    first = list(dict.fromkeys(image_id for bad in bad_per_split.values() for image_id in bad))
    listed = "  " + first_then_count(
        [f"{image_id}: {problems[image_id]} ({directory / f'{image_id}{suffix}'})" for image_id in first],
        separator="\n  ",
        more="... and {count} more",
    )
    missing_dir = "" if directory.is_dir() else f" The image_dir {directory} does not exist."
    return (
        f"{dataset_name}: {total_bad} of {total} images are missing or unreadable ({per_split}); "
        f"looked for <image_dir>/<image_id>{suffix} with image_dir={directory}.{missing_dir}\n"
        f"{listed}\n"
        f"Pass {switch} to replace them by a {PLACEHOLDER_SIZE[0]}x{PLACEHOLDER_SIZE[1]} grey placeholder "
        "image (counted and logged, nothing is dropped)."
    )


def count_placeholder_images(dataset: Dataset, column: str = "image") -> int:
    """Count the rows of ``dataset`` whose image is the missing-image placeholder.

    Reads only the Arrow storage (no decoding): placeholders are the rows stored with image bytes
    and no path, see the module docstring.
    """
    table = dataset.select_columns([column]).with_format("arrow")[:]
    paths = pc.struct_field(table.column(column), "path")
    return pc.sum(pc.is_null(paths)).as_py() or 0
