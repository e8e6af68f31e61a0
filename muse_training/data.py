"""Data of a training run: the three splits, the processor that turns rows into model inputs, and the loaders."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch.utils.data import DataLoader

from configuration_muse import MuSEConfig
from datasets_scripts import MissingImagesError, OutsideFolderError, count_placeholder_images, load_muse_dataset
from datasets_scripts.user_data import UserDataError, load_user_dataset
from modeling_muse.reporting import TextReport, unknown_words_warning
from processing_muse import MuSEProcessor, split_words_with_offsets

from .logs import silenced
from .markdown import code_span

__all__ = ["SPLITS", "build_processor", "describe_data", "load_splits", "make_dataloaders", "report_splits"]

logger = get_logger(__name__)

SPLITS = ("train", "validation", "test")


def load_splits(args: argparse.Namespace, accelerator: Accelerator) -> datasets.DatasetDict:
    """Load the splits of ``--dataset_name`` (a paper dataset, a Hub id or a folder) or of ``--train_file`` etc., cut
    to ``--max_*_samples``, and settle ``--do_train`` / ``--do_eval`` / ``--do_predict`` by the splits there are.

    The main process prepares the dataset cache first; the others then read it.
    """
    # `report_splits` gives each split's placeholder count with the rest of its figures once the processor exists, so
    # the loader's repetition of them for a cached dataset is dropped. Building a full dataset still logs what it
    # replaced and why; the bundled samples hold no news (the Twitter sample ships without any image).
    quieted = "datasets_scripts" if args.is_quickstart else "datasets_scripts.loading"
    try:
        with silenced(quieted), accelerator.main_process_first():
            if args.data_source == "paper":
                raw = load_muse_dataset(
                    args.dataset_name,
                    data_dir=args.data_dir,
                    image_dir=args.image_dir,
                    missing_images=args.missing_images,
                    cache_dir=args.dataset_cache_dir,
                    seed=args.seed,
                )
            else:
                files = {split: getattr(args, f"{split}_file") for split in ("train", "validation", "test")}
                raw = load_user_dataset(
                    args.task,
                    dataset_name=args.dataset_name,
                    dataset_config_name=args.dataset_config_name,
                    data_files={split: path for split, path in files.items() if path is not None} or None,
                    text_column=args.text_column_name,
                    label_column=args.label_column_name,
                    image_column=args.image_column_name,
                    image_dir=args.image_dir,
                    missing_images=args.missing_images,
                    # Evaluating a trained model cuts no validation split out of train.
                    validation_split_percentage=None if args.do_train is False else args.validation_split_percentage,
                    seed=args.seed,
                    cache_dir=args.dataset_cache_dir,
                    allow_private_urls=args.allow_private_urls,
                    problem_type=args.problem_type,
                    num_proc=args.preprocessing_num_workers,
                )
    except (UserDataError, MissingImagesError, OutsideFolderError) as error:
        raise SystemExit(str(error)) from error
    except FileNotFoundError as error:
        raise SystemExit(
            f"Could not load --dataset_name {args.dataset_name} (--data_dir {args.data_dir}, --image_dir "
            f"{args.image_dir}):\n{error}"
        ) from error
    _settle_what_to_do(args, raw)
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_eval_samples}
    return datasets.DatasetDict(
        {
            split: raw[split].select(range(min(limits[split], len(raw[split]))))
            if limits[split] is not None
            else raw[split]
            for split in SPLITS
            if split in raw
        }
    )


def _settle_what_to_do(args: argparse.Namespace, raw: datasets.DatasetDict) -> None:
    """``--do_train`` / ``--do_eval`` / ``--do_predict``: left unset, each is on when its split is there; asked for
    without its split, an error. Says once what the data leaves out."""
    needs = {"do_train": "train", "do_eval": "validation", "do_predict": "test"}
    for flag, split in needs.items():
        if getattr(args, flag) is None:
            setattr(args, flag, split in raw)
        elif getattr(args, flag) and split not in raw:
            raise SystemExit(f"--{flag}: the data has no {split} split (it has {sorted(raw)}).")
    if args.do_train and "validation" not in raw:
        raise SystemExit(
            "Training keeps the model with the best validation score, but the data has no validation split: give "
            "--validation_file, or a --validation_split_percentage of train."
        )
    if not (args.do_train or args.do_eval or args.do_predict):
        raise SystemExit(f"Nothing to do: --do_train, --do_eval and --do_predict are all off (splits: {sorted(raw)}).")
    if not args.do_train and args.model_name_or_path is None:
        raise SystemExit(
            "The data has no train split and no --model_name_or_path was given: a fresh MuSE must be trained before "
            "it is evaluated. Give a train split, or a trained MuSE model to evaluate."
        )
    if "test" not in raw:
        logger.warning("The data has no test split: this run reports no test score.")


def build_processor(args: argparse.Namespace, config: MuSEConfig, label_names: Sequence[str] | None) -> MuSEProcessor:
    """The processor matching the model: the one saved with ``--model_name_or_path``, or the towers' tokenizer and
    image preprocessing (``--image_size`` when set), with text cut at the model's n."""
    label_names = list(label_names) if label_names is not None else None
    # --trust_remote_code: a tokenizer whose code comes with the text encoder (or with the trained model's processor).
    tokenizer_kwargs = {"trust_remote_code": True} if args.trust_remote_code else {}
    if args.model_name_or_path is not None:
        processor = MuSEProcessor.from_pretrained(args.model_name_or_path, **tokenizer_kwargs)
        processor.label_names = label_names
        return processor
    return MuSEProcessor.from_text_vision_pretrained(
        args.text_model_name_or_path,
        args.vision_model_name_or_path,
        max_length=config.max_text_length,
        label_names=label_names,
        image_size=args.image_size,
        tokenizer_kwargs=tokenizer_kwargs,
    )


def report_splits(
    args: argparse.Namespace,
    raw_datasets: datasets.DatasetDict,
    processor: MuSEProcessor,
    text_column: str,
    label_column: str | None = None,
) -> dict[str, TextReport]:
    """Log one line per split (posts, placeholder images, words cut at ``max_length`` with the entities they held,
    words the tokenizer cannot read) and a warning for what needs acting on; return the text reports.

    Measured once here, so that the collators call the processor with ``warn=False`` instead of repeating the same
    warnings for every batch of every epoch.
    """
    reports, placeholders, images = {}, 0, 0
    unknown = processor.tokenizer.unk_token
    for split in raw_datasets:
        rows = raw_datasets[split]
        texts = rows[text_column]
        words = [text if isinstance(text, list) else split_words_with_offsets(text)[0] for text in texts]
        report = processor.text_report(words, rows[label_column] if label_column else None)
        replaced = count_placeholder_images(rows)
        reports[split], placeholders, images = report, placeholders + replaced, images + len(rows)
        entities = f" ({report.cut_entities} entities)" if report.cut_entities is not None else ""
        logger.info(
            "%s: %d posts | %d images replaced by the grey placeholder | %d words cut at max_length %d%s | "
            "%.1f%% of %d words became %s",
            split,
            report.posts,
            replaced,
            report.cut_words,
            processor.max_length,
            entities,
            100 * report.unknown_share,
            report.words,
            unknown,
        )
    total = TextReport(
        posts=sum(report.posts for report in reports.values()),
        words=sum(report.words for report in reports.values()),
        unknown_words=sum(report.unknown_words for report in reports.values()),
        cut_words=sum(report.cut_words for report in reports.values()),
        cut_entities=None,
        cut_posts=[],
    )
    coverage = unknown_words_warning(total, args.text_model_name_or_path)
    if coverage:
        logger.warning(coverage)
    if placeholders and not args.is_quickstart:
        logger.warning(
            "%d of %d images are the grey placeholder (missing or unreadable, --missing_images placeholder): the "
            "image branch sees no picture for those posts.",
            placeholders,
            images,
        )
    return reports


def make_dataloaders(
    raw_datasets: datasets.DatasetDict,
    columns: Sequence[str],
    collate_fn: Callable[[list[dict]], Any],
    args: argparse.Namespace,
) -> dict[str, DataLoader]:
    """Train (shuffled), validation and test loaders over the ``columns`` of each split's rows, batched by
    ``collate_fn`` (the processor) on the fly; one for each split the data has."""

    def loader(split: str, batch_size: int) -> DataLoader:
        return DataLoader(
            raw_datasets[split].select_columns(list(columns)),
            batch_size=batch_size,
            shuffle=split == "train",
            collate_fn=collate_fn,
            num_workers=args.dataloader_num_workers,
            # Its own generator, so that starting an epoch never draws from the global RNG that dropout and the
            # regularizer noise use: a resumed run then replays that RNG exactly.
            generator=torch.Generator().manual_seed(args.seed),
        )

    sizes = {"train": args.per_device_train_batch_size}
    return {
        split: loader(split, sizes.get(split, args.per_device_eval_batch_size))
        for split in SPLITS
        if split in raw_datasets
    }


def describe_data(args: argparse.Namespace, raw_datasets: datasets.DatasetDict) -> str:
    """One sentence for the model card: which data, how many posts per split, how many placeholder images.

    Names the dataset, never a folder of this machine.
    """
    if args.is_quickstart:
        source = f"the bundled sample {code_span(args.dataset_name)} of `datasets_scripts`"
    elif args.data_source == "files" or (args.data_source == "dataset" and Path(args.dataset_name).is_dir()):
        source = "the trainer's own data"
    else:
        source = code_span(args.dataset_name)
    sizes = ", ".join(f"{len(raw_datasets[split])} {split}" for split in raw_datasets)
    placeholders = sum(count_placeholder_images(raw_datasets[split]) for split in raw_datasets)
    images = f"; {placeholders} of the images are grey placeholders for missing ones" if placeholders else ""
    return f"{source}: {sizes} posts{images}."
