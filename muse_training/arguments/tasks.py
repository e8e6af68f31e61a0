"""The two tasks of the training scripts: what the shared code needs to know of each (`TaskInfo`), and the datasets
of the paper each task takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DATASET_TITLES", "MNER_DATASETS", "MSA_DATASETS", "SAMPLES_WITHOUT_IMAGES", "SAMPLE_DATASETS", "TaskInfo"]

MNER_DATASETS = ("twitter2017_sample", "twitter2015", "twitter2017", "mt_product", "umt")
MSA_DATASETS = ("mvsa_single_sample", "mvsa_single", "mvsa_multiple")
SAMPLE_DATASETS = ("twitter2017_sample", "mvsa_single_sample")
# Bundled samples released without their images: every post gets the grey placeholder.
SAMPLES_WITHOUT_IMAGES = ("twitter2017_sample",)
# How the paper and the model cards name each dataset.
DATASET_TITLES = {
    "twitter2017_sample": "Twitter-2017 (bundled 420-post sample)",
    "twitter2015": "Twitter-2015",
    "twitter2017": "Twitter-2017",
    "mt_product": "MT-Product",
    "umt": "UMT-format data",
    "mvsa_single_sample": "MVSA-Single (bundled synthetic sample)",
    "mvsa_single": "MVSA-Single",
    "mvsa_multiple": "MVSA-Multiple",
}


@dataclass(frozen=True)
class TaskInfo:
    """What distinguishes the two tasks where the shared code needs to know it.

    Attributes:
        name: ``"mner"`` or ``"msa"``.
        title: the task in words, as the model card's evaluation results name it.
        datasets: the ``--dataset_name`` choices, the bundled sample first (the quick-start default).
        variants: the ``--variant`` choices (names of `ABLATION_VARIANTS`).
        head_modules: names of the model's top-level head modules, trained with ``--head_learning_rate``.
        pipeline_tag: the Hub pipeline tag of the model card.
        custom_pipeline: the task of this project's own pipeline (``pipeline("multimodal-ner", ...)``).
        metric_names: headline metrics, in the order they are printed.
        description: one line for ``--help`` and the model card.
        best_metric: the validation metric that selects the kept model, better when higher if
            ``greater_is_better`` (the names of transformers' ``metric_for_best_model`` and ``greater_is_better``).
    """

    name: str
    title: str
    datasets: tuple[str, ...]
    variants: tuple[str, ...]
    head_modules: tuple[str, ...]
    pipeline_tag: str
    custom_pipeline: str
    metric_names: tuple[str, ...]
    description: str
    best_metric: str = "f1"
    greater_is_better: bool = True

    def improves(self, metrics: dict[str, Any], best: dict[str, Any]) -> bool:
        """Whether validation ``metrics`` beat the kept model's (``best``: its metrics; empty before any)."""
        if not best:
            return True
        new, kept = metrics[self.best_metric], best[self.best_metric]
        return new > kept if self.greater_is_better else new < kept

    @property
    def default_output_dir(self) -> str:
        return f"outputs/muse-{self.datasets[0].replace('_', '-')}"
