"""Training on your own data (datasets_scripts/user_data.py, muse_training.data / models) and from a trained MuSE.

The data is synthetic and real-format: JSON lines with relative image paths, a Hub-style Parquet folder with an Image
column, the Parquet export of `datasets_scripts.export`, the UMT release layout, CSV for sentiment (tests/picture_data.py).
Only the picture tells an entity's type or a post's sentiment, so a model that pairs a post with another post's
picture (or ignores pictures) cannot do better than a third; the slow tests train through each form and compare
MuSE with the text-only variant.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from local_server import QuietHandler, serving
from PIL import Image


import run_mner
import run_msa
from datasets_scripts import MissingImagesError
from datasets_scripts.export import export_parquet
from datasets_scripts.loading import load_muse_dataset
from datasets_scripts.user_data import UserDataError, load_user_dataset, ner_label_list
from muse_training.arguments import offline_text_model_path, parse_args
from muse_training.data import load_splits
from tests import picture_data
from tests.picture_data import COLOURS, ENTITY_TYPE, SENTIMENT, colour_of
from tests.tiny_models import tiny_processor, tiny_script_arguments


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


def _ner_forms(tmp_path: Path) -> dict[str, list[str]]:
    """Each NER data form as the command-line arguments that name it."""
    jsonl = picture_data.write_jsonl(tmp_path / "jsonl")
    hub = picture_data.write_hub_parquet(tmp_path / "hub-parquet")
    umt, images = picture_data.write_umt(tmp_path / "umt")
    exported = load_muse_dataset("umt", data_dir=umt, image_dir=images, cache_dir=tmp_path / "export-cache")
    export_parquet(exported, tmp_path / "exported")
    return {
        "jsonl": [f"--{split}_file={path}" for split, path in jsonl.items()],
        "hub_parquet_folder": ["--dataset_name", str(hub)],
        "export_parquet_folder": ["--dataset_name", str(tmp_path / "exported")],
        "umt_builder": ["--dataset_name", "umt", "--data_dir", str(umt), "--image_dir", str(images)],
    }


def _entity_colours(tokens_tags: list[str]) -> set[str]:
    return {colour for colour, kind in ENTITY_TYPE.items() for tag in tokens_tags if tag.endswith(kind)}


def _posts_of(splits: datasets.DatasetDict, names: list[str]) -> dict[str, list[tuple]]:
    """Each split's posts as (words, tag names, pixels), in a fixed order."""
    return {
        split: sorted(
            (tuple(row["tokens"]), tuple(names[tag] for tag in row["ner_tags"]), np.asarray(row["image"]).tobytes())
            for row in rows
        )
        for split, rows in splits.items()
    }


def test_every_ner_form_pairs_each_post_with_its_own_picture_through_the_collator(tmp_path, accelerator):
    """Every form gives the same posts with the same tags and pictures (so training on any of them is training on the
    JSON lines, which the slow test does), and the collator keeps each post with its own picture."""
    posts_by_form = {}
    for form, data_args in _ner_forms(tmp_path).items():
        args = parse_args(run_mner.TASK, data_args)
        splits = load_splits(args, accelerator)
        assert {split: len(rows) for split, rows in splits.items()} == picture_data.SIZES, form
        names = splits["train"].features["ner_tags"].feature.names
        posts_by_form[form] = (names, _posts_of(splits, names))
        processor = tiny_processor(label_names=names)
        collate = run_mner.MNERCollator(processor)
        for split, rows in splits.items():
            rows = list(rows.select(range(12)))
            for row in rows:
                assert {colour_of(row["image"])} == _entity_colours([names[t] for t in row["ner_tags"]]), form
            batch = collate(rows)
            # The decoder copy is the picture at 32 x 32 in [-1, 1]: its mean colour is the post's own picture's.
            for row, small in zip(rows, batch["decoder_pixel_values"], strict=True):
                mean = ((small.mean(dim=(1, 2)) + 1) * 127.5).tolist()
                nearest = min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], mean)))
                assert nearest == colour_of(row["image"]), (form, split)
    label_names, posts = posts_by_form.pop("jsonl")
    for form, (names, form_posts) in posts_by_form.items():
        assert sorted(names) == sorted(label_names) and form_posts == posts, form


def test_a_csv_for_sentiment_pairs_each_post_with_its_picture_and_keeps_its_own_labels(tmp_path, accelerator):
    files = picture_data.write_csv(tmp_path / "csv")
    args = parse_args(run_msa.TASK, [f"--{split}_file={path}" for split, path in files.items()])
    splits = load_splits(args, accelerator)
    names = splits["train"].features["label"].names
    assert names == ["negative", "neutral", "positive"]  # the data's own strings, sorted
    for row in splits["test"]:
        assert SENTIMENT[colour_of(row["image"])] == names[row["label"]]
    batch = run_msa.MSACollator(tiny_processor(label_names=None))(list(splits["test"].select(range(6))))
    assert batch["labels"].tolist() == splits["test"]["label"][:6]


def test_string_tags_give_o_first_then_each_type(tmp_path):
    assert ner_label_list({"I-ORG", "B-PER", "O", "I-PER"}) == ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _picture(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), COLOURS[colour]).save(path)
    return path


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"tokens": ["a", "b"], "ner_tags": ["O", "X-PER"]}, r"train.jsonl row 1: the tag 'X-PER' is not a BIO tag"),
        ({"tokens": ["a", "b"], "ner_tags": ["O"]}, r"train.jsonl row 1: 2 words in 'tokens' but 1 tags"),
        ({"tokens": "a b", "ner_tags": ["O", "O"]}, r"train.jsonl row 1: 'tokens' must be the post's words"),
        ({"tokens": ["a"], "ner_tags": [3]}, r"row 1: the tags in 'ner_tags' are ints"),
    ],
)
def test_bad_ner_rows_are_named_by_file_and_row(tmp_path, row, expected):
    _picture(tmp_path / "a.png")
    good = {"tokens": ["Zorb"], "ner_tags": ["B-PER"], "image": "a.png"}
    path = _write_jsonl(tmp_path / "train.jsonl", [good, {**row, "image": "a.png"}])
    with pytest.raises(UserDataError, match=expected):
        load_user_dataset("mner", data_files={"train": path})


def test_a_missing_column_lists_the_columns_found_and_a_named_one_is_used(tmp_path):
    _picture(tmp_path / "a.png")
    path = _write_jsonl(tmp_path / "train.jsonl", [{"words": ["Zorb"], "tags": ["B-PER"], "picture": "a.png"}])
    with pytest.raises(UserDataError, match=r"--text_column_name .*'tokens' is not one of its columns \['words', "
                                            r"'tags', 'picture'\]"):
        load_user_dataset("mner", data_files={"train": path})
    loaded = load_user_dataset("mner", data_files={"train": path}, text_column="words", label_column="tags",
                               image_column="picture")
    assert loaded["train"][0]["tokens"] == ["Zorb"] and colour_of(loaded["train"][0]["image"]) == "red"


def test_sentiment_takes_any_label_set_strings_or_integers(tmp_path):
    _picture(tmp_path / "a.png")
    strings = _write_jsonl(tmp_path / "s.jsonl", [{"text": "x", "label": lab, "image": "a.png"}
                                                  for lab in ("sarcastic", "happy", "sad", "happy")])
    loaded = load_user_dataset("msa", data_files={"train": strings})
    assert loaded["train"].features["label"].names == ["happy", "sad", "sarcastic"]
    assert loaded["train"]["label"] == [2, 0, 1, 0]
    integers = _write_jsonl(tmp_path / "i.jsonl", [{"text": ["two", "words"], "label": lab, "image": "a.png"}
                                                   for lab in (4, 1, 4)])
    loaded = load_user_dataset("msa", data_files={"train": integers})
    assert loaded["train"].features["label"].names == ["1", "4"] and loaded["train"]["label"] == [1, 0, 1]
    assert loaded["train"][0]["text"] == "two words"


def test_missing_images_are_listed_or_replaced_and_counted(tmp_path, accelerator, caplog):
    _picture(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows = [{"tokens": ["Zorb"], "ner_tags": ["B-PER"], "image": image}
            for image in ("images/a.png", "images/gone.png", "images/broken.png", None)]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(MissingImagesError) as raised:
        load_user_dataset("mner", data_files={"train": path})
    message = str(raised.value)
    assert "3 of 4 images are missing or unreadable" in message
    assert "row 1: missing" in message and "row 2: unreadable" in message and "row 3: no image given" in message
    assert "--missing_images placeholder" in message
    with caplog.at_level("WARNING"):
        loaded = load_user_dataset("mner", data_files={"train": path}, missing_images="placeholder")
    assert "replaced 3 of 4 train images by the grey placeholder" in caplog.text
    from datasets_scripts import count_placeholder_images

    assert count_placeholder_images(loaded["train"]) == 3 and colour_of(loaded["train"][0]["image"]) == "red"


def test_relative_paths_resolve_against_the_data_file_or_image_dir(tmp_path):
    _picture(tmp_path / "data" / "pics" / "a.png", "green")
    _picture(tmp_path / "elsewhere" / "pics" / "a.png", "blue")
    path = _write_jsonl(tmp_path / "data" / "train.jsonl",
                        [{"tokens": ["Zorb"], "ner_tags": ["B-LOC"], "image": "pics/a.png"}])
    assert colour_of(load_user_dataset("mner", data_files={"train": path})["train"][0]["image"]) == "green"
    moved = load_user_dataset("mner", data_files={"train": path}, image_dir=tmp_path / "elsewhere")
    assert colour_of(moved["train"][0]["image"]) == "blue"
    climbing = _write_jsonl(tmp_path / "data" / "climb.jsonl",
                            [{"tokens": ["Zorb"], "ner_tags": ["B-LOC"], "image": "../elsewhere/pics/a.png"}])
    with pytest.raises(MissingImagesError, match=r"climb.jsonl row 0: a relative path that leaves the data's folder"):
        load_user_dataset("mner", data_files={"train": climbing})


class _ImageServer(QuietHandler):
    picture = b""

    def do_GET(self):  # noqa: N802 - the handler name http.server calls
        if self.path == "/big.png":
            body = b"\0" * 4096
        elif self.path == "/ok.png":
            body = self.picture
        else:
            self.send_error(404)
            return
        self.send_body(body)


def test_image_urls_are_fetched_once_with_the_pipeline_s_limits(tmp_path, monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    buffer = tmp_path / "blue.png"
    _picture(buffer, "blue")
    _ImageServer.picture = buffer.read_bytes()
    with serving(_ImageServer) as base:
        rows = [{"text": "x", "label": "a", "image": f"{base}/{name}"} for name in ("ok.png", "big.png", "404.png")]
        path = _write_jsonl(tmp_path / "train.jsonl", rows)
        loaded = load_user_dataset("msa", data_files={"train": path}, missing_images="placeholder",
                                   max_image_bytes=1024, allow_private_urls=True)
    images = loaded["train"].cast_column("image", datasets.Image(decode=False))["image"]
    assert images[0]["bytes"] == _ImageServer.picture and images[0]["path"] == f"{base}/ok.png"
    assert [image["path"] for image in images[1:]] == [None, None]  # over max_image_bytes, and HTTP 404


def test_a_validation_split_is_cut_from_train_when_the_data_has_none(tmp_path, caplog):
    _picture(tmp_path / "a.png")
    path = _write_jsonl(tmp_path / "train.jsonl", [{"text": str(i), "label": "a" if i % 2 else "b", "image": "a.png"}
                                                   for i in range(20)])
    with caplog.at_level("WARNING"):
        loaded = load_user_dataset("msa", data_files={"train": path}, validation_split_percentage=25)
    assert (len(loaded["train"]), len(loaded["validation"])) == (15, 5)
    assert "has no validation split: 25% of train (5 posts, seed 42)" in caplog.text


def test_a_trained_model_brings_its_towers_and_architecture(tmp_path, capsys):
    from tests.tiny_models import tiny_config

    from modeling_muse import MuSEForTokenClassification

    MuSEForTokenClassification(tiny_config()).save_pretrained(tmp_path / "muse")
    args = parse_args(run_mner.TASK, ["--model_name_or_path", str(tmp_path / "muse")])
    assert args.text_model_name_or_path is None and args.vision_model_name_or_path is None
    assert args.image_size is None and args.muse_config == {}
    with pytest.raises(SystemExit):
        parse_args(run_mner.TASK, ["--model_name_or_path", str(tmp_path / "muse"), "--num_cross_layers", "4",
                                   "--vision_model_name", "resnet18"])
    error = capsys.readouterr().err
    assert "brings its own towers, processor and MuSE configuration; drop --vision_model_name_or_path, " \
           "--num_cross_layers" in error
    with pytest.raises(SystemExit):
        parse_args(run_mner.TASK, ["--model_name_or_path", offline_text_model_path()])
    assert "is a 'bert' model, not MuSE" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Slow: training on each form, from pictures only
# ----------------------------------------------------------------------------------------------------------------


def _tiny(text_model: Path, output_dir: Path, *extra: str) -> list[str]:
    return tiny_script_arguments(
        text_model, output_dir, *extra, per_device_train_batch_size=16, per_device_eval_batch_size=32,
        num_train_epochs=8, learning_rate=2e-3, head_learning_rate=1e-2,
    )  # fmt: skip


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
def test_muse_types_entities_from_their_pictures(tiny_text_model, tmp_path, offline):
    """On JSON lines; every other form gives the same posts (the collator test above)."""
    files = [f"--{split}_file={path}" for split, path in picture_data.write_jsonl(tmp_path / "jsonl").items()]
    full = run_mner.main(_tiny(tiny_text_model, tmp_path / "full", *files))["test_f1"]
    text_only = run_mner.main(_tiny(tiny_text_model, tmp_path / "only-t", *files, "--variant", "only_t"))["test_f1"]
    # The entity is found from the words, its type only from the picture.
    assert full >= 0.85 and text_only < 0.6 and full - text_only >= 0.3, (full, text_only)


@pytest.mark.slow
def test_muse_reads_sentiment_from_the_pictures_of_a_csv(tiny_text_model, tmp_path, offline):
    files = [f"--{split}_file={path}" for split, path in picture_data.write_csv(tmp_path / "csv").items()]
    full = run_msa.main(_tiny(tiny_text_model, tmp_path / "full", *files))
    text_only = run_msa.main(_tiny(tiny_text_model, tmp_path / "only-t", *files, "--variant", "only_t"))
    assert full["test_accuracy"] >= 0.85 and text_only["test_accuracy"] < 0.6, (full, text_only)
    rows = [json.loads(line) for line in (tmp_path / "full" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == picture_data.SIZES["test"]
    assert set(rows[0]) == {
        "index", "text", "predicted_label", "probabilities", "gold_label", "predicted_label_without_image",
        "image_changed_prediction",
    }  # fmt: skip
    # A model without an image branch is not changed by withholding the picture.
    assert text_only["test_image_effect_accuracy"] == 0 and text_only["test_accuracy_without_image"] == text_only[
        "test_accuracy"]
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert np.mean([row["predicted_label"] == row["gold_label"] for row in rows]) == full["test_accuracy"]


@pytest.mark.slow
def test_a_trained_model_is_evaluated_and_fine_tuned_on_other_labels(tiny_text_model, tmp_path, offline, caplog):
    jsonl = picture_data.write_jsonl(tmp_path / "jsonl")
    files = [f"--{split}_file={path}" for split, path in jsonl.items()]
    # Two epochs: what is checked here is what happens to the trained model, not how well it learned.
    trained = run_mner.main(_tiny(tiny_text_model, tmp_path / "trained", *files, "--num_train_epochs", "2"))
    model_dir = tmp_path / "trained"
    before = sorted(path.name for path in model_dir.iterdir())

    # Evaluate only: the same test score, the predictions file, and the model folder left as it was.
    evaluated = run_mner.main(["--model_name_or_path", str(model_dir), "--do_train", "false", "--output_dir",
                               str(tmp_path / "evaluated"), *files])
    assert evaluated["test_f1"] == pytest.approx(trained["test_f1"]) and "train_steps" not in evaluated
    assert evaluated["eval_f1"] == pytest.approx(trained["eval_f1"])
    assert sorted(path.name for path in model_dir.iterdir()) == before
    rows = [json.loads(line) for line in (tmp_path / "evaluated" / "predictions.jsonl").read_text().splitlines()]
    test_posts = [json.loads(line) for line in jsonl["test"].read_text().splitlines()]
    assert [row["tokens"] for row in rows] == [post["tokens"] for post in test_posts]
    for row, post in zip(rows, test_posts, strict=True):
        assert row["gold_tags"] == post["ner_tags"] and len(row["predicted_tags"]) == len(post["tokens"])
        assert all(0.0 <= score <= 1.0 for score in row["scores"])

    # Fine-tune on data with other type names: a new CRF head, named in a warning; the card names the base model.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for split, path in jsonl.items():
        lines = path.read_text().replace("-PER", "-PERSON").replace('"images/', f'"{jsonl[split].parent}/images/')
        (renamed / f"{split}.jsonl").write_text(lines)
    caplog.set_level("WARNING")
    tuned = run_mner.main(["--model_name_or_path", str(model_dir), "--num_train_epochs", "2", "--learning_rate",
                           "1e-3", "--head_learning_rate", "1e-2", "--per_device_train_batch_size", "16",
                           "--output_dir", str(tmp_path / "tuned"),
                           *[f"--{split}_file={renamed / f'{split}.jsonl'}" for split in jsonl]])
    assert "was trained for the labels ['O', 'B-LOC', 'I-LOC', 'B-ORG', 'I-ORG', 'B-PER', 'I-PER']" in caplog.text
    assert "'B-PERSON', 'I-PERSON']: its head (tagger) is replaced" in caplog.text
    # The trained model was saved for serving: training from it builds its decoders afresh, and says so.
    assert "was saved without its training-only decoders" in caplog.text
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert "B-PERSON" in config["id2label"].values() and tuned["train_steps"] == 2 * 12
    card = (tmp_path / "tuned" / "README.md").read_text()
    # A local folder is named in the card's text, never as the metadata's base_model (a Hub model id).
    assert "base_model" not in card.split("\n---\n")[0] and "Fine-tuned from the MuSE model `trained`" in card


def test_a_hub_dataset_s_image_paths_are_read_only_where_datasets_downloaded_them(tmp_path):
    """A Hub dataset is someone else's: an Image value's path is read inside the download caches only, a path string
    not at all (unless relative to an image_dir given here)."""
    from datasets_scripts.user_rows import _Canonical

    convert = _Canonical(
        task="msa", split_name="someone/posts (train split)", columns=("text", "label", "image"), label_names=["a"],
        label_is_class=False, base_folder=None, from_hub=True, trusted_folders=(str(tmp_path / "cache"),),
        timeout=1.0, max_image_bytes=10_000,
    )
    downloaded, private = _picture(tmp_path / "cache" / "x.png"), _picture(tmp_path / "home" / "secret.png", "blue")
    assert convert._image({"bytes": None, "path": str(downloaded)}) == ({"bytes": None, "path": str(downloaded)}, None)
    for value in ({"bytes": None, "path": str(private)}, str(private), str(downloaded), "secret.png"):
        stored, problem = convert._image(value)
        assert stored["path"] is None and problem.startswith("a file path in a Hub dataset"), value
