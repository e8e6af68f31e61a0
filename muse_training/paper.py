"""The paper's experiments and numbers (Zhu et al., "Exchanging-based Multimodal Fusion with Transformer"), for `reproduce.py` and `recipes/derive.py`.

Scores are percentages as the paper prints them. Figure 4 (the sensitivity sweeps) is a plot whose values the paper's
text does not give; only its default point (theta 0.1, mu 2, eta 4) is the MuSE row of Tables 1-3.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DATASETS",
    "MNER_RESULTS",
    "MSA_RESULTS",
    "SWEEPS",
    "TABLE3_F1",
    "VARIANT_TITLES",
    "Sweep",
]

# The five datasets of the paper, in its column order; each has a recipe recipes/<name>.yaml.
DATASETS = ("twitter2015", "twitter2017", "mt_product", "mvsa_single", "mvsa_multiple")

# Table 1, row "MuSE": test precision, recall and F1 (entity-level).
MNER_RESULTS = {
    "twitter2015": {"precision": 76.13, "recall": 77.51, "f1": 76.81},
    "twitter2017": {"precision": 88.92, "recall": 88.32, "f1": 88.62},
    "mt_product": {"precision": 49.17, "recall": 40.34, "f1": 44.32},
}
# Table 2, row "MuSE": test accuracy and F1.
MSA_RESULTS = {
    "mvsa_single": {"accuracy": 75.80, "f1": 75.58},
    "mvsa_multiple": {"accuracy": 74.10, "f1": 73.93},
}


def _row(*scores: float | None) -> dict[str, float]:
    return {dataset: score for dataset, score in zip(DATASETS, scores, strict=True) if score is not None}


# Table 3: test F1 of each variant (configuration_muse.ABLATION_VARIANTS names), in DATASETS order; only-I was run
# for MSA only.
TABLE3_F1 = {
    "only_t": _row(72.05, 84.32, 43.65, 63.85, 61.97),
    "only_i": _row(None, None, None, 64.99, 62.39),
    "wo_ct": _row(73.26, 85.46, 43.78, 74.24, 72.35),
    "only_l_task": _row(74.39, 87.63, 44.20, 74.66, 72.95),
    "wo_l_it": _row(75.43, 88.41, 44.02, 75.23, 73.46),
    "wo_l_ti": _row(75.27, 88.10, 44.13, 75.44, 73.65),
    "full": _row(76.81, 88.62, 44.32, 75.58, 73.93),
}
VARIANT_TITLES = {
    "full": "MuSE",
    "only_t": "MuSE-only-T",
    "only_i": "MuSE-only-I",
    "wo_ct": "MuSE-w/o-CT",
    "only_l_task": "MuSE-only-L_task",
    "wo_l_it": "MuSE-w/o-L_it",
    "wo_l_ti": "MuSE-w/o-L_ti",
}


@dataclass(frozen=True)
class Sweep:
    """One panel of Figure 4: a hyperparameter swept with the others fixed at the paper's defaults.

    Attributes:
        name: the paper's symbol, spelled out (``theta``, ``mu``, ``eta``).
        argument: the run scripts' argument it sets.
        values: the values of the sweep; ``default`` is among them.
        default: the paper's setting, which the recipes of Tables 1-2 use.
        source: where the paper states the range and the default.
    """

    name: str
    argument: str
    values: tuple[float | int, ...]
    default: float | int
    source: str


SWEEPS = (
    Sweep("theta", "exchange_ratio", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5), 0.1, "paper 4.4 / Figure 4a: 0 to 0.5"),
    Sweep("mu", "exchange_start_layer", (1, 2, 3, 4), 2, "paper 4.4 / Figure 4b: 1 to 4 with eta 4"),
    Sweep("eta", "exchange_end_layer", (2, 3, 4, 5, 6), 4, "paper 4.4 / Figure 4c: 2 to 6 with mu 2"),
)
