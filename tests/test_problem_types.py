"""Sentiment beyond one class per post: transformers' ``problem_type`` "regression" (a number per post, e.g. sentiment
intensity) and "multi_label_classification" (a list of labels per post), from the user's own files to the pipeline.

The data is tests/picture_data.py's posts, whose picture colour alone tells the answer: an intensity (red -0.8, green
0.9, blue 0.1) in a CSV, or a set of labels (red: anger; green: joy and surprise; blue: none) in JSON lines.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import run_msa
from datasets_scripts.user_data import UserDataError, load_user_dataset
from muse_training.arguments import parse_args
from muse_training.evaluation import EvaluationOutput
from tests import picture_data
from tests.tiny_models import tiny_config, tiny_processor, tiny_script_arguments

REPO_ROOT = Path(__file__).resolve().parents[1]

INTENSITY = {"red": -0.8, "green": 0.9, "blue": 0.1}
LABEL_SETS = {"red": ["anger"], "green": ["joy", "surprise"], "blue": []}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


def _text(post: dict) -> str:
    return " ".join(post["tokens"][:5])


def write_intensity_csv(folder: Path) -> dict[str, Path]:
    """``<split>.csv`` with ``text``, ``intensity`` (a decimal number) and ``image`` (a path relative to the file)."""
    files = {}
    for split, posts in picture_data.all_posts().items():
        picture_data.write_images(folder / "pictures", posts)
        path = folder / f"{split}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "intensity", "image"])
            writer.writeheader()
            for post in posts:
                image = f"pictures/{post['id']}.jpg"
                writer.writerow({"text": _text(post), "intensity": INTENSITY[post["colour"]], "image": image})
        files[split] = path
    return files


def write_label_lists_jsonl(folder: Path) -> dict[str, Path]:
    """``<split>.jsonl`` with ``text``, ``label`` (a list of label names, empty for none) and ``image``."""
    files = {}
    for split, posts in picture_data.all_posts().items():
        picture_data.write_images(folder / "images", posts)
        path = folder / f"{split}.jsonl"
        rows = [{"text": _text(post), "label": LABEL_SETS[post["colour"]], "image": f"images/{post['id']}.jpg"}
                for post in posts]  # fmt: skip
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files[split] = path
    return files


def _write_jsonl(path: Path, labels: list) -> Path:
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path.parent / "a.png")
    rows = [{"text": "a post", "label": label, "image": "a.png"} for label in labels]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Reading the labels
# ----------------------------------------------------------------------------------------------------------------


def test_decimal_labels_are_regression_targets_and_label_lists_multi_label(tmp_path):
    csv_files = write_intensity_csv(tmp_path / "csv")
    regression = load_user_dataset("msa", data_files=csv_files, label_column="intensity")
    assert regression["train"].features["label"] == datasets.Value("float64")
    posts = picture_data.all_posts()["train"]
    assert regression["train"]["label"] == [INTENSITY[post["colour"]] for post in posts]

    lists = load_user_dataset("msa", data_files=write_label_lists_jsonl(tmp_path / "jsonl"))
    feature = lists["train"].features["label"]
    assert isinstance(feature, datasets.List) and feature.feature.names == ["anger", "joy", "surprise"]
    names = feature.feature.names
    read = [[names[class_id] for class_id in ids] for ids in lists["train"]["label"]]
    assert read == [LABEL_SETS[post["colour"]] for post in posts]


def test_integer_targets_are_numbers_when_asked_and_a_post_s_repeated_label_counts_once(tmp_path):
    stars = _write_jsonl(tmp_path / "stars.jsonl", [5, 1, 3])
    assert load_user_dataset("msa", data_files={"train": stars})["train"].features["label"].names == ["1", "3", "5"]
    as_numbers = load_user_dataset("msa", data_files={"train": stars}, problem_type="regression")
    assert as_numbers["train"]["label"] == [5.0, 1.0, 3.0]
    repeated = _write_jsonl(tmp_path / "repeated.jsonl", [["joy", "joy", "anger"], []])
    assert load_user_dataset("msa", data_files={"train": repeated})["train"]["label"] == [[1, 0], []]


@pytest.mark.parametrize(
    ("labels", "problem_type", "expected"),
    [
        ([0.5, None], None, r"row 1: 'label' is empty; every post needs a label"),
        ([0.5, float("nan")], None, r"row 1: 'label' is nan; every post needs a label"),
        ([["joy"], "anger"], None, r"'label' mixes kinds of labels: list \(multi_label_classification\) at .*row 0, "
                                   r"class \(single_label_classification\) at .*row 1"),
        ([["joy", 0.5]], None, r"row 0: 'label' holds 0.5; a multi-label post's labels are class names"),
        (["['joy', 'anger']"], None, r"row 0: 'label' is the text \"\['joy', 'anger'\]\", a list written into a CSV "
                                     r"cell\?"),
        (["joy"], "multi_label_classification", r"row 0: 'label' is 'joy', not a label for --problem_type "
                                                r"multi_label_classification \(a list of class names"),
        ([0.5], "single_label_classification", r"row 0: 'label' is 0.5, not a label for --problem_type "
                                               r"single_label_classification"),
        (["high"], "regression", r"row 0: 'label' is 'high', not a label for --problem_type regression \(one finite "
                                 r"number per post\)"),
        ([True], None, r"row 0: 'label' is True, not a label"),
    ],
)
def test_labels_no_problem_type_reads_are_named_by_row(tmp_path, labels, problem_type, expected):
    path = _write_jsonl(tmp_path / "train.jsonl", labels)
    with pytest.raises(UserDataError, match=expected):
        load_user_dataset("msa", data_files={"train": path}, problem_type=problem_type)


@pytest.mark.parametrize(
    ("script", "argv", "expected"),
    [
        (run_msa, ["--problem_type", "regression"], "--problem_type regression is for run_msa.py on your own data"),
        (run_msa, ["--problem_type", "ranking", "--train_file", "x.csv"], "invalid choice: 'ranking'"),
    ],
)
def test_problem_type_is_an_argument_of_run_msa_on_own_data_only(script, argv, expected, capsys):
    with pytest.raises(SystemExit):
        parse_args(script.TASK, argv)
    assert expected in capsys.readouterr().err


def test_run_mner_has_no_problem_type(capsys):
    import run_mner

    with pytest.raises(SystemExit):
        parse_args(run_mner.TASK, ["--problem_type", "regression"])
    assert "--problem_type regression is for run_msa.py" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Labels for the model, metrics, predictions
# ----------------------------------------------------------------------------------------------------------------


def test_the_collator_gives_multi_hot_rows_or_float_targets(tmp_path):
    image = Image.new("RGB", (16, 16))
    rows = [{"text": "a", "label": [0, 2], "image": image}, {"text": "b", "label": [], "image": image}]
    multi = run_msa.MSACollator(tiny_processor(label_names=None), run_msa.MULTI_LABEL, num_labels=3)(rows)
    assert multi["labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    rows = [{"text": "a", "label": 0.25, "image": image}, {"text": "b", "label": -2.0, "image": image}]
    regression = run_msa.MSACollator(tiny_processor(label_names=None), run_msa.REGRESSION, num_labels=1)(rows)
    assert regression["labels"].dtype == torch.float32 and regression["labels"].tolist() == [0.25, -2.0]


def test_multi_label_metrics_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    gold = rng.random((40, 4)) < 0.4
    predicted = np.where(rng.random((40, 4)) < 0.7, gold, ~gold)
    predicted[:, 3] = False  # a label never predicted: its F1 is 0
    names = ["anger", "joy", "surprise", "fear"]
    metrics = run_msa.multi_label_metrics(EvaluationOutput(predicted.astype(int), gold.astype(float), loss=0.3), names)
    assert metrics["micro_f1"] == pytest.approx(sklearn_metrics.f1_score(gold, predicted, average="micro"))
    assert metrics["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(gold, predicted, average="macro", zero_division=0)
    )
    assert metrics["exact_match"] == pytest.approx(sklearn_metrics.accuracy_score(gold, predicted))
    per_label = sklearn_metrics.f1_score(gold, predicted, average=None, zero_division=0)
    assert [metrics[f"{name}_f1"] for name in names] == pytest.approx(list(per_label))
    assert metrics["loss"] == 0.3 and "fear" in metrics["report"] and "exact match" in metrics["report"]


def test_regression_metrics_and_an_undefined_pearson():
    predicted, gold = np.array([0.1, 0.5, 0.2, 0.9]), np.array([0.0, 0.6, 0.1, 1.0])
    metrics = run_msa.regression_metrics(EvaluationOutput(predicted, gold, loss=0.0075))
    assert metrics["mse"] == pytest.approx(np.mean((predicted - gold) ** 2))
    assert metrics["mae"] == pytest.approx(0.1)
    assert metrics["pearson"] == pytest.approx(np.corrcoef(predicted, gold)[0, 1])
    constant = run_msa.regression_metrics(EvaluationOutput(np.full(4, 0.3), gold, loss=0.1))
    assert "pearson" not in constant and "pearson undefined" in constant["report"]
    assert all(math.isfinite(value) for value in constant.values() if isinstance(value, float))


def test_a_trained_model_of_another_problem_type_gets_a_new_head(tmp_path, caplog):
    import argparse

    from accelerate import Accelerator

    from modeling_muse import MuSEForSequenceClassification
    from muse_training.models import build_model

    Accelerator(cpu=True)
    torch.manual_seed(0)
    MuSEForSequenceClassification(tiny_config(["negative", "positive"])).save_pretrained(tmp_path)
    args = argparse.Namespace(model_name_or_path=str(tmp_path), do_train=True)
    with caplog.at_level("WARNING"):
        model = build_model(args, MuSEForSequenceClassification, ["intensity"], ["classifier"], "regression")
    assert model.config.problem_type == "regression" and model.config.id2label == {0: "intensity"}
    assert model.classifier.classifier.out_features == 1
    assert "trained for the labels ['negative', 'positive'] (single_label_classification), the data has " \
           "['intensity'] (regression): its head (classifier) is replaced" in caplog.text
    args.use_peft = True
    with pytest.raises(SystemExit, match="--use_peft: the model .* was trained for the labels"):
        build_model(args, MuSEForSequenceClassification, ["intensity"], ["classifier"], "regression")
    # The same labels, asked for as several per post: a new head too (sigmoid per label instead of softmax).
    args.use_peft = False
    multi = build_model(
        args, MuSEForSequenceClassification, ["positive", "negative"], ["classifier"], "multi_label_classification"
    )
    assert multi.config.problem_type == "multi_label_classification"


# ----------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------


def _pipeline_for(folder: Path, labels: list[str], problem_type: str):
    from transformers import pipeline

    from modeling_muse import MuSEForSequenceClassification

    torch.manual_seed(0)
    model = MuSEForSequenceClassification(tiny_config(labels, problem_type=problem_type)).eval()
    torch.nn.init.normal_(model.classifier.classifier.weight, std=1.0)
    model.save_pretrained(folder)
    tiny_processor(label_names=None).save_pretrained(folder)
    return pipeline("multimodal-sentiment", model=str(folder), device="cpu")


def _logits(pipe, post: dict) -> torch.Tensor:
    encoded = pipe.processor(images=[post["image"]], text=[post["text"].split()], return_tensors="pt")
    with torch.no_grad():
        return pipe.model(**encoded).logits[0]


def test_the_pipeline_scores_multi_label_posts_with_sigmoids_and_regression_with_the_value(tmp_path):
    post = {"text": "what a day at the beach", "image": Image.new("RGB", (40, 30), (30, 200, 30))}
    multi = _pipeline_for(tmp_path / "multi", ["anger", "joy", "surprise"], "multi_label_classification")
    probabilities = _logits(multi, post).sigmoid()
    ranked = multi(post, top_k=None)
    assert [entry["label"] for entry in ranked] == [["anger", "joy", "surprise"][i] for i in
                                                    probabilities.argsort(descending=True).tolist()]  # fmt: skip
    assert {entry["label"]: entry["score"] for entry in ranked} == pytest.approx(
        dict(zip(["anger", "joy", "surprise"], probabilities.tolist())), abs=1e-6
    )
    assert multi(post) == ranked[0]
    # As transformers' text-classification pipeline: function_to_apply overrides the problem type's choice.
    softmax = multi(post, top_k=None, function_to_apply="softmax")
    assert sum(entry["score"] for entry in softmax) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="function_to_apply: expected one of softmax, sigmoid, none"):
        multi(post, function_to_apply="relu")

    regression = _pipeline_for(tmp_path / "regression", ["intensity"], "regression")
    value = float(_logits(regression, post)[0])
    assert regression(post) == {"label": "intensity", "score": pytest.approx(value, abs=1e-6)}
    assert regression(post, function_to_apply="sigmoid")["score"] == pytest.approx(1 / (1 + math.exp(-value)))


# ----------------------------------------------------------------------------------------------------------------
# Slow: run_msa.py end to end
# ----------------------------------------------------------------------------------------------------------------


def _run_msa(text_model: Path, output_dir: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    argv = tiny_script_arguments(
        text_model, output_dir, *extra, per_device_train_batch_size=16, per_device_eval_batch_size=32,
        num_train_epochs=6, learning_rate=2e-3, head_learning_rate=1e-2,
    )  # fmt: skip
    return subprocess.run(
        [sys.executable, "run_msa.py", *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _predictions(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]


def _card_results(output_dir: Path) -> str:
    return (output_dir / "README.md").read_text()


@pytest.mark.slow
def test_run_msa_learns_an_intensity_from_a_csv(tiny_text_model, script_env, tmp_path):
    files = write_intensity_csv(tmp_path / "csv")
    output_dir = tmp_path / "intensity"
    result = _ok(_run_msa(tiny_text_model, output_dir, script_env, "--label_column_name", "intensity",
                          *[f"--{split}_file={path}" for split, path in files.items()]))  # fmt: skip
    results = json.loads((output_dir / "all_results.json").read_text())
    variance = float(np.var(list(INTENSITY.values())))
    for split in ("eval", "test"):
        assert results[f"{split}_mse"] < 0.2 * variance and results[f"{split}_pearson"] > 0.9, results
        assert results[f"{split}_mae"] <= math.sqrt(results[f"{split}_mse"]) + 1e-9
        assert results[f"{split}_loss"] == pytest.approx(results[f"{split}_mse"], rel=1e-4)
    assert "Test (train.csv, best epoch" in result.stdout and "): mse " in result.stdout and "| mae " in result.stdout
    config = json.loads((output_dir / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "intensity"}

    # predictions.jsonl: every test post in order, its predicted number and the gold one.
    rows = _predictions(output_dir)
    test_posts = list(csv.DictReader(files["test"].open()))
    assert [row["text"] for row in rows] == [post["text"] for post in test_posts]
    assert [row["gold_value"] for row in rows] == [float(post["intensity"]) for post in test_posts]
    errors = [row["predicted_value"] - row["gold_value"] for row in rows]
    assert np.mean(np.square(errors)) == pytest.approx(results["test_mse"], abs=1e-5)
    card = _card_results(output_dir)
    assert "problem type `regression`" in card and "best validation mse" in card
    # Local files are no dataset the Hub knows: the scores are in the card's table, not in a model-index.
    assert f"| mse | {results['eval_mse']:.4g} | {results['test_mse']:.4g} |" in card and "model-index" not in card

    # The saved model in the pipeline gives the raw value, the number predictions.jsonl holds.
    from transformers import pipeline

    import modeling_muse  # noqa: F401

    pipe = pipeline("multimodal-sentiment", model=str(output_dir), device="cpu")
    post = test_posts[0]
    answer = pipe({"text": post["text"], "image": str(files["test"].parent / post["image"])})
    assert answer == {"label": "intensity", "score": pytest.approx(rows[0]["predicted_value"], abs=1e-4)}


@pytest.mark.slow
def test_run_msa_learns_label_lists_from_json_lines(tiny_text_model, script_env, tmp_path):
    files = write_label_lists_jsonl(tmp_path / "jsonl")
    output_dir = tmp_path / "emotions"
    result = _ok(_run_msa(tiny_text_model, output_dir, script_env,
                          *[f"--{split}_file={path}" for split, path in files.items()]))  # fmt: skip
    results = json.loads((output_dir / "all_results.json").read_text())
    for split in ("eval", "test"):
        assert results[f"{split}_micro_f1"] >= 0.9 and results[f"{split}_exact_match"] >= 0.8, results
        assert 0.0 <= results[f"{split}_macro_f1"] <= 1.0 and f"{split}_joy_f1" in results
    assert "micro_f1 " in result.stdout and "exact_match " in result.stdout
    config = json.loads((output_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["id2label"].values()) == ["anger", "joy", "surprise"]

    # predictions.jsonl: the labels whose sigmoid score passes 0.5, each label's score, the gold labels (none for a
    # blue picture).
    rows = _predictions(output_dir)
    test_posts = [json.loads(line) for line in files["test"].read_text().splitlines()]
    assert [row["gold_labels"] for row in rows] == [post["label"] for post in test_posts]
    assert any(row["gold_labels"] == [] for row in rows)
    for row in rows:
        assert set(row["scores"]) == {"anger", "joy", "surprise"}
        assert all(0.0 <= score <= 1.0 for score in row["scores"].values())
        assert row["predicted_labels"] == [name for name in ("anger", "joy", "surprise") if row["scores"][name] > 0.5]
    exact = np.mean([sorted(row["predicted_labels"]) == sorted(row["gold_labels"]) for row in rows])
    assert exact == pytest.approx(results["test_exact_match"])
    card = _card_results(output_dir)
    assert "problem type `multi_label_classification`" in card and "best validation micro_f1" in card
    assert f"| micro_f1 | {results['eval_micro_f1']:.4g} | {results['test_micro_f1']:.4g} |" in card
    assert "exact match" in card

    # The saved model in the pipeline scores each label with its sigmoid, as predictions.jsonl does.
    from transformers import pipeline

    import modeling_muse  # noqa: F401

    pipe = pipeline("multimodal-sentiment", model=str(output_dir), device="cpu")
    post = test_posts[0]
    ranked = pipe({"text": post["text"], "image": str(files["test"].parent / post["image"])}, top_k=None)
    assert {entry["label"]: entry["score"] for entry in ranked} == pytest.approx(rows[0]["scores"], abs=1e-4)


@pytest.mark.slow
def test_regression_targets_too_large_to_square_stop_the_run_at_its_first_step(tiny_text_model, script_env, tmp_path):
    """A target of 1e30 is a finite number, but its squared error overflows float32: the task loss is infinite."""
    files = write_intensity_csv(tmp_path / "csv")
    broken = files["train"].read_text().replace(",0.9,", ",1e+30,").replace(",-0.8,", ",1e+30,")
    files["train"].write_text(broken)
    output_dir = tmp_path / "out"
    result = _run_msa(tiny_text_model, output_dir, script_env, "--label_column_name", "intensity",
                      *[f"--{split}_file={path}" for split, path in files.items()])  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Training stopped at optimizer step 1 (epoch 1): the loss is not finite (task loss inf" in result.stderr
    assert "check the data (labels or regression targets far outside the usual range)" in result.stderr
    assert not (output_dir / "model.safetensors").exists() and not (output_dir / "all_results.json").exists()
