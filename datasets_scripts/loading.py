"""The dataset entry point: :func:`load_muse_dataset`."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import datasets

from . import _splits as splits_module
from . import images as images_module
from . import mvsa as mvsa_module
from . import umt as umt_module
from .images import count_placeholder_images
from .mvsa import LABEL_FILE, MVSABuilder
from .umt import UMT_SPLIT_FILES, UMTNerBuilder

__all__ = ["DATASET_NAMES", "SAMPLE_DIR", "load_muse_dataset", "muse_dataset_builder"]

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
_MNER = ("twitter2015", "twitter2017", "mt_product", "umt")
_MSA = ("mvsa_single", "mvsa_multiple")
# Bundled sample name -> (builder configuration, folder under SAMPLE_DIR).
_SAMPLES = {"twitter2017_sample": ("twitter2017", "twitter2017"), "mvsa_single_sample": ("mvsa_single", "mvsa_single")}
DATASET_NAMES = (*_MNER, *_MSA, *_SAMPLES)


def _fingerprint(files: Sequence[Path], folders: Sequence[Path | None], modules: Sequence[object]) -> str:
    """Hash of the builder code and the size/modification time of the sources.

    A folder's modification time changes when files are added to or removed from it, which is
    what happens when images are supplied later; an image replaced in place is not detected.
    """
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    for path in [*files, *folders]:
        if path is not None and path.exists():
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        else:
            digest.update(f"{path}|absent".encode())
    return digest.hexdigest()[:16]


def muse_dataset_builder(
    name: str,
    data_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    missing_images: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 42,
    labels: Sequence[str] | None = None,
) -> datasets.DatasetBuilder:
    """Create the configured builder behind :func:`load_muse_dataset` (same arguments), without
    preparing it. Its cache folder is keyed by the arguments and by a fingerprint of the builder
    code and of the source files and folders (see :func:`_fingerprint`)."""
    if name not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASET_NAMES}.")
    config_name = name
    if name in _SAMPLES:
        if data_dir is not None:
            raise ValueError(
                f"{name!r} is the bundled sample and takes no data_dir; use {_SAMPLES[name][0]!r} instead."
            )
        config_name, folder = _SAMPLES[name]
        data_dir = SAMPLE_DIR / folder
        if name == "twitter2017_sample" and missing_images is None:
            missing_images = "placeholder"
            if image_dir is None:
                logger.warning(
                    "twitter2017_sample: the bundled sample ships without images, so every post gets the grey "
                    "placeholder image (missing_images='placeholder')."
                )
    if data_dir is None:
        raise ValueError(f"{name!r} needs data_dir=<folder with the dataset's text files>.")
    if labels is not None and config_name != "umt":
        raise ValueError(f"labels=... is only accepted for the 'umt' dataset, not for {name!r}.")
    data_dir = Path(data_dir).resolve()
    image_path = Path(image_dir).resolve() if image_dir is not None else None
    kwargs = {
        "config_name": config_name,
        "dataset_name": name,
        "data_dir": str(data_dir),
        "image_dir": str(image_path) if image_path is not None else None,
        "missing_images": missing_images or "error",
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
    }
    if config_name in _MNER:
        if labels is not None:
            kwargs["labels"] = tuple(labels)
        files = [data_dir / file_name for file_name in UMT_SPLIT_FILES.values()]
        kwargs["hash"] = _fingerprint(files, [image_path], [umt_module, images_module, splits_module])
        return UMTNerBuilder(**kwargs)
    kwargs["seed"] = seed
    folders = [data_dir / "data", image_path]
    kwargs["hash"] = _fingerprint([data_dir / LABEL_FILE], folders, [mvsa_module, images_module, splits_module])
    return MVSABuilder(**kwargs)


def load_muse_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    missing_images: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 42,
    labels: Sequence[str] | None = None,
    rebuild: bool = False,
) -> datasets.DatasetDict:
    """Prepare (or load from the cache) one of the MuSE datasets as a ``DatasetDict``.

    Args:
        name: ``"twitter2015"``, ``"twitter2017"``, ``"mt_product"``, ``"umt"`` (any folder in UMT
            format), ``"mvsa_single"``, ``"mvsa_multiple"``, or a bundled sample:
            ``"twitter2017_sample"`` (420 real Twitter-2017 posts, no images) and
            ``"mvsa_single_sample"`` (synthetic MVSA-Single posts with images).
        data_dir: the dataset folder (UMT: ``train.txt``, ``valid.txt``, ``test.txt``; MVSA:
            ``labelResultAll.txt`` and ``data/``). Not accepted for the bundled samples.
        image_dir: folder holding ``<image_id>.jpg``. UMT datasets: ``None`` means no images at
            all. MVSA: ``None`` means ``<data_dir>/data``.
        missing_images: ``"error"`` or ``"placeholder"`` (see :mod:`datasets_scripts.images`);
            ``None`` means ``"error"``, except for ``"twitter2017_sample"``, which has no images
            and therefore defaults to ``"placeholder"`` (and logs that it does so).
        cache_dir: where prepared data is cached; ``None`` is the ``datasets`` default
            (``~/.cache/huggingface/datasets``).
        seed: seed of the random 8/1/1 split of the MVSA datasets; the UMT datasets have fixed
            splits and ignore it.
        labels: label set for ``"umt"`` (``"O"`` first); ``None`` takes it from the data.
        rebuild: prepare again even if a cached copy exists (needed only after replacing image
            files in place, which the cache fingerprint does not see).

    Returns:
        ``DatasetDict`` with ``train``, ``validation`` and ``test`` (``"umt"``: those whose file exists).

    Raises:
        MissingImagesError: under ``"error"`` when images are missing or unreadable.
        UMTFormatError, MVSAFormatError: malformed text files, with ``file:line``.
    """
    builder = muse_dataset_builder(name, data_dir, image_dir, missing_images, cache_dir, seed, labels)
    cached = not rebuild and os.path.exists(os.path.join(builder.cache_dir, datasets.config.DATASET_INFO_FILENAME))
    builder.download_and_prepare(download_mode="force_redownload" if rebuild else None)
    dataset = builder.as_dataset()
    if cached:
        # A fresh build logs the placeholder counts while checking images; a cache hit repeats
        # them here, so that placeholders are never in use without a word.
        for split, split_dataset in dataset.items():
            replaced = count_placeholder_images(split_dataset)
            if replaced:
                logger.warning(
                    "%s %s (from the cache at %s): %d of %d images are the grey placeholder.",
                    name,
                    split,
                    builder.cache_dir,
                    replaced,
                    len(split_dataset),
                )
    return dataset
