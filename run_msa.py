#!/usr/bin/env python
"""Train, evaluate and predict with MuSE for multimodal sentiment analysis: the paper's datasets (MVSA-Single,
MVSA-Multiple) or your own (a Hub dataset, a dataset folder, CSV, JSON lines or Parquet files with text, a label of
any label set and images): one class per post, several (a list of labels per post), or a number to predict (e.g.
sentiment intensity), transformers' three ``problem_type`` values (``--problem_type``; by default the labels tell).

    accelerate launch --config_file accelerate_configs/single_process.yaml run_msa.py    # quick start (sample)
    accelerate launch run_msa.py recipes/mvsa_single.yaml       # the paper's MVSA-Single setting
    accelerate launch run_msa.py --train_file train.csv --validation_file dev.csv --test_file test.csv
    python run_msa.py --help                                    # every argument

An explicit Accelerate loop in the manner of transformers' `run_ner_no_trainer.py`; the parts shared with
`run_mner.py` (arguments, data, optimizer, the loop, checkpoints, evaluation, model card) are the modules of
`muse_training`. Scores are accuracy and support-weighted F1 over positive/neutral/negative, as in the MSA
literature the paper compares with (over the data's own classes); for several labels per post, micro and macro F1
and exact-match accuracy; for a number, mean squared and absolute error (and Pearson's r). The model with the best
validation F1 (micro F1; the least mean squared error) is kept in ``--output_dir`` and scored on the test split,
whose predictions (label and class probabilities; labels and each one's sigmoid score; the predicted number) go to
``predictions.jsonl``. Every evaluation also scores the posts with the picture withheld and reports what the picture
adds (`muse_training.image_effect`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from torch.nn import functional as F

import modeling_muse  # noqa: F401  (registers MuSE with the transformers Auto classes)
from configuration_muse import ABLATION_VARIANTS
from modeling_muse import MuSEForSequenceClassification
from muse_training.arguments import MSA_DATASETS, TaskInfo
from muse_training.collators import MULTI_LABEL, REGRESSION, SINGLE_LABEL, MSACollator
from muse_training.data import build_processor, make_dataloaders, report_splits
from muse_training.evaluation import EvaluationOutput, evaluate_with_and_without_pictures
from muse_training.image_effect import with_image_effect
from muse_training.loop import prepare_for_training, start_run, train_evaluate_predict
from muse_training.metrics import multi_label_metrics, regression_metrics, sentiment_metrics
from muse_training.models import align_labels, load_model, model_label_names, problem_type_of
from muse_training.predictions import write_predictions
from muse_training.results import finish

TASK = TaskInfo(
    name="msa",
    title="Multimodal sentiment analysis",
    datasets=MSA_DATASETS,
    variants=tuple(ABLATION_VARIANTS),
    head_modules=("classifier",),
    pipeline_tag="text-classification",
    custom_pipeline="multimodal-sentiment",
    metric_names=("accuracy", "f1"),
    description="Multimodal sentiment analysis (post text + image: positive, neutral, negative, or any label set) "
    "with MuSE.",
)
COLUMNS = ["text", "label", "image"]
# Per problem type: the headline metrics, the one that selects the kept model, and whether higher is better.
PROBLEM_METRICS = {
    SINGLE_LABEL: (("accuracy", "f1"), "f1", True),
    MULTI_LABEL: (("micro_f1", "macro_f1", "exact_match"), "micro_f1", True),
    REGRESSION: (("mse", "mae"), "mse", False),
}


def task_for(problem_type: str) -> TaskInfo:
    """`TASK` with the metrics of ``problem_type``."""
    metric_names, best_metric, greater_is_better = PROBLEM_METRICS[problem_type]
    return dataclasses.replace(
        TASK, metric_names=metric_names, best_metric=best_metric, greater_is_better=greater_is_better
    )


def data_problem_type(feature: Any) -> str:
    """The problem type of the splits' ``label`` feature (`datasets_scripts.user_data`): a ``ClassLabel``, a list of
    them, or a number."""
    if isinstance(feature, datasets.ClassLabel):
        return SINGLE_LABEL
    return REGRESSION if isinstance(feature, datasets.Value) else MULTI_LABEL


def sentiment_predictions(
    split: Any, evaluation: EvaluationOutput, label_names: Sequence[str], without_image: EvaluationOutput
) -> list[dict[str, Any]]:
    """One row per post for ``predictions.jsonl``: its text, the predicted label, every class's probability, the
    gold label (null for new posts), the label predicted with the picture withheld and whether the picture changed
    it."""
    return [
        {
            "index": index,
            "text": post["text"],
            "predicted_label": label_names[predicted],
            "probabilities": {name: round(float(p), 6) for name, p in zip(label_names, probabilities, strict=True)},
            "gold_label": label_names[post["label"]] if "label" in post else None,
            "predicted_label_without_image": label_names[blind],
            "image_changed_prediction": bool(predicted != blind),
        }
        for index, (post, predicted, probabilities, blind) in enumerate(
            zip(_text_and_labels(split), evaluation.predictions, evaluation.scores, without_image.predictions,
                strict=True)
        )
    ]


def _text_and_labels(split: Any) -> Any:
    """The split's text and labels, or only its text (new posts without labels)."""
    return split.select_columns([column for column in ("text", "label") if column in split.column_names])


def multi_label_predictions(
    split: Any, evaluation: EvaluationOutput, label_names: Sequence[str], without_image: EvaluationOutput
) -> list[dict[str, Any]]:
    """One row per post for ``predictions.jsonl``: its text, the predicted labels (sigmoid score above 0.5), every
    label's sigmoid score, the gold labels, the labels predicted with the picture withheld and whether the picture
    changed them."""

    def chosen(multi_hot: Any) -> list[str]:
        return [name for name, on in zip(label_names, multi_hot, strict=True) if on]

    return [
        {
            "index": index,
            "text": post["text"],
            "predicted_labels": chosen(predicted),
            "scores": {name: round(float(score), 6) for name, score in zip(label_names, scores, strict=True)},
            "gold_labels": [label_names[class_id] for class_id in post["label"]] if "label" in post else None,
            "predicted_labels_without_image": chosen(blind),
            "image_changed_prediction": chosen(predicted) != chosen(blind),
        }
        for index, (post, predicted, scores, blind) in enumerate(
            zip(_text_and_labels(split), evaluation.predictions, evaluation.scores, without_image.predictions,
                strict=True)
        )
    ]


def regression_predictions(
    split: Any, evaluation: EvaluationOutput, without_image: EvaluationOutput
) -> list[dict[str, Any]]:
    """One row per post for ``predictions.jsonl``: its text, the predicted value, the gold value, the value predicted
    with the picture withheld and whether the picture changed it (at the file's 6 decimals)."""
    return [
        {
            "index": index,
            "text": post["text"],
            "predicted_value": round(float(predicted), 6),
            "gold_value": post.get("label"),
            "predicted_value_without_image": round(float(blind), 6),
            "image_changed_prediction": round(float(predicted), 6) != round(float(blind), 6),
        }
        for index, (post, predicted, blind) in enumerate(
            zip(_text_and_labels(split), evaluation.predictions, without_image.predictions, strict=True)
        )
    ]


def _bce_per_post(outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs.logits, batch["labels"], reduction="none").mean(dim=1)


# Per problem type, what evaluate_model computes: predictions, per-post losses and the scores of predictions.jsonl
# (as the model's loss and transformers' text-classification pipeline: softmax, sigmoid, the value itself).
EVALUATION_FUNCTIONS = {
    SINGLE_LABEL: (
        lambda outputs: outputs.logits.argmax(dim=-1),
        lambda outputs, batch: F.cross_entropy(outputs.logits, batch["labels"], reduction="none"),
        lambda outputs, batch: outputs.logits.softmax(dim=-1),
    ),
    MULTI_LABEL: (
        lambda outputs: (outputs.logits > 0).long(),
        _bce_per_post,
        lambda outputs, batch: outputs.logits.sigmoid(),
    ),
    REGRESSION: (
        lambda outputs: outputs.logits[:, 0],
        lambda outputs, batch: F.mse_loss(outputs.logits[:, 0], batch["labels"], reduction="none"),
        None,
    ),
}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train MuSE for MSA, keep the best model by validation F1, score it on test and write its predictions (or, with
    ``--model_name_or_path``, evaluate or fine-tune a trained one); returns ``all_results.json``."""
    # The command line (or a recipe and overrides), the Accelerator, the data (which settles --do_train / --do_eval /
    # --do_predict) and the output folder; unset arguments take the quick-start values on the bundled sample and the
    # paper's elsewhere (muse_training.arguments.resolve_defaults).
    run = start_run(TASK, argv)
    args, accelerator, raw_datasets = run.args, run.accelerator, run.raw_datasets
    labeled = [split for split in raw_datasets if "label" in raw_datasets[split].column_names]
    feature = raw_datasets[labeled[0]].features["label"] if labeled else None
    if feature is None:
        # New posts without labels: the trained model's labels and problem type are the run's.
        problem_type, label_names = problem_type_of(args.loaded_configs.model_config), None
    elif (problem_type := data_problem_type(feature)) == REGRESSION:
        label_names = [args.label_column_name or "label"]
    else:
        label_names = (feature if problem_type == SINGLE_LABEL else feature.feature).names
    task = task_for(problem_type)

    # Model: pretrained towers around newly initialised MuSE layers, or a trained MuSE (a new head for other classes
    # or another problem type).
    model = load_model(args, MuSEForSequenceClassification, label_names, TASK.head_modules, problem_type)
    label_names = model_label_names(model)
    if problem_type != REGRESSION:
        raw_datasets = align_labels(raw_datasets, "label", label_names, args.preprocessing_num_workers)

    # Processor (text and images -> tensors), one report line per split, data loaders.
    processor = build_processor(args, model.config, label_names=None)
    report_splits(args, raw_datasets, processor, text_column="text")
    collator = MSACollator(processor, problem_type, num_labels=len(label_names))
    dataloaders = make_dataloaders(raw_datasets, COLUMNS, collator, args)

    # Optimizer (separate learning rate for the classifier), devices, schedule, and the state of a resumed run.
    model, optimizer, dataloaders = prepare_for_training(accelerator, model, dataloaders, TASK, args)

    predictions_of, losses_of, scores_of = EVALUATION_FUNCTIONS[problem_type]

    def metrics_of(evaluation: EvaluationOutput) -> dict[str, Any]:
        if problem_type == REGRESSION:
            return regression_metrics(evaluation)
        if problem_type == MULTI_LABEL:
            return multi_label_metrics(evaluation, label_names)
        return sentiment_metrics(evaluation, label_names)

    def prediction_rows(
        split: str, evaluation: EvaluationOutput, without_image: EvaluationOutput
    ) -> list[dict[str, Any]]:
        if problem_type == REGRESSION:
            return regression_predictions(raw_datasets[split], evaluation, without_image)
        if problem_type == MULTI_LABEL:
            return multi_label_predictions(raw_datasets[split], evaluation, label_names, without_image)
        return sentiment_predictions(raw_datasets[split], evaluation, label_names, without_image)

    def evaluate(split: str, with_predictions: bool) -> dict[str, Any] | None:
        # Every evaluation also scores the posts with their pictures withheld (muse_training.image_effect).
        evaluation, without_image = evaluate_with_and_without_pictures(
            accelerator,
            model,
            dataloaders[split],
            processor,
            predictions_of=predictions_of,
            losses_of=losses_of,
            scores_of=scores_of if with_predictions else None,
        )
        if with_predictions and accelerator.is_main_process:
            write_predictions(args.output_dir, prediction_rows(split, evaluation, without_image))
        if evaluation.labels is None:
            # New posts without labels are labelled, not scored.
            return None
        return with_image_effect(metrics_of(evaluation), metrics_of(without_image))

    # Train with validation after every epoch, keeping the best model; then score it on validation and test.
    outcome = train_evaluate_predict(
        accelerator, model, optimizer, dataloaders, evaluate, task, processor, run.checkpoint, args
    )
    return finish(accelerator, args, task, model, outcome, raw_datasets, run.start_time)

if __name__ == "__main__":
    main()
