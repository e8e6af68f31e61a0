"""The training data path of ``--streaming`` against the model step, and its memory as the collection grows (issue 29).

Generated posts, written as Parquet shards with a `datasets.Image` column (PNG bytes) and ClassLabel tags, the form
`datasets.Dataset.to_parquet` and the Hub write: each post 12-30 words with BIO tags and a 64x64 PNG picture (a
colour gradient with noise, one of 512 pictures taken in turn, about 9 KB each). The collection is streamed by the
training scripts' own code: `datasets_scripts.user_data.load_user_dataset(..., streaming=True)` (the lazy
conversion, which reads and checks each picture), `muse_training.data.make_dataloaders` (shuffle buffer,
``--dataloader_num_workers`` workers) and `run_mner.MNERCollator` (the processor: tokenizer, images resized to the
paper's 224x224 and normalised, the decoder's 32x32 copy), ``--per_device_train_batch_size`` posts a batch.

Measured per collection: the seconds to the first batch (each worker fills its shuffle buffer first), then posts/s
of the whole data path (read, convert, decode, process) over the next ``--timed_posts`` posts; then one full pass
over the whole collection through the same loader and workers, every post read and its picture decoded and checked
(the conversion; batches kept as they come, without the processor, whose cost per post does not depend on the
collection), with its posts/s and the peak memory of the process and its loader workers together: their proportional
set sizes (PSS, /proc/<pid>/smaps_rollup, so that the pages the forked workers share with the main process count
once), sampled every 20 ms; then one training step of MuSE at the paper's sizes (as bench/training_step.py: BERT-
base-sized text encoder, ResNet-152 at 224x224, 6-layer CrossTransformer, both decoders) on a batch the loader made,
forward, backward and the scripts' AdamW, median of ``--model_steps`` after one warm-up step. The last lines compare
the data path's posts/s with the model's and the peak memory of the largest collection with the smallest's.

    python bench/data_path.py [--sizes 10000 100000] [--timed_posts 2000] [--workers 2] [--batch 4] [--model_steps 1]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers import AutoTokenizer, BertConfig, ViTImageProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import run_mner  # noqa: E402
from configuration_muse import MuSEConfig  # noqa: E402
from datasets_scripts.user_data import load_user_dataset  # noqa: E402
from modeling_muse import MuSEForTokenClassification  # noqa: E402
from muse_training.arguments import offline_text_model_path  # noqa: E402
from muse_training.data import make_dataloaders  # noqa: E402
from muse_training.optimization import create_optimizer  # noqa: E402
from processing_muse import MuSEProcessor  # noqa: E402

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
WORDS = "the a news today about with and we talked at again so it was new shop sale price game team city".split()
PICTURES = 512
ROWS_PER_SHARD = 5_000


def _pictures() -> list[bytes]:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 64)
    pictures = []
    for index in range(PICTURES):
        colour = rng.integers(0, 256, 3)
        gradient = ramp[:, None, None] * ramp[None, :, None] * colour
        pixels = np.clip(gradient + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
    return pictures


def write_collection(folder: Path, posts: int, pictures: list[bytes]) -> int:
    """``posts`` generated posts as ``data/train-*.parquet`` shards of `ROWS_PER_SHARD` (a `datasets.Image` column of
    PNG bytes, ClassLabel tags) and a small validation shard; returns the bytes written."""
    features = datasets.Features({
        "tokens": datasets.List(datasets.Value("string")),
        "ner_tags": datasets.List(datasets.ClassLabel(names=LABELS)),
        "image": datasets.Image(),
    })  # fmt: skip
    schema = features.arrow_schema
    rng = np.random.default_rng(posts)
    (folder / "data").mkdir(parents=True)
    shards = {"train": max(1, posts // ROWS_PER_SHARD), "validation": 1}
    for split, count in shards.items():
        total = posts if split == "train" else 64
        for shard in range(count):
            rows = range(shard * total // count, (shard + 1) * total // count)
            lengths = rng.integers(12, 31, len(rows))
            tokens = [list(rng.choice(WORDS, length)) for length in lengths]
            tags = [list(rng.integers(0, len(LABELS), length)) for length in lengths]
            images = [{"bytes": pictures[row % PICTURES], "path": None} for row in rows]
            table = pa.Table.from_pydict({"tokens": tokens, "ner_tags": tags, "image": images}, schema=schema)
            path = folder / "data" / f"{split}-{shard:05d}-of-{count:05d}.parquet"
            pq.write_table(table, path)
    return sum(path.stat().st_size for path in (folder / "data").iterdir())


def _process_tree_pss(pid: int) -> int:
    """Proportional set size of ``pid`` and its descendants (the loader's worker processes) in bytes, from /proc."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending += [int(child) for child in children.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


class PeakMemory:
    """Samples `_process_tree_pss` of this process every 20 ms inside the ``with`` block; ``peak`` is the largest."""

    def __enter__(self) -> PeakMemory:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _process_tree_pss(os.getpid()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def processor() -> MuSEProcessor:
    """The offline MiniLM tokenizer and the paper's 224x224 image preprocessing (n = 64 sub-words)."""
    tokenizer = AutoTokenizer.from_pretrained(offline_text_model_path())
    images = ViTImageProcessor(size={"height": 224, "width": 224})
    return MuSEProcessor(images, tokenizer, max_length=64, label_names=LABELS)


def _loader(folder: Path, args: argparse.Namespace, collate: object) -> torch.utils.data.DataLoader:
    splits = load_user_dataset("mner", dataset_name=str(folder), streaming=True)
    loader_args = argparse.Namespace(
        per_device_train_batch_size=args.batch, per_device_eval_batch_size=args.batch, seed=0,
        dataloader_num_workers=args.workers, shuffle_buffer_size=args.shuffle_buffer_size,
    )  # fmt: skip
    return make_dataloaders(splits, run_mner.COLUMNS, collate, loader_args)["train"]


def timed_data_path(folder: Path, args: argparse.Namespace) -> tuple[float, float, dict]:
    """Seconds to the first batch (the shuffle buffer fills first), then posts/s of the whole data path over the
    next ``--timed_posts`` posts; and the first batch."""
    loader = iter(_loader(folder, args, run_mner.MNERCollator(processor())))
    start = time.perf_counter()
    first = next(loader)
    started, posts = time.perf_counter(), 0
    for batch in loader:
        posts += batch["input_ids"].shape[0]
        if posts >= args.timed_posts:
            break
    return started - start, posts / (time.perf_counter() - started), first


def full_pass(folder: Path, args: argparse.Namespace) -> tuple[int, float, int, int]:
    """One pass over the whole collection (every picture decoded and checked): posts, seconds, the PSS before it and
    its peak."""
    posts, before = 0, _process_tree_pss(os.getpid())
    with PeakMemory() as memory:
        start = time.perf_counter()
        for rows in _loader(folder, args, lambda rows: len(rows)):
            posts += rows
        seconds = time.perf_counter() - start
    return posts, seconds, before, memory.peak


def model_step_seconds(batch: dict, steps: int) -> float:
    """Median seconds of a training step of MuSE at the paper's sizes on ``batch``, after one warm-up step."""
    torch.manual_seed(0)
    config = MuSEConfig(text_config=BertConfig(), vision_model_name_or_path="resnet152", num_labels=len(LABELS))
    model = MuSEForTokenClassification(config).train()
    optimizer = create_optimizer(model, ("tagger",), argparse.Namespace(
        learning_rate=5e-5, head_learning_rate=1e-4, weight_decay=0.01))  # fmt: skip
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="posts per collection")
    parser.add_argument("--workers", type=int, default=2, help="--dataloader_num_workers")
    parser.add_argument("--batch", type=int, default=4, help="--per_device_train_batch_size")
    parser.add_argument("--shuffle_buffer_size", type=int, default=10_000)
    parser.add_argument("--timed_posts", type=int, default=2000, help="posts timed through the whole data path")
    parser.add_argument("--model_steps", type=int, default=1, help="timed model steps (after one warm-up)")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    pictures = _pictures()
    print(f"posts: 12-30 words, a 64x64 PNG each ({np.mean([len(p) for p in pictures]) / 1024:.1f} KB on average, "
          f"{PICTURES} distinct); {args.workers} loader workers, batches of {args.batch}, shuffle buffer "
          f"{args.shuffle_buffer_size}; torch threads {torch.get_num_threads()}")
    rates, peaks, batch = {}, {}, None
    with tempfile.TemporaryDirectory(prefix="muse-data-path-") as scratch:
        for size in args.sizes:
            folder = Path(scratch, f"posts-{size}")
            # Written by a child process, so that what generating it allocates is not held in this one's heap.
            with multiprocessing.get_context("spawn").Pool(1) as writer:
                written = writer.apply(write_collection, (folder, size, pictures))
            first_batch_seconds, rates[size], first = timed_data_path(folder, args)
            batch = batch or first
            posts, seconds, before, peaks[size] = full_pass(folder, args)
            assert posts == size, (posts, size)
            print(f"{size:>7} posts ({written / 2**20:4.0f} MiB of Parquet, {max(1, size // ROWS_PER_SHARD)} shards): "
                  f"first batch after {first_batch_seconds:.0f} s, then data path {rates[size]:6.1f} posts/s (next "
                  f"{args.timed_posts}) | full pass, pictures decoded: "
                  f"{posts / seconds:6.1f} posts/s ({seconds:.0f} s), PSS {before / 2**20:.0f} MiB before it, peak "
                  f"{peaks[size] / 2**20:.0f} MiB")
    step = model_step_seconds(batch, args.model_steps)
    print(f"model step at the paper's sizes, batch of {args.batch}: {step:.2f} s (median of {args.model_steps}) = "
          f"{args.batch / step:.2f} posts/s")
    smallest, largest = min(args.sizes), max(args.sizes)
    print(f"data path / model step: {min(rates.values()) / (args.batch / step):.0f}x (the slower collection's posts/s "
          f"against the model's)")
    print(f"peak PSS, {largest} against {smallest} posts: {peaks[largest] / peaks[smallest]:.2f}x "
          f"({peaks[smallest] / 2**20:.0f} -> {peaks[largest] / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
