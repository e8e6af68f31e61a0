"""Tagging new posts (a test split without labels) and training on streamed data (``--streaming``).

The data is real files written here: JSON lines with image paths (tests/picture_data.py), and Parquet shards with a
`datasets.Image` column and ClassLabel tags written by `datasets.Dataset.to_parquet`, read back with
`datasets.load_dataset(..., streaming=True)`.
"""

from __future__ import annotations

import json
import subprocess
import time
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

import run_mner
import run_msa
from datasets_scripts import MissingImagesError
from datasets_scripts.user_data import UserDataError, load_user_dataset
from tests import picture_data
from tests.picture_data import COLOURS, colour_of
from tests.tiny_models import tiny_script_arguments

REPO_ROOT = Path(__file__).resolve().parents[1]

NER_NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SENTIMENT_NAMES = ["negative", "neutral", "positive"]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def _without_labels(path: Path, label: str) -> Path:
    """``path`` as new posts: each row without its ``label`` column."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    unlabeled = path.with_name(f"new-{path.name}")
    unlabeled.write_text("".join(json.dumps({k: v for k, v in row.items() if k != label}) + "\n" for row in rows))
    return unlabeled


def _write_parquet_shards(folder: Path, task: str, shards: int, sizes: dict[str, int] | None = None,
                          labeled_test: bool = True) -> Path:
    """A dataset folder ``data/<split>-0000i-of-0000n.parquet``: the picture posts with a `datasets.Image` column
    (PNG bytes) and ClassLabel labels, ``shards`` files per split (one for validation and test)."""
    rng = np.random.default_rng(0)
    for split, posts in picture_data.all_posts().items():
        posts = posts[: (sizes or {}).get(split, len(posts))]
        rows = []
        for post in posts:
            # A little noise keeps every picture's bytes distinct, so that a post paired with another's is noticed.
            pixels = np.clip(np.asarray(COLOURS[post["colour"]]) + rng.integers(-8, 9, (24, 24, 3)), 0, 255)
            row = {"image": datasets.Image().encode_example(pixels.astype(np.uint8))}
            if task == "mner":
                row |= {"tokens": post["tokens"], "ner_tags": [NER_NAMES.index(tag) for tag in post["ner_tags"]]}
            else:
                row |= {"text": " ".join(post["tokens"][:5]),
                        "label": SENTIMENT_NAMES.index(picture_data.SENTIMENT[post["colour"]])}
            rows.append(row)
        if task == "mner":
            features = {"tokens": datasets.List(datasets.Value("string")),
                        "ner_tags": datasets.List(datasets.ClassLabel(names=NER_NAMES))}
        else:
            features = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=SENTIMENT_NAMES)}
        if split == "test" and not labeled_test:
            label = "ner_tags" if task == "mner" else "label"
            features.pop(label)
            rows = [{k: v for k, v in row.items() if k != label} for row in rows]
        dataset = datasets.Dataset.from_list(rows, features=datasets.Features({"image": datasets.Image(), **features}))
        count = shards if split == "train" else 1
        (folder / "data").mkdir(parents=True, exist_ok=True)
        for index in range(count):
            dataset.shard(count, index, contiguous=True).to_parquet(
                folder / "data" / f"{split}-{index:05d}-of-{count:05d}.parquet"
            )
    return folder


def _tiny(text_model: Path, output_dir: Path, *extra: str, **values: object) -> list[str]:
    settings = dict(per_device_train_batch_size=16, per_device_eval_batch_size=16, learning_rate=2e-3,
                    head_learning_rate=1e-2) | values
    return tiny_script_arguments(text_model, output_dir, *extra, **settings)


def _predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
# Tagging new posts
# ----------------------------------------------------------------------------------------------------------------


def test_a_test_split_without_labels_is_read_as_new_posts(tmp_path):
    """JSON lines without the tag key (datasets fills the column with nulls across files) and a Parquet file without
    the label column: the test split has words (text) and images and no label column; train keeps its labels."""
    files = picture_data.write_jsonl(tmp_path / "jsonl")
    new = _without_labels(files["test"], "ner_tags")
    loaded = load_user_dataset("mner", data_files={**files, "test": new})
    assert loaded["test"].column_names == ["tokens", "image"] and "ner_tags" in loaded["train"].column_names
    assert loaded["train"].features["ner_tags"].feature.names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER",
                                                                  "I-PER"]
    only_new = load_user_dataset("mner", data_files={"test": new})
    assert only_new["test"].column_names == ["tokens", "image"] and len(only_new["test"]) == 48
    folder = _write_parquet_shards(tmp_path / "parquet", "msa", shards=1, labeled_test=False)
    loaded = load_user_dataset("msa", data_files={"test": folder / "data" / "test-00000-of-00001.parquet"})
    assert loaded["test"].column_names == ["text", "image"]
    assert colour_of(loaded["test"][0]["image"]) in COLOURS
    # A labelled split still needs its labels: train without them is an error naming the column.
    with pytest.raises(UserDataError, match=r"new-test.jsonl: no --label_column_name was given and 'ner_tags' is not "
                                            r"one of its columns"):
        load_user_dataset("mner", data_files={"train": new, "test": new})


def test_new_posts_without_a_trained_model_are_an_error_that_says_so(tmp_path, capsys):
    new = _without_labels(picture_data.write_jsonl(tmp_path / "jsonl")["test"], "ner_tags")
    with pytest.raises(SystemExit, match="the label names must come from a trained model: give --model_name_or_path"):
        run_mner.main(["--test_file", str(new), "--output_dir", str(tmp_path / "out")])


@pytest.mark.slow
def test_new_posts_are_tagged_by_both_scripts_without_a_score(tiny_text_model, tmp_path, offline, caplog):
    """Train each task a little on labelled data, then --do_predict on the same test posts without labels (JSON lines
    for NER, Parquet for sentiment): predictions.jsonl holds the same predictions as for the labelled posts, gold
    null, and nothing is scored."""
    jsonl = picture_data.write_jsonl(tmp_path / "jsonl")
    files = [f"--{split}_file={path}" for split, path in jsonl.items()]
    run_mner.main(_tiny(tiny_text_model, tmp_path / "ner", *files, num_train_epochs=2))
    labelled = _predictions(tmp_path / "ner")
    caplog.set_level("WARNING")
    new = _without_labels(jsonl["test"], "ner_tags")
    results = run_mner.main(["--model_name_or_path", str(tmp_path / "ner"), "--test_file", str(new), "--do_predict",
                             "--output_dir", str(tmp_path / "ner-tagged")])
    assert caplog.text.count("The test split has no labels: predictions only") == 1
    assert not any(name.startswith("test_") for name in results), results
    saved = json.loads((tmp_path / "ner-tagged" / "all_results.json").read_text())
    assert not any(name.startswith("test_") for name in saved) and saved["num_test_samples"] == 48
    tagged = _predictions(tmp_path / "ner-tagged")
    assert [row["gold_tags"] for row in tagged] == [None] * 48
    assert [row["predicted_tags"] for row in tagged] == [row["predicted_tags"] for row in labelled]
    for row, before in zip(tagged, labelled, strict=True):
        assert row["tokens"] == before["tokens"] and row["scores"] == pytest.approx(before["scores"], abs=1e-5)
    assert set(tagged[0]["predicted_tags"]) <= set(NER_NAMES)

    parquet = _write_parquet_shards(tmp_path / "msa-data", "msa", shards=1)
    split_files = {split: parquet / "data" / f"{split}-00000-of-00001.parquet" for split in ("train", "validation",
                                                                                           "test")}
    run_msa.main(_tiny(tiny_text_model, tmp_path / "msa", *[f"--{s}_file={p}" for s, p in split_files.items()],
                       num_train_epochs=2))
    labelled = _predictions(tmp_path / "msa")
    unlabeled = _write_parquet_shards(tmp_path / "msa-new", "msa", shards=1, labeled_test=False)
    caplog.clear()
    results = run_msa.main(["--model_name_or_path", str(tmp_path / "msa"), "--test_file",
                            str(unlabeled / "data" / "test-00000-of-00001.parquet"), "--output_dir",
                            str(tmp_path / "msa-tagged")])
    assert caplog.text.count("The test split has no labels: predictions only") == 1
    assert not any(name.startswith("test_") for name in results), results
    tagged = _predictions(tmp_path / "msa-tagged")
    assert [row["gold_label"] for row in tagged] == [None] * 48
    assert [row["predicted_label"] for row in tagged] == [row["predicted_label"] for row in labelled]
    assert all(sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4) for row in tagged)


# ----------------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------------


def _posts(rows, names: list[str]) -> list[tuple]:
    return sorted(
        (tuple(row["tokens"]), tuple(names[tag] for tag in row["ner_tags"]), np.asarray(row["image"]).tobytes())
        for row in rows
    )


def test_streamed_parquet_shards_give_the_same_posts_converted_lazily(tmp_path):
    """Parquet shards with an Image column, streamed: an IterableDataset per split (nothing converted up front), the
    label names from the ClassLabel, and the same posts, tags and pictures as the converted (held) dataset."""
    folder = _write_parquet_shards(tmp_path / "shards", "mner", shards=4)
    streamed = load_user_dataset("mner", dataset_name=str(folder), streaming=True)
    assert isinstance(streamed, datasets.IterableDatasetDict) and streamed["train"].num_shards == 4
    assert streamed["train"].features["ner_tags"].feature.names == NER_NAMES
    cached = list((tmp_path / "datasets-cache").rglob("*.arrow"))
    assert not cached, f"streaming converted the data into the cache: {cached}"
    held = load_user_dataset("mner", dataset_name=str(folder))
    assert list((tmp_path / "datasets-cache").rglob("*.arrow")), "the held conversion writes the cache"
    for split in ("train", "validation", "test"):
        assert _posts(streamed[split], NER_NAMES) == _posts(held[split], NER_NAMES), split


def test_streamed_string_labels_need_label_names_and_missing_images_stop_at_the_post(tmp_path):
    files = picture_data.write_jsonl(tmp_path / "jsonl")
    with pytest.raises(UserDataError, match=r"--streaming reads the data while training.*--label_names"):
        load_user_dataset("mner", data_files=files, streaming=True)
    streamed = load_user_dataset("mner", data_files=files, streaming=True, label_names=NER_NAMES)
    first = json.loads(files["test"].read_text().splitlines()[0])
    row = next(iter(streamed["test"]))
    assert row["tokens"] == first["tokens"] and [NER_NAMES[t] for t in row["ner_tags"]] == first["ner_tags"]
    short = load_user_dataset("mner", data_files=files, streaming=True, label_names=["O", "B-PER", "I-PER"])
    with pytest.raises(UserDataError, match=r"is not one of --label_names \['O', 'B-PER', 'I-PER'\]"):
        list(short["train"])
    (tmp_path / "jsonl" / "images" / f"{first['image'].split('/')[-1]}").unlink()
    streamed = load_user_dataset("mner", data_files=files, streaming=True, label_names=NER_NAMES)
    with pytest.raises(MissingImagesError, match=r"test.jsonl \(a streamed post\): the image is missing.*"
                                                 r"--missing_images placeholder"):
        next(iter(streamed["test"]))
    csv = picture_data.write_csv(tmp_path / "csv")
    streamed = load_user_dataset("msa", data_files=csv, streaming=True, label_names=SENTIMENT_NAMES)
    for row in streamed["test"]:
        assert SENTIMENT_NAMES[row["label"]] == picture_data.SENTIMENT[colour_of(row["image"])]
    with pytest.raises(UserDataError, match="--streaming cannot cut a validation split out of train"):
        load_user_dataset("mner", data_files={"train": files["train"]}, streaming=True, label_names=NER_NAMES,
                          validation_split_percentage=10)


def test_the_streamed_training_loader_reshuffles_each_epoch_and_repeats_it_exactly(tmp_path):
    """Two DataLoader workers decode the images; each epoch holds every post once, epochs differ (set_epoch reseeds
    the buffer), and the same epoch comes out the same again (which an exact mid-epoch resumption relies on)."""
    from accelerate import Accelerator

    from muse_training.arguments import parse_args
    from muse_training.data import load_splits, make_dataloaders, prepare_streamed_loaders

    folder = _write_parquet_shards(tmp_path / "shards", "mner", shards=4)
    args = parse_args(run_mner.TASK, ["--dataset_name", str(folder), "--streaming", "--dataloader_num_workers", "2",
                                      "--per_device_train_batch_size", "16", "--shuffle_buffer_size", "64"])
    accelerator = Accelerator(cpu=True)
    splits = load_splits(args, accelerator)

    def words(rows: list[dict]) -> list[tuple]:
        return [(tuple(row["tokens"]), np.asarray(row["image"]).tobytes()) for row in rows]

    loaders = prepare_streamed_loaders(accelerator, make_dataloaders(splits, run_mner.COLUMNS, words, args))
    train = loaders["train"]
    epochs = []
    for epoch in (0, 1, 0):
        train.set_epoch(epoch)
        epochs.append([post for batch in train for post in batch])
    assert len(epochs[0]) == 192 and sorted(epochs[0]) == sorted(epochs[1])
    assert len(set(epochs[0])) == 192  # every post once (pictures carry noise, so each is distinct)
    assert epochs[0] != epochs[1] and epochs[0] == epochs[2]


def test_the_streamed_training_buffer_is_fed_one_shard_at_a_time_in_a_new_order_each_epoch(tmp_path):
    """Memory stays flat as the collection grows only if the shuffle buffer reads one shard (one decoded Parquet row
    group) at a time: `datasets` by default interleaves up to 10 shards, holding a row group of each. The shards still
    come in a seeded order drawn anew each epoch."""
    from accelerate import Accelerator

    from muse_training.arguments import parse_args
    from muse_training.data import load_splits, make_dataloaders, prepare_streamed_loaders

    folder = _write_parquet_shards(tmp_path / "shards", "mner", shards=4)
    shard_of = {}
    for index, file in enumerate(sorted((folder / "data").glob("train-*.parquet"))):
        for row in datasets.load_dataset("parquet", data_files=str(file), split="train"):
            shard_of[np.asarray(row["image"]).tobytes()] = index
    args = parse_args(run_mner.TASK, ["--dataset_name", str(folder), "--streaming", "--dataloader_num_workers", "0",
                                      "--per_device_train_batch_size", "16", "--shuffle_buffer_size", "8"])
    accelerator = Accelerator(cpu=True)
    loaders = prepare_streamed_loaders(accelerator, make_dataloaders(
        load_splits(args, accelerator), run_mner.COLUMNS,
        lambda rows: [shard_of[np.asarray(row["image"]).tobytes()] for row in rows], args))
    shard_orders = []
    for epoch in range(4):
        loaders["train"].set_epoch(epoch)
        shards = [shard for batch in loaders["train"] for shard in batch]
        assert len(shards) == 192
        # A shard holds 48 posts and the buffer 8, so the first 40 posts out cannot have met a second shard.
        assert len(set(shards[:40])) == 1, shards[:40]
        shard_orders.append(tuple(dict.fromkeys(shards)))
    assert len(set(shard_orders)) > 1, shard_orders


def _streamed_run_arguments(text_model: Path, folder: Path, output_dir: Path, *extra: str) -> list[str]:
    return _tiny(text_model, output_dir, "--dataset_name", str(folder), "--streaming", *extra,
                 per_device_train_batch_size=8, dataloader_num_workers=2, num_train_epochs=2, max_train_steps=40,
                 shuffle_buffer_size=32)


def test_streaming_without_max_train_steps_is_an_error_naming_it(tiny_text_model, tmp_path, offline):
    folder = _write_parquet_shards(tmp_path / "shards", "mner", shards=2, sizes={"train": 32, "validation": 8,
                                                                               "test": 8})
    with pytest.raises(SystemExit, match=r"--streaming: the number of training posts is not known.*--max_train_steps"):
        run_mner.main(_tiny(tiny_text_model, tmp_path / "out", "--dataset_name", str(folder), "--streaming"))


@pytest.mark.slow
def test_a_streamed_run_trains_and_a_killed_one_resumes_mid_epoch_exactly(tiny_text_model, script_env, tmp_path):
    """A real Parquet folder streamed with two loader workers: 192 posts in batches of 8 (24 steps an epoch, 40 steps
    in all, so the run stops in its second epoch). A copy killed once step_30 (mid epoch 2) is written and resumed
    with 'latest' ends with the same weights (the step_40 checkpoint: the kept model may be epoch 1's) and results
    as the uninterrupted run."""
    folder = _write_parquet_shards(tmp_path / "shards", "mner", shards=4)
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    extra = ("--checkpointing_steps", "10")
    subprocess.run([sys.executable, "run_mner.py",
                    *_streamed_run_arguments(tiny_text_model, folder, uninterrupted, *extra)],
                   cwd=REPO_ROOT, env=script_env, check=True, capture_output=True)  # fmt: skip
    results = json.loads((uninterrupted / "all_results.json").read_text())
    assert results["train_steps"] == 40 and results["train_epochs"] == 2 and "test_f1" in results
    assert "num_train_samples" not in results  # a streamed split's length is not known

    command = [sys.executable, "run_mner.py", *_streamed_run_arguments(tiny_text_model, folder, interrupted, *extra)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=script_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (interrupted / "step_30").is_dir():
            assert process.poll() is None, "the run ended before its step_30 checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.kill()
    finally:
        process.wait()
    assert not (interrupted / "all_results.json").exists() and not (interrupted / "step_40").exists()
    resumed = subprocess.run(command + ["--resume_from_checkpoint", "latest"], cwd=REPO_ROOT, env=script_env,
                             check=True, capture_output=True, text=True)
    assert "Resumed from" in resumed.stderr
    from safetensors.torch import load_file

    for weights in ("step_40/model.safetensors", "model.safetensors"):
        expected, actual = load_file(uninterrupted / weights), load_file(interrupted / weights)
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=f"{weights}: {key}")
    again = json.loads((interrupted / "all_results.json").read_text())
    for key in ("train_runtime_seconds", "train_samples_per_second", "wall_time_seconds"):
        results.pop(key), again.pop(key)
    assert again == pytest.approx(results, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_two_processes_each_stream_their_own_shards(tiny_text_model, script_env, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on the CPU) over 4 Parquet shards of 177 posts:
    split_dataset_by_node gives each process 2 shards (89 and 88 posts: 12 and 11 batches of 8), and accelerate does
    not split them again (6 an epoch) nor hand both processes everything (23). The process with a batch more stops
    with the other (alone it would wait for the other's gradients forever) and says so. One epoch, so the steps count
    the batches; the test split is scored once, every post once."""
    folder = _write_parquet_shards(tmp_path / "shards", "mner", shards=4, sizes={"train": 177})
    output_dir = tmp_path / "two"
    arguments = _streamed_run_arguments(tiny_text_model, folder, output_dir)
    arguments[arguments.index("--num_train_epochs") + 1] = "1"
    # One reader per process: with loader workers each worker batches its own shard, which evens the counts out here.
    arguments[arguments.index("--dataloader_num_workers") + 1] = "0"
    result = subprocess.run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "run_mner.py", *arguments],
        cwd=REPO_ROOT, env={**script_env, "MASTER_PORT": "29523"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Num processes: 2" in result.stderr
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["train_steps"] == 11 and results["train_epochs"] == 1
    assert (result.stdout + result.stderr).count("1 batches of this epoch left unread") == 1, result.stderr[-2000:]
    rows = _predictions(output_dir)
    assert len(rows) == 48 and len({tuple(row["tokens"]) for row in rows}) == len({
        tuple(post["tokens"]) for post in picture_data.all_posts()["test"]})
