#!/usr/bin/env python
"""Train MuSE for multimodal named entity recognition (Twitter-2015/2017, MT-Product, any UMT-format data).

    accelerate launch run_mner.py          # quick start: bundled Twitter-2017 sample, small model, a few minutes
    python run_mner.py --help              # every argument
    accelerate launch run_mner.py --dataset_name twitter2017 --data_dir data/twitter2017 \\
        --image_dir data/twitter2017_images --text_model_name_or_path bert-base-uncased  # the paper's setting

An explicit Accelerate loop in the manner of transformers' `run_ner_no_trainer.py`; the parts shared with
`run_msa.py` (arguments, optimizer groups, the loop, checkpoint/resume, evaluation, model card) are in
`training_common.py`. Scores are entity-level micro precision/recall/F1 (seqeval, CoNLL-style), with a per-type
report; the model with the best validation F1 is kept in ``--output_dir`` and scored on the test split.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import set_seed
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from transformers import BatchFeature

import modeling_muse  # noqa: F401  (registers MuSE with the transformers Auto classes)
from configuration_muse import ABLATION_VARIANTS
from modeling_muse import MuSEForTokenClassification
from modeling_muse.heads import WordPositions
from processing_muse import MuSEProcessor
from training_common import (
    MNER_DATASETS,
    EvaluationOutput,
    TaskInfo,
    TrainingProgress,
    build_processor,
    create_accelerator,
    create_hub_repo,
    create_optimizer,
    create_scheduler,
    evaluate_model,
    finish,
    fit,
    load_splits,
    make_dataloaders,
    parse_args,
    prepare_output_dir,
    resume,
    score_best_model,
)

TASK = TaskInfo(
    name="mner",
    datasets=MNER_DATASETS,
    # Paper Table 3 runs only-I for sentiment only: NER labels are words, which an image-only model cannot see.
    variants=tuple(name for name in ABLATION_VARIANTS if name != "only_i"),
    head_modules=("tagger",),
    pipeline_tag="token-classification",
    metric_names=("precision", "recall", "f1"),
    description="Multimodal named entity recognition (post text + image) with MuSE.",
)
COLUMNS = ["tokens", "ner_tags", "image"]


@dataclass
class MNERCollator:
    """Dataset rows -> model inputs: words, word tags and images through the processor."""

    processor: MuSEProcessor

    def __call__(self, rows: list[dict[str, Any]]) -> BatchFeature:
        return self.processor(
            images=[row["image"] for row in rows],
            text=[row["tokens"] for row in rows],
            word_labels=[row["ner_tags"] for row in rows],
            return_tensors="pt",
        )


def crf_loss_per_post(model: MuSEForTokenClassification, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The CRF's negative log-likelihood of each post's gold tags, ``(batch,)``; NaN for a post without words.

    The model returns the batch mean only; the per-post values make the loss of a multi-process evaluation exact.
    """
    losses = []
    for index in range(batch["labels"].shape[0]):
        post = slice(index, index + 1)
        words = WordPositions(batch["word_start_mask"][post])
        if int(words.counts[0]) == 0:
            losses.append(outputs.logits.new_tensor(float("nan")))
        else:
            losses.append(model.tagger.negative_log_likelihood(outputs.logits[post], words, batch["labels"][post]))
    return torch.stack(losses)


def ner_metrics(evaluation: EvaluationOutput, label_names: Sequence[str]) -> dict[str, Any]:
    """Entity-level micro precision/recall/F1, per-type F1 (``<TYPE>_f1``), the loss, and the per-type report.

    Words are the positions whose label is not -100 (each word's first sub-token); the CRF's tag sits there too.
    """
    gold_tags, predicted_tags = [], []
    for predicted, gold in zip(evaluation.predictions, evaluation.labels, strict=True):
        words = gold != -100
        if (predicted[words] < 0).any():
            raise ValueError(
                "The model predicted no tag for some word: predicted_tag_ids must be set at every word start."
            )
        gold_tags.append([label_names[tag] for tag in gold[words]])
        predicted_tags.append([label_names[tag] for tag in predicted[words]])
    metrics: dict[str, Any] = {
        "precision": precision_score(gold_tags, predicted_tags, zero_division=0),
        "recall": recall_score(gold_tags, predicted_tags, zero_division=0),
        "f1": f1_score(gold_tags, predicted_tags, zero_division=0),
        "loss": evaluation.loss,
    }
    per_type = classification_report(gold_tags, predicted_tags, output_dict=True, zero_division=0)
    for entity_type, scores in per_type.items():
        if not entity_type.endswith(" avg"):
            metrics[f"{entity_type}_f1"] = scores["f1-score"]
    metrics["report"] = classification_report(gold_tags, predicted_tags, digits=4, zero_division=0)
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train MuSE for MNER, keep the best model by validation F1, score it on test; returns ``all_results.json``."""
    start_time = time.perf_counter()
    args = parse_args(TASK, argv)
    accelerator = create_accelerator(args)
    set_seed(args.seed)
    checkpoint = prepare_output_dir(accelerator, args)
    if args.push_to_hub and accelerator.is_main_process:
        args.hub_model_id = create_hub_repo(args.hub_model_id, args.hub_token)

    # Data and model. The tag set comes from the dataset; O has id 0.
    raw_datasets = load_splits(args, accelerator)
    label_names = raw_datasets["train"].features["ner_tags"].feature.names
    model = MuSEForTokenClassification.from_text_vision_pretrained(
        args.text_model_name_or_path,
        args.vision_model_name,
        pretrained_vision=args.pretrained_vision,
        id2label=dict(enumerate(label_names)),
        label2id={label: index for index, label in enumerate(label_names)},
        **args.muse_config,
    )
    processor = build_processor(args, model.config, label_names)
    collate = MNERCollator(processor)
    train_dataloader, eval_dataloader, test_dataloader = make_dataloaders(raw_datasets, COLUMNS, collate, args)

    # Optimizer (separate learning rate for the CRF head), devices, schedule, and the state of a resumed run.
    optimizer = create_optimizer(model, TASK.head_modules, args)
    model, optimizer, train_dataloader, eval_dataloader, test_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, test_dataloader
    )
    lr_scheduler, schedule = create_scheduler(accelerator, optimizer, train_dataloader, args)
    progress = resume(accelerator, checkpoint, args.output_dir) if checkpoint else TrainingProgress()

    def evaluate(dataloader) -> dict[str, Any]:
        evaluation = evaluate_model(
            accelerator,
            model,
            dataloader,
            predictions_of=lambda outputs: outputs.predicted_tag_ids,
            losses_of=lambda outputs, batch: crf_loss_per_post(accelerator.unwrap_model(model), outputs, batch),
        )
        return ner_metrics(evaluation, label_names)

    # Train with validation after every epoch, then score the kept (best) model on the test split.
    training_stats = fit(
        accelerator,
        model,
        optimizer,
        lr_scheduler,
        schedule,
        train_dataloader,
        lambda: evaluate(eval_dataloader),
        processor,
        progress,
        args,
    )
    test_metrics = score_best_model(accelerator, model, args, lambda: evaluate(test_dataloader))
    return finish(accelerator, args, TASK, model, progress, test_metrics, training_stats, raw_datasets, start_time)


if __name__ == "__main__":
    main()
