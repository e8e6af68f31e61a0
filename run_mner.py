#!/usr/bin/env python
"""Train, evaluate and predict with MuSE for multimodal named entity recognition: the paper's datasets
(Twitter-2015/2017, MT-Product, UMT-format folders) or your own (a Hub dataset, a dataset folder, JSON lines or Parquet
files with words, BIO tags and images).

    accelerate launch --config_file accelerate_configs/single_process.yaml run_mner.py   # quick start (sample)
    accelerate launch run_mner.py recipes/twitter2017.yaml      # the paper's Twitter-2017 setting, into muse-twitter17/
    accelerate launch run_mner.py --train_file train.jsonl --validation_file dev.jsonl --test_file test.jsonl
    accelerate launch run_mner.py --model_name_or_path muse-twitter17 --dataset_name user/posts --do_predict
    python run_mner.py --help                                   # every argument

An explicit Accelerate loop in the manner of transformers' `run_ner_no_trainer.py`; the parts shared with
`run_msa.py` (arguments, data, optimizer, the loop, checkpoints, evaluation, model card) are the modules of
`muse_training`. Scores are entity-level micro precision/recall/F1 (seqeval, CoNLL-style), with a per-type
report; the model with the best validation F1 is kept in ``--output_dir`` and scored on the test split, whose
predictions (each word's tag and CRF confidence) go to ``predictions.jsonl``. Every evaluation also scores the posts
with the picture withheld and reports what the picture adds (`muse_training.image_effect`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

import modeling_muse  # noqa: F401  (registers MuSE with the transformers Auto classes)
from configuration_muse import ABLATION_VARIANTS
from modeling_muse import MuSEForTokenClassification
from modeling_muse.heads import WordPositions
from muse_training.arguments import MNER_DATASETS, TaskInfo
from muse_training.collators import MNERCollator
from muse_training.data import build_processor, make_dataloaders, report_splits
from muse_training.evaluation import EvaluationOutput, evaluate_with_and_without_pictures
from muse_training.image_effect import with_image_effect
from muse_training.loop import prepare_for_training, start_run, train_evaluate_predict
from muse_training.metrics import entity_level_metrics, ner_metrics
from muse_training.models import align_labels, load_model, model_label_names
from muse_training.predictions import write_predictions
from muse_training.results import finish

TASK = TaskInfo(
    name="mner",
    title="Multimodal named entity recognition",
    datasets=MNER_DATASETS,
    # Paper Table 3 runs only-I for sentiment only: NER labels are words, which an image-only model cannot see.
    variants=tuple(name for name in ABLATION_VARIANTS if name != "only_i"),
    head_modules=("tagger",),
    pipeline_tag="token-classification",
    custom_pipeline="multimodal-ner",
    metric_names=("precision", "recall", "f1"),
    description="Multimodal named entity recognition (post text + image) with MuSE.",
)
COLUMNS = ["tokens", "ner_tags", "image"]


def crf_loss_per_post(model: MuSEForTokenClassification, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The CRF's negative log-likelihood of each post's gold tags, ``(batch,)``; NaN for a post without words
    (`CRFTaggingHead.post_negative_log_likelihoods`).

    The model returns the batch mean only; the per-post values make the loss of a multi-process evaluation exact.
    """
    words = WordPositions(batch["word_start_mask"])
    return model.tagger.post_negative_log_likelihoods(outputs.logits, words, batch["labels"])


def word_confidences(model: MuSEForTokenClassification, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The CRF's marginal probability of the predicted tag at each position, ``(batch, n)`` (0 off word starts), as the
    pipeline scores words (`CRFTaggingHead.tag_confidences`)."""
    words = WordPositions(batch["word_start_mask"])
    confidences = model.tagger.tag_confidences(outputs.logits, words, outputs.predicted_tag_ids)
    return words.scatter(confidences, fill_value=0)


def ner_predictions(
    split: Any, evaluation: EvaluationOutput, label_names: Sequence[str], without_image: EvaluationOutput
) -> list[dict[str, Any]]:
    """One row per post for ``predictions.jsonl``: its words, each word's predicted tag and CRF confidence, the gold
    tags (null for new posts without tags), the tags predicted with the picture withheld and whether the picture
    changed any tag (``image_changed_prediction``). Words past the model's max_text_length sub-word tokens were not
    read: their tag and score are null."""
    rows = []
    labeled = evaluation.labels is not None
    for index, (post, predicted, scores, blind) in enumerate(
        zip(split.select_columns(["tokens", "ner_tags"] if labeled else ["tokens"]), evaluation.predictions,
            evaluation.scores, without_image.predictions, strict=True)
    ):
        # The CRF's tag sits at each word's first sub-token, -100 elsewhere (as the gold tags).
        words = predicted != -100
        tags = [label_names[tag] for tag in predicted[words]]
        tags_without_image = [label_names[tag] for tag in blind[words]]
        confidences = [round(float(score), 6) for score in scores[words]]
        cut = len(post["tokens"]) - len(tags)
        rows.append(
            {
                "index": index,
                "tokens": post["tokens"],
                "predicted_tags": tags + [None] * cut,
                "scores": confidences + [None] * cut,
                "gold_tags": [label_names[tag] for tag in post["ner_tags"]] if labeled else None,
                "predicted_tags_without_image": tags_without_image + [None] * cut,
                "image_changed_prediction": tags != tags_without_image,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train MuSE for MNER, keep the best model by validation F1, score it on test and write its predictions (or,
    with ``--model_name_or_path``, evaluate or fine-tune a trained one); returns ``all_results.json``."""
    # The command line (or a recipe and overrides), the Accelerator, the data (which settles --do_train / --do_eval /
    # --do_predict) and the output folder; unset arguments take the quick-start values on the bundled sample and the
    # paper's elsewhere (muse_training.arguments.resolve_defaults).
    run = start_run(TASK, argv)
    args, accelerator, raw_datasets = run.args, run.accelerator, run.raw_datasets
    labeled = [split for split in raw_datasets if "ner_tags" in raw_datasets[split].column_names]
    label_names = raw_datasets[labeled[0]].features["ner_tags"].feature.names if labeled else None

    # Model: pretrained towers around newly initialised MuSE layers, or a trained MuSE (a new CRF for other tags).
    model = load_model(args, MuSEForTokenClassification, label_names, TASK.head_modules)
    label_names = model_label_names(model)
    raw_datasets = align_labels(raw_datasets, "ner_tags", label_names, args.preprocessing_num_workers)

    # Processor (words, tags and images -> tensors), one report line per split, data loaders.
    processor = build_processor(args, model.config, label_names)
    report_splits(args, raw_datasets, processor, text_column="tokens", label_column="ner_tags")
    dataloaders = make_dataloaders(raw_datasets, COLUMNS, MNERCollator(processor), args)

    # Optimizer (separate learning rate for the CRF head), devices, schedule, and the state of a resumed run.
    model, optimizer, dataloaders = prepare_for_training(accelerator, model, dataloaders, TASK, args)

    def evaluate(split: str, with_confidences: bool) -> dict[str, Any] | None:
        # Every evaluation also scores the posts with their pictures withheld (muse_training.image_effect).
        unwrapped = accelerator.unwrap_model(model)
        evaluation, without_image = evaluate_with_and_without_pictures(
            accelerator,
            model,
            dataloaders[split],
            processor,
            predictions_of=lambda outputs: outputs.predicted_tag_ids,
            losses_of=lambda outputs, batch: crf_loss_per_post(unwrapped, outputs, batch),
            scores_of=(lambda outputs, batch: word_confidences(unwrapped, outputs, batch)) if with_confidences else None,
        )
        if with_confidences and accelerator.is_main_process:
            rows = ner_predictions(raw_datasets[split], evaluation, label_names, without_image)
            write_predictions(args.output_dir, rows)
        if evaluation.labels is None:
            # New posts without tags are tagged, not scored.
            return None
        metrics = with_image_effect(ner_metrics(evaluation, label_names), ner_metrics(without_image, label_names))
        if args.return_entity_level_metrics:
            metrics.update(entity_level_metrics(evaluation, label_names))
        return metrics

    # Train with validation after every epoch, keeping the best model; then score it on validation and test.
    outcome = train_evaluate_predict(
        accelerator, model, optimizer, dataloaders, evaluate, TASK, processor, run.checkpoint, args
    )
    return finish(accelerator, args, TASK, model, outcome, raw_datasets, run.start_time)

if __name__ == "__main__":
    main()
