"""Data collators: dataset rows -> model inputs, for `run_mner.py` / `run_msa.py` and for `transformers.Trainer`
(``data_collator=``; see docs/trainer.md).

The rows are those of the scripts' splits (`datasets_scripts.user_data`): ``tokens``, ``ner_tags`` and ``image``
for NER; ``text``, ``label`` and ``image`` for sentiment. The image is whatever `MuSEProcessor` takes (a PIL image,
a path, or None for a post without one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchFeature

from datasets_scripts.user_data import PROBLEM_TYPES
from processing_muse import MuSEProcessor

__all__ = ["MNERCollator", "MSACollator", "MULTI_LABEL", "PROBLEM_TYPES", "REGRESSION", "SINGLE_LABEL"]

# transformers' three ``problem_type`` values of a sequence-classification head, as the data loader names them.
SINGLE_LABEL, MULTI_LABEL, REGRESSION = PROBLEM_TYPES


@dataclass
class MNERCollator:
    """Dataset rows -> model inputs: words, word tags and images through the processor.

    Silent: what the processor does to the text (cut words, unknown words) is reported once per split at load.
    """

    processor: MuSEProcessor
    # "longest" pads each batch to its own longest post; "max_length" gives every batch one width, which batches
    # concatenated across processes need.
    padding: str = "longest"

    def __call__(self, rows: list[dict[str, Any]]) -> BatchFeature:
        return self.processor(
            images=[row["image"] for row in rows],
            text=[row["tokens"] for row in rows],
            padding=self.padding,
            # New posts to tag have no tags.
            word_labels=[row["ner_tags"] for row in rows] if rows[0].get("ner_tags") is not None else None,
            return_tensors="pt",
            warn=False,
        )


@dataclass
class MSACollator:
    """Dataset rows -> model inputs: raw post text and image through the processor, plus the labels that
    ``problem_type`` asks for (`MuSEForSequenceClassification.forward`): class ids, multi-hot rows over
    ``num_labels`` classes, or float targets.

    Silent: what the processor does to the text (cut words, unknown words) is reported once per split at load.
    """

    processor: MuSEProcessor
    problem_type: str = SINGLE_LABEL
    num_labels: int = 0
    padding: str = "longest"

    def __post_init__(self) -> None:
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"MSACollator: problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}.")
        if self.problem_type == MULTI_LABEL and self.num_labels < 1:
            raise ValueError(
                "MSACollator: problem_type='multi_label_classification' needs num_labels (the number of classes) "
                "to build the multi-hot label rows."
            )

    def __call__(self, rows: list[dict[str, Any]]) -> BatchFeature:
        batch = self.processor(
            images=[row["image"] for row in rows], text=[row["text"] for row in rows], padding=self.padding,
            return_tensors="pt", warn=False,
        )
        if rows[0].get("label") is None:
            return batch  # new posts to tag have no labels
        labels = [row["label"] for row in rows]
        if self.problem_type == MULTI_LABEL:
            multi_hot = torch.zeros(len(rows), self.num_labels)
            for index, class_ids in enumerate(labels):
                multi_hot[index, class_ids] = 1.0
            batch["labels"] = multi_hot
        else:
            batch["labels"] = torch.tensor(labels, dtype=torch.float32 if self.problem_type == REGRESSION else None)
        return batch
