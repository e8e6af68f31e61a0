"""Data of a training run: the three splits, the processor that turns rows into model inputs, and the loaders."""

from __future__ import annotations

import dataclasses
import argparse
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator, PartialState
from accelerate.data_loader import prepare_data_loader
from accelerate.logging import get_logger
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from configuration_muse import MuSEConfig
from datasets_scripts import MissingImagesError, OutsideFolderError, count_placeholder_images, load_muse_dataset
from datasets_scripts.user_data import UserDataError, load_user_dataset
from modeling_muse.reporting import TextReport, unknown_words_warning
from processing_muse import MuSEProcessor, split_words_with_offsets

from .logs import silenced
from .markdown import code_span

__all__ = [
    "SPLITS",
    "build_processor",
    "describe_data",
    "is_streamed",
    "load_splits",
    "make_dataloaders",
    "prepare_streamed_loaders",
    "report_splits",
    "unlabeled_splits",
    "while_every_process_has_a_batch",
]

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
                    streaming=args.streaming,
                    label_names=args.label_names,
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
    if is_streamed(raw):
        return datasets.IterableDatasetDict(
            {split: raw[split].take(limits[split]) if limits[split] else raw[split] for split in SPLITS if split in raw}
        )
    return datasets.DatasetDict(
        {
            split: raw[split].select(range(min(limits[split], len(raw[split]))))
            if limits[split] is not None
            else raw[split]
            for split in SPLITS
            if split in raw
        }
    )


def is_streamed(splits: Any) -> bool:
    """Whether the splits are read as they are iterated (``--streaming``), their lengths unknown."""
    return isinstance(splits, datasets.IterableDatasetDict) or isinstance(splits, datasets.IterableDataset)


def unlabeled_splits(raw_datasets: Any, label_column: str) -> list[str]:
    """The splits without labels (a test split of new posts: `datasets_scripts.user_data`), tagged without scores."""
    return [split for split in raw_datasets if label_column not in raw_datasets[split].column_names]


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
    label_column = "ner_tags" if args.task == "mner" else "label"
    if unlabeled_splits(raw, label_column):
        labeled = any(label_column in dataset.column_names for dataset in raw.values())
        if not labeled and args.model_name_or_path is None:
            raise SystemExit(
                "No split of the data has labels, so the label names must come from a trained model: give "
                "--model_name_or_path <a trained MuSE> to tag the test split, or add labels."
            )
        if args.do_predict:
            logger.warning("The test split has no labels: predictions only (predictions.jsonl, no test score).")
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
    if is_streamed(raw_datasets):
        # Counting would read the whole collection once more before training.
        logger.info(
            "%s: streamed (--streaming); posts, placeholder images and cut words are not counted ahead of training.",
            ", ".join(raw_datasets),
        )
        return {}
    for split in raw_datasets:
        rows = raw_datasets[split]
        texts = rows[text_column]
        words = [text if isinstance(text, list) else split_words_with_offsets(text)[0] for text in texts]
        labeled = label_column is not None and label_column in rows.column_names
        report = processor.text_report(words, rows[label_column] if labeled else None)
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
        rows = raw_datasets[split]
        rows = rows.select_columns([column for column in columns if column in rows.column_names])
        if is_streamed(raw_datasets):
            return _streamed_loader(rows, split, batch_size, collate_fn, args)
        return DataLoader(
            rows,
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


def _streamed_loader(
    rows: datasets.IterableDataset,
    split: str,
    batch_size: int,
    collate_fn: Callable[[list[dict]], Any],
    args: argparse.Namespace,
) -> DataLoader:
    """A loader over a streamed split: training data shuffled in a buffer (seeded; `fit` calls ``set_epoch``, which
    reseeds it per epoch) and split between the processes with `datasets.distributed.split_dataset_by_node` (whole
    shards each when their number divides evenly, else every n-th post), each worker reading its own shards.
    `prepare_streamed_loaders` then keeps accelerate from splitting it again."""
    if split == "train":
        # The buffer is fed one shard at a time, the shards in a seeded order drawn anew each epoch. `datasets`'
        # default feeds it from up to 10 shards at once, each holding a whole Parquet row group in Arrow memory
        # (a 5000-post shard of 64x64 PNGs is ~45 MiB), so memory grew with the number of shards
        # (bench/data_path.py).
        rows = rows.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size, max_buffer_input_shards=1)
        state = PartialState()
        if state.num_processes > 1:
            rows = split_dataset_by_node(rows, rank=state.process_index, world_size=state.num_processes)
    else:
        # Evaluation batches are read by the main process and sliced for each (`prepare_streamed_loaders`), so
        # that every process runs as many batches and the last one's padding is dropped by gather_for_metrics; the
        # last batch is completed with the first one's posts, so all are padded to one width.
        batch_size *= PartialState().num_processes
        if dataclasses.is_dataclass(collate_fn) and hasattr(collate_fn, "padding"):
            collate_fn = dataclasses.replace(collate_fn, padding="max_length")
    # Several workers interleave their shards' batches, so an evaluated split would come out in another order than
    # its posts are read for predictions.jsonl: one worker keeps the order (and still reads ahead).
    workers = args.dataloader_num_workers if split == "train" else min(args.dataloader_num_workers, 1)
    if workers > rows.num_shards:
        logger.warning(
            "%s: %d data loader workers for %d data files: each worker reads whole files, so %d stay idle; write "
            "the data in more files (shards) to use them.",
            split,
            workers,
            rows.num_shards,
            workers - rows.num_shards,
        )
    return DataLoader(
        rows,
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=workers,
        # Without a generator of its own, starting an iteration draws the workers' base seed from the global RNG
        # (dropout's), which an exact resumption must not see advance.
        generator=torch.Generator().manual_seed(args.seed),
    )


def prepare_streamed_loaders(accelerator: Accelerator, loaders: dict[str, DataLoader]) -> dict[str, DataLoader]:
    """``accelerator.prepare`` for streamed loaders, with each split's own way of sharing the data out.

    Training: batches placed on the device, not split again: `split_dataset_by_node` gave each process its share,
    and accelerate would otherwise shard the `datasets.IterableDataset` once more (or, its default for an
    IterableDataset, read every batch on the main process and dispatch slices). Validation and test: the main
    process reads batches of ``per_device_eval_batch_size`` x processes and hands each process its slice
    (``dispatch_batches`` with ``split_batches``), so that every process runs the same number of batches and
    ``gather_for_metrics`` drops the padding of the last one.
    """
    prepared = {}
    for split, loader in loaders.items():
        training = split == "train"
        prepared[split] = prepare_data_loader(
            loader,
            device=accelerator.device,
            num_processes=1 if training else accelerator.num_processes,
            process_index=0 if training else accelerator.process_index,
            split_batches=not training,
            put_on_device=True,
            dispatch_batches=not training,
            non_blocking=accelerator.non_blocking,
        )
    return prepared


def while_every_process_has_a_batch(accelerator: Accelerator, batches: Iterable[Any]) -> Iterator[Any]:
    """The batches of one epoch of a streamed split, up to the first that some process lacks.

    `split_dataset_by_node` may give the processes a few posts more or less; a process that trained on a batch the
    others lack would wait for their gradients forever. The posts so left over are counted in the log.
    """
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        have = torch.tensor([batch is not None], device=accelerator.device)
        if bool(accelerator.gather(have).all()):
            yield batch
            continue
        left = sum(1 for _ in iterator) + 1 if batch is not None else 0
        # Counted over the processes, so that the main process, the one that logs, tells them all.
        left = int(accelerator.gather(torch.tensor([left], device=accelerator.device)).sum())
        if left:
            logger.warning(
                "%d batches of this epoch left unread, as a process's share of the streamed data ended before the "
                "others' (write the data in shards of equal size to train on every post).",
                left,
            )
        return


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
    if is_streamed(raw_datasets):
        return f"{source}: {', '.join(raw_datasets)} splits, streamed."
    sizes = ", ".join(f"{len(raw_datasets[split])} {split}" for split in raw_datasets)
    placeholders = sum(count_placeholder_images(raw_datasets[split]) for split in raw_datasets)
    images = f"; {placeholders} of the images are grey placeholders for missing ones" if placeholders else ""
    return f"{source}: {sizes} posts{images}."
