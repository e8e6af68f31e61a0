"""Datasets of the MuSE paper as ``datasets`` builders, with one entry point.

Example::

    from datasets_scripts import load_muse_dataset
    dataset = load_muse_dataset("twitter2017_sample")  # bundled, no images: grey placeholders

See ``datasets_scripts/README.md`` for the datasets, the image policy, the MVSA preprocessing and
the Parquet export (``python -m datasets_scripts.export``). Your own data (a Hub dataset, a dataset
folder, CSV / JSON lines / Parquet files) goes through :func:`load_user_dataset`.
"""

from .errors import OutsideFolderError
from .images import MissingImagesError, count_placeholder_images, placeholder_image
from .loading import DATASET_NAMES, SAMPLE_DIR, load_muse_dataset, muse_dataset_builder
from .mvsa import MVSA_LABELS, MVSABuilder, MVSAConfig, MVSAFormatError
from .umt import (
    MT_PRODUCT_LABELS,
    TWITTER2015_LABELS,
    TWITTER2017_LABELS,
    UMTFormatError,
    UMTNerBuilder,
    UMTNerConfig,
)
from .user_data import UserDataError, load_user_dataset

__all__ = [
    "DATASET_NAMES",
    "MT_PRODUCT_LABELS",
    "MVSA_LABELS",
    "SAMPLE_DIR",
    "TWITTER2015_LABELS",
    "TWITTER2017_LABELS",
    "MVSABuilder",
    "MVSAConfig",
    "MVSAFormatError",
    "MissingImagesError",
    "OutsideFolderError",
    "UMTFormatError",
    "UMTNerBuilder",
    "UMTNerConfig",
    "UserDataError",
    "count_placeholder_images",
    "load_muse_dataset",
    "load_user_dataset",
    "muse_dataset_builder",
    "placeholder_image",
]
