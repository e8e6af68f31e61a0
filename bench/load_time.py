"""Seconds `from_pretrained` takes to load a saved MuSE with a timm tower, against the same load that also builds a
second backbone for timm's initial values (what every load did before `initialize_timm_towers` skipped a tower the
checkpoint holds in full), in one run.

    python bench/load_time.py [--vision_model resnet50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from transformers import BertConfig
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_muse import MuSEConfig, MuSEForSequenceClassification  # noqa: E402
from modeling_muse import weight_initialization  # noqa: E402


def every_tower_rebuilt(model: torch.nn.Module) -> None:
    """The earlier rule: timm's initial values built for every timm tower, loaded or not (copied into none)."""
    for module in model.modules():
        if isinstance(module, weight_initialization.ImageEncoder) and module.is_timm:
            initial = module.timm_initial_state()
            for name, tensor in module.backbone.state_dict(keep_vars=True).items():
                weight_initialization.init.copy_(tensor, initial[name])


def best_load_seconds(folder: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        MuSEForSequenceClassification.from_pretrained(folder)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision_model", default="resnet50", help="timm architecture of the tower")
    parser.add_argument("--repeats", type=int, default=5, help="loads per measurement; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers_logging.disable_progress_bar()
    config = MuSEConfig(
        text_config=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37),
        vision_model_name_or_path=args.vision_model, num_cross_layers=1, num_attention_heads=4, image_grid_size=4,
        max_text_length=16, exchange_start_layer=1, exchange_end_layer=1, num_labels=3,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        MuSEForSequenceClassification(config).save_pretrained(folder)
        now = best_load_seconds(folder, args.repeats)
        with mock.patch.object(weight_initialization, "initialize_timm_towers", every_tower_rebuilt), mock.patch(
            "modeling_muse.modeling.initialize_timm_towers", every_tower_rebuilt
        ):
            before = best_load_seconds(folder, args.repeats)
    print(f"from_pretrained of a saved MuSE with a {args.vision_model} tower, 1 thread, best of {args.repeats}")
    print(f"  building timm's initial values for every tower (before): {before:.3f} s")
    print(f"  only for a tower the checkpoint lacks (now):              {now:.3f} s")
    print(f"  now / before: {now / before:.2f}")


if __name__ == "__main__":
    main()
