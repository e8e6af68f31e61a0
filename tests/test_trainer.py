"""MuSE under `transformers.Trainer`, as a transformers user trains any model (docs/trainer.md): the package's collators
and compute_metrics helpers, a few real training steps on CPU, evaluation, prediction (the logits, as from every
transformers head, so that transformers' NER example's compute_metrics works), the CRF-decoded scores, and the folder
`Trainer.save_model` writes served through the pipelines.

Tiny models (tests/tiny_models.py) on a dozen picture-coded posts (tests/picture_data.py); each test runs in seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from seqeval.metrics import f1_score as seqeval_f1
from transformers import EvalPrediction, Trainer, TrainingArguments, pipeline


import modeling_muse  # noqa: F401  (registers MuSE and its pipelines)
from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification
from muse_training.collators import MULTI_LABEL, REGRESSION, MNERCollator, MSACollator
from muse_training.evaluation import EvaluationOutput
from muse_training.metrics import CRFTagDecoding, NERMetrics, SentimentMetrics
from muse_training.metrics import multi_label_metrics, ner_metrics, regression_metrics
from tests import picture_data
from tests.tiny_models import tiny_config, tiny_processor

NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SENTIMENTS = ["negative", "neutral", "positive"]


def _picture(colour: str) -> Image.Image:
    return Image.new("RGB", (40, 40), picture_data.COLOURS[colour])


def _ner_split(split: str, size: int) -> datasets.Dataset:
    posts = picture_data.all_posts()[split][:size]
    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=NER_TAGS)),
            "image": datasets.Image(),
        }
    )
    rows = [
        {"tokens": post["tokens"], "ner_tags": [NER_TAGS.index(tag) for tag in post["ner_tags"]],
         "image": _picture(post["colour"])}
        for post in posts
    ]  # fmt: skip
    return datasets.Dataset.from_list(rows, features=features)


def _sentiment_split(split: str, size: int) -> datasets.Dataset:
    posts = picture_data.all_posts()[split][:size]
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=SENTIMENTS), "image": datasets.Image()}
    )
    rows = [
        {"text": " ".join(post["tokens"]), "label": SENTIMENTS.index(picture_data.SENTIMENT[post["colour"]]),
         "image": _picture(post["colour"])}
        for post in posts
    ]  # fmt: skip
    return datasets.Dataset.from_list(rows, features=features)


def _training_arguments(output_dir: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to=[],
        max_steps=4,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=5,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        # The collators read the raw columns (tokens, tags, image), which are no arguments of forward.
        remove_unused_columns=False,
        seed=0,
    )


def _example_compute_metrics(label_list: list[str]):
    """transformers' examples/pytorch/token-classification/run_ner.py compute_metrics, as a user copies it."""

    def compute_metrics(p):
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        true_predictions = [
            [label_list[p] for (p, l) in zip(prediction, label) if l != -100]
            for prediction, label in zip(predictions, labels)
        ]
        true_labels = [
            [label_list[l] for (p, l) in zip(prediction, label) if l != -100]
            for prediction, label in zip(predictions, labels)
        ]
        return {"f1": seqeval_f1(true_labels, true_predictions)}

    return compute_metrics


def _trainer(model, output_dir, train, test, collator, processor, compute_metrics) -> Trainer:
    """A `transformers.Trainer` as a user writes it for MuSE: the package's collator and metrics."""
    return Trainer(
        model=model, args=_training_arguments(output_dir), train_dataset=train, eval_dataset=test,
        data_collator=collator, processing_class=processor, compute_metrics=compute_metrics,
    )  # fmt: skip


def _seeded_model(model_class, labels):
    torch.manual_seed(0)
    return model_class(tiny_config(labels))


def _all_finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(value) for value in metrics.values() if isinstance(value, float))


def test_ner_trains_evaluates_predicts_and_serves_through_trainer(tmp_path):
    model, processor = _seeded_model(MuSEForTokenClassification, NER_TAGS), tiny_processor(label_names=NER_TAGS)
    train, test = _ner_split("train", 16), _ner_split("test", 10)
    trainer = _trainer(model, tmp_path / "run", train, test, MNERCollator(processor), processor, NERMetrics(NER_TAGS))
    # The loss is a batch mean: the Trainer must scale it for gradient accumulation itself.
    assert trainer.model_accepts_loss_kwargs is False
    training = trainer.train()
    assert training.global_step == 4 and math.isfinite(training.training_loss)

    metrics = trainer.evaluate()
    for name in ("eval_loss", "eval_precision", "eval_recall", "eval_f1"):
        assert name in metrics and math.isfinite(metrics[name]), (name, metrics)
    assert _all_finite(metrics)

    # Predictions are the emissions, (posts, longest post, tags), as from any token-classification head.
    predicted = trainer.predict(test)
    assert isinstance(predicted.predictions, np.ndarray)
    batch = MNERCollator(processor)(list(test))
    model.eval()
    with torch.no_grad():
        outputs = model(**batch)
    assert predicted.predictions.shape == (len(test), batch["input_ids"].shape[1], len(NER_TAGS))
    real = batch["attention_mask"].bool().numpy()
    np.testing.assert_allclose(predicted.predictions[real], outputs.logits.numpy()[real], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(predicted.label_ids, batch["labels"].numpy())

    # transformers' NER example's compute_metrics runs on them, and NERMetrics reads logits the same way.
    example = _example_compute_metrics(NER_TAGS)(EvalPrediction(predicted.predictions, predicted.label_ids))
    argmax_scores = NERMetrics(NER_TAGS)(EvalPrediction(predicted.predictions, predicted.label_ids))
    assert example["f1"] == pytest.approx(argmax_scores["f1"])

    # With the CRF's decoding the scores are those of the model's own tags (predicted_tag_ids).
    trainer.preprocess_logits_for_metrics = CRFTagDecoding(model)
    crf_metrics = trainer.evaluate()
    served_scores = ner_metrics(
        EvaluationOutput(outputs.predicted_tag_ids.numpy(), batch["labels"].numpy(), float("nan")), NER_TAGS
    )
    for name in ("precision", "recall", "f1"):
        assert crf_metrics[f"eval_{name}"] == pytest.approx(served_scores[name]), name

    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    ner = pipeline("multimodal-ner", model=str(folder), device="cpu")
    post = test[0]
    entities = ner({"text": " ".join(post["tokens"]), "image": post["image"]})
    assert isinstance(entities, list) and all(entity["entity_group"] in {"PER", "LOC", "ORG"} for entity in entities)
    # The pipeline serves the trained weights: its model tags the posts as the trained one did.
    with torch.no_grad():
        served = ner.model(**batch).predicted_tag_ids
    assert torch.equal(served, outputs.predicted_tag_ids)


def test_crf_decoding_needs_labels_to_find_the_words():
    model = MuSEForTokenClassification(tiny_config(NER_TAGS))
    with pytest.raises(ValueError, match="finds the words by the labels"):
        CRFTagDecoding(model)(torch.zeros(1, 3, len(NER_TAGS)), None)
    with pytest.raises(TypeError, match="no CRF tagger"):
        CRFTagDecoding(MuSEForSequenceClassification(tiny_config(SENTIMENTS)))


def test_sentiment_trains_evaluates_predicts_and_serves_through_trainer(tmp_path):
    model, processor = _seeded_model(MuSEForSequenceClassification, SENTIMENTS), tiny_processor(label_names=None)
    train, test = _sentiment_split("train", 16), _sentiment_split("test", 10)
    trainer = _trainer(model, tmp_path / "run", train, test, MSACollator(processor), processor, SentimentMetrics(SENTIMENTS))
    training = trainer.train()
    assert training.global_step == 4 and math.isfinite(training.training_loss)
    metrics = trainer.evaluate()
    for name in ("eval_loss", "eval_accuracy", "eval_f1", "eval_negative_f1"):
        assert name in metrics and math.isfinite(metrics[name]), (name, metrics)

    predicted = trainer.predict(test)
    assert isinstance(predicted.predictions, np.ndarray) and predicted.predictions.shape == (len(test), 3)
    batch = MSACollator(processor)(list(test))
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    np.testing.assert_allclose(predicted.predictions, logits, rtol=1e-4, atol=1e-5)
    accuracy = float((logits.argmax(-1) == np.asarray(test["label"])).mean())
    assert predicted.metrics["test_accuracy"] == pytest.approx(accuracy)

    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    classifier = pipeline("multimodal-sentiment", model=str(folder), device="cpu")
    result = classifier({"text": test[0]["text"], "image": test[0]["image"]})
    top = result[0] if isinstance(result, list) else result
    assert top["label"] == SENTIMENTS[int(logits[0].argmax())]
    with torch.no_grad():
        np.testing.assert_allclose(classifier.model(**batch).logits.numpy(), logits, rtol=1e-4, atol=1e-5)


def test_sentiment_metrics_read_logits_for_every_problem_type():
    names = ["a", "b", "c"]
    logits = np.array([[2.0, -1.0, 0.5], [-0.5, 0.2, -3.0], [-1.0, -2.0, 4.0], [0.3, -0.1, -0.2]])
    multi_hot = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=np.float32)
    scores = SentimentMetrics(names, MULTI_LABEL)(EvalPrediction(logits, multi_hot))
    expected = multi_label_metrics(EvaluationOutput((logits > 0).astype(int), multi_hot, 0.0), names)
    assert scores == {name: value for name, value in expected.items() if name not in ("loss", "report")}
    assert scores["exact_match"] == pytest.approx(0.5)

    values, gold = np.array([[0.1], [0.4], [0.9]]), np.array([0.0, 0.5, 1.0])
    regression = SentimentMetrics(["intensity"], REGRESSION)(EvalPrediction(values, gold))
    expected = regression_metrics(EvaluationOutput(values[:, 0], gold, 0.0))
    assert regression["mse"] == pytest.approx(0.01) and regression["pearson"] == pytest.approx(expected["pearson"])
    with pytest.raises(ValueError, match="problem_type must be one of"):
        SentimentMetrics(names, "ranking")
    with pytest.raises(ValueError, match="needs num_labels"):
        MSACollator(tiny_processor(label_names=None), MULTI_LABEL)
