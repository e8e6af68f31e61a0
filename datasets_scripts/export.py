"""Export a prepared MuSE dataset to self-contained Parquet files, optionally pushing it to the Hub.

Usage::

    python -m datasets_scripts.export twitter2015 --data_dir data/twitter2015 \\
        --image_dir data/twitter2015_images --output_dir parquet/twitter2015 \\
        [--missing_images placeholder] [--push_to_hub user/repo [--private]]

writes ``<output_dir>/<split>.parquet`` (one file per split) and reads back with::

    load_dataset("parquet", data_files={"train": "parquet/twitter2015/train.parquet", ...})

What round-trips: the image bytes are embedded (a real image keeps its file's basename as
``path``; a placeholder keeps ``path=None``), and the ``datasets`` features, ``ClassLabel`` names
and ``Image`` type included, are stored in the Parquet schema metadata (key ``huggingface``), from
which the ``parquet`` loader restores them without ``features=``. The dataset description (e.g.
MVSA's drop counts) is not part of the Parquet files.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq
from datasets import DatasetDict
from datasets.table import embed_table_storage

from .loading import DATASET_NAMES, load_muse_dataset

__all__ = ["export_parquet", "main"]

logger = logging.getLogger(__name__)

# Rows per Parquet row group: small groups keep random access cheap for image rows (the value
# `datasets` itself uses for image datasets).
_ROWS_PER_GROUP = 100


def export_parquet(dataset: DatasetDict, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write each split to ``<output_dir>/<split>.parquet`` with the image bytes embedded.

    Returns:
        split name -> written file.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, split_dataset in dataset.items():
        path = output_dir / f"{split}.parquet"
        partial = path.with_name(path.name + ".partial")
        # The schema carries the features as metadata, which is what restores ClassLabel/Image on load.
        with pq.ParquetWriter(partial, split_dataset.features.arrow_schema) as writer:
            for batch in split_dataset.with_format("arrow").iter(batch_size=_ROWS_PER_GROUP):
                writer.write_table(embed_table_storage(batch))
        partial.replace(path)
        written[split] = path
    return written


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m datasets_scripts.export",
        description="Prepare a MuSE dataset and export it to Parquet (one file per split, images embedded).",
    )
    parser.add_argument("name", choices=DATASET_NAMES)
    parser.add_argument("--data_dir", help="dataset folder (not for the bundled samples)")
    parser.add_argument("--image_dir", help="folder holding <image_id>.jpg (MVSA default: <data_dir>/data)")
    parser.add_argument("--output_dir", required=True, help="where <split>.parquet files are written")
    parser.add_argument(
        "--missing_images",
        choices=("error", "placeholder"),
        help="policy for missing or unreadable images (default: error; twitter2017_sample: placeholder)",
    )
    parser.add_argument("--seed", type=int, default=42, help="MVSA split seed (default 42)")
    parser.add_argument("--labels", nargs="+", help="label set for the 'umt' dataset, 'O' first")
    parser.add_argument("--cache_dir", help="datasets cache folder")
    parser.add_argument("--push_to_hub", metavar="USER/REPO", help="also push the DatasetDict to this Hub repo")
    parser.add_argument("--private", action="store_true", help="make the pushed Hub repo private")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Command-line entry point; returns the written files."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dataset = load_muse_dataset(
        args.name,
        data_dir=args.data_dir,
        image_dir=args.image_dir,
        missing_images=args.missing_images,
        cache_dir=args.cache_dir,
        seed=args.seed,
        labels=args.labels,
    )
    written = export_parquet(dataset, args.output_dir)
    for split, path in written.items():
        logger.info("wrote %s (%d rows)", path, len(dataset[split]))
    if args.push_to_hub:
        dataset.push_to_hub(args.push_to_hub, private=args.private)
        logger.info("pushed to https://huggingface.co/datasets/%s", args.push_to_hub)
    return written


if __name__ == "__main__":
    main()
