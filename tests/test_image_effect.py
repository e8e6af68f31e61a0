"""What the picture adds (muse_training.image_effect): every evaluation of run_mner.py / run_msa.py also scores the
posts with the picture withheld, and reports both and the difference in all_results.json, the model card, the log and
predictions.jsonl.

The end-to-end tests (about 10 s each) train a tiny model with `transformers.Trainer` (faster than the scripts' runs with decoders) on
posts where only the picture decides the answer (the same text for every post, the label from the picture's colour,
tests/picture_data.py's colours), and on posts where the picture is noise (the text decides), then score the saved
folder with the script on data files: the picture's effect must be large in the first case and near zero in the second.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Trainer, TrainingArguments


import run_mner
import run_msa
from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification
from muse_training.arguments import parse_args
from muse_training.checkpoints import TrainingProgress
from muse_training.collators import MNERCollator, MSACollator
from muse_training.image_effect import effect_summary, effect_table_rows, with_image_effect
from muse_training.model_card import write_model_card
from tests import picture_data
from tests.tiny_models import tiny_config, tiny_processor

NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SENTIMENTS = ["negative", "neutral", "positive"]
SAME_TEXT = ["i", "saw", "the", "news", "today"]
# Where the picture is noise, the text decides the sentiment.
TEXT_OF = {"red": "awful terrible day", "green": "wonderful happy day", "blue": "ordinary plain day"}


def test_effect_keys_are_each_score_without_the_picture_and_the_difference():
    with_image = {"f1": 0.9, "PER_f1": 1.0, "loss": 0.2, "report": "text"}
    without_image = {"f1": 0.4, "PER_f1": 0.25, "loss": 1.5, "report": "other text"}
    combined = with_image_effect(with_image, without_image)
    assert list(combined) == [
        "f1", "PER_f1", "loss", "report", "f1_without_image", "image_effect_f1", "PER_f1_without_image",
        "image_effect_PER_f1", "loss_without_image", "image_effect_loss",
    ]  # fmt: skip
    assert combined["image_effect_f1"] == pytest.approx(0.5) and combined["image_effect_loss"] == pytest.approx(-1.3)
    assert combined["report"] == "text"
    # A type only one evaluation names (here ORG, predicted only without the picture) has F1 0 in the other; a score
    # only one has (Pearson's r, undefined for constant predictions) has no effect.
    one_sided = with_image_effect({"f1": 0.5, "LOC_f1": 0.5, "pearson": 0.3}, {"f1": 0.2, "ORG_f1": 0.0, "LOC_f1": 0.4})
    assert one_sided == {
        "f1": 0.5, "LOC_f1": 0.5, "pearson": 0.3, "ORG_f1": 0.0, "f1_without_image": 0.2,
        "image_effect_f1": pytest.approx(0.3), "LOC_f1_without_image": 0.4, "image_effect_LOC_f1": pytest.approx(0.1),
        "ORG_f1_without_image": 0.0, "image_effect_ORG_f1": 0.0,
    }  # fmt: skip
    results = {f"test_{name}": value for name, value in combined.items() if name != "report"}
    rows = effect_table_rows(results, "test", ["f1"])
    assert rows == [("f1", 0.9, 0.4, pytest.approx(0.5)), ("PER_f1", 1.0, 0.25, 0.75)]
    assert effect_table_rows(results, "eval", ["f1"]) == []
    assert effect_summary(rows) == "f1 0.9000 with, 0.4000 without (+0.5000) | PER_f1 1.0000 with, 0.2500 without (+0.7500)"


def _picture(colour: str, noise: np.random.Generator | None) -> Image.Image:
    if noise is not None:
        return Image.fromarray(noise.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    return Image.new("RGB", (40, 40), picture_data.COLOURS[colour])


def _posts(task: str, split: str, size: int, picture_is_noise: bool) -> list[dict]:
    """Posts of the split: for NER the same words with one made-up entity, its type the picture's colour; for
    sentiment the same text with the colour's sentiment, or (noise) the text's sentiment with a noise picture."""
    noise = np.random.default_rng(len(split)) if picture_is_noise else None
    posts = []
    for post in picture_data.all_posts()[split][:size]:
        colour = post["colour"]
        if task == "mner":
            kind = picture_data.ENTITY_TYPE[colour]
            row = {"tokens": ["zorblat", *SAME_TEXT], "ner_tags": [f"B-{kind}"] + ["O"] * len(SAME_TEXT)}
        else:
            text = TEXT_OF[colour] if picture_is_noise else " ".join(SAME_TEXT)
            row = {"text": text, "label": picture_data.SENTIMENT[colour]}
        posts.append({**row, "image": _picture(colour, noise)})
    return posts


def _trained_folder(task: str, picture_is_noise: bool, learning_rate: float, folder: Path) -> Path:
    """A tiny model trained with `Trainer` for 40 steps on 96 posts, saved with its processor."""
    torch.manual_seed(0)
    if task == "mner":
        model = MuSEForTokenClassification(tiny_config(NER_TAGS))
        processor = tiny_processor(label_names=NER_TAGS)
        collator = MNERCollator(processor)
    else:
        model = MuSEForSequenceClassification(tiny_config(SENTIMENTS))
        processor = tiny_processor(label_names=None)
        collator = MSACollator(processor)
    rows = _posts(task, "train", 96, picture_is_noise)
    if task == "msa":
        rows = [{**row, "label": SENTIMENTS.index(row["label"])} for row in rows]
    arguments = TrainingArguments(
        output_dir=str(folder / "run"), use_cpu=True, report_to=[], max_steps=40, per_device_train_batch_size=12,
        learning_rate=learning_rate, save_strategy="no", remove_unused_columns=False, seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=arguments, train_dataset=datasets.Dataset.from_list(rows), data_collator=collator,
        processing_class=processor,
    )  # fmt: skip
    trainer.train()
    trainer.save_model(str(folder / "model"))
    return folder / "model"


def _data_files(task: str, folder: Path, picture_is_noise: bool) -> list[str]:
    """JSON lines validation and test files (24 posts each), pictures beside them in images/."""
    arguments = []
    for split in ("validation", "test"):
        path = folder / f"{split}.jsonl"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            for index, post in enumerate(_posts(task, split, 24, picture_is_noise)):
                image = f"images/{split}{index}.png"
                post.pop("image").save(folder / image)
                handle.write(json.dumps({**post, "image": image}) + "\n")
        arguments.append(f"--{split}_file={path}")
    return arguments


def _score(task: str, model: Path, data: list[str], output_dir: Path) -> tuple[dict, list[dict]]:
    script = run_mner if task == "mner" else run_msa
    results = script.main(
        ["--model_name_or_path", str(model), *data, "--per_device_eval_batch_size", "8", "--output_dir",
         str(output_dir)]
    )  # fmt: skip
    assert json.loads((output_dir / "all_results.json").read_text()) == pytest.approx(results)
    predictions = [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]
    return results, predictions


# The CRF's loss needs a larger learning rate to learn the picture in 40 steps.
@pytest.mark.parametrize(("task", "learning_rate"), [("msa", 3e-3), ("mner", 1e-2)])
def test_where_only_the_picture_decides_its_effect_is_large(task, learning_rate, tmp_path, caplog):
    model = _trained_folder(task, picture_is_noise=False, learning_rate=learning_rate, folder=tmp_path)
    data = _data_files(task, tmp_path / "data", picture_is_noise=False)
    with caplog.at_level(logging.INFO):
        results, predictions = _score(task, model, data, tmp_path / "scored")
    headline = "f1" if task == "mner" else "accuracy"
    for split in ("eval", "test"):
        assert results[f"{split}_{headline}"] >= 0.9, results
        # Every post reads the same without its picture, so one answer for all: right for a third of them at most.
        assert results[f"{split}_{headline}_without_image"] <= 0.45, results
        assert results[f"{split}_image_effect_{headline}"] == pytest.approx(
            results[f"{split}_{headline}"] - results[f"{split}_{headline}_without_image"]
        )
        assert results[f"{split}_image_effect_{headline}"] >= 0.5
    # Per entity type / class: the types the picture alone names gain from it.
    types = ("PER", "LOC", "ORG") if task == "mner" else SENTIMENTS
    gains = [results[f"test_image_effect_{name}_f1"] for name in types]
    assert sum(gain >= 0.5 for gain in gains) >= 2, gains
    assert "what the picture adds on test (score with the pictures, with the placeholder picture instead" in caplog.text

    # Without the picture every post gets the same answer; the picture changed the ones it had to.
    field = "predicted_tags" if task == "mner" else "predicted_label"
    blind_answers = {json.dumps(row[f"{field}_without_image"]) for row in predictions}
    assert len(blind_answers) == 1, blind_answers
    for row in predictions:
        assert row["image_changed_prediction"] == (row[field] != row[f"{field}_without_image"])
    assert 8 <= sum(row["image_changed_prediction"] for row in predictions) <= 20


def test_where_the_picture_is_noise_its_effect_is_near_zero(tmp_path):
    model = _trained_folder("msa", picture_is_noise=True, learning_rate=1e-2, folder=tmp_path)
    data = _data_files("msa", tmp_path / "data", picture_is_noise=True)
    results, predictions = _score("msa", model, data, tmp_path / "scored")
    assert results["test_accuracy"] >= 0.9, results
    for split in ("eval", "test"):
        for name in ("accuracy", "f1", *(f"{label}_f1" for label in SENTIMENTS)):
            assert abs(results[f"{split}_image_effect_{name}"]) <= 0.1, (name, results)
    assert sum(row["image_changed_prediction"] for row in predictions) <= 2


def test_the_model_card_has_a_table_of_what_the_picture_adds(tmp_path):
    model = MuSEForTokenClassification(tiny_config(NER_TAGS))
    metrics = with_image_effect(
        {"precision": 0.8, "recall": 0.7, "f1": 0.75, "loss": 0.4, "PER_f1": 0.9},
        {"precision": 0.5, "recall": 0.4, "f1": 0.45, "loss": 1.2, "PER_f1": 0.3},
    )
    results = {
        **{f"eval_{name}": value for name, value in metrics.items()},
        **{f"test_{name}": value for name, value in metrics.items()},
        "best_epoch": 1, "best_step": 4, "train_runtime_seconds": 3.0, "train_samples_per_second": 8.0,
        "wall_time_seconds": 5.0,
    }  # fmt: skip
    output_dir = tmp_path / "muse-twitter17"
    output_dir.mkdir()
    args = parse_args(run_mner.TASK, ["--output_dir", str(output_dir)])
    args.dataset_name, args.is_quickstart = "twitter2017", False
    progress = TrainingProgress(history=[{"epoch": 1, "step": 4, "precision": 0.8, "recall": 0.7, "f1": 0.75}])
    path = write_model_card(args, run_mner.TASK, model, progress, results, None, "the data", 1)
    card = path.read_text()
    section = card[card.index("### What the picture adds") :]
    assert "| score | with the picture | without | difference |" in section
    assert "| `f1` | 0.75 | 0.45 | 0.3 |" in section
    assert "| `PER_f1` | 0.9 | 0.3 | 0.6 |" in section
