"""Training-step time and peak memory of full MuSE versus its ablations (issue "Embedding regularizers").

One small batch at the paper's sizes: a BERT-base-sized random text encoder, a ResNet-152 backbone on
224x224 images, a 6-layer CrossTransformer, both regularizer decoders at the spec's sizes (caption LSTM
512, PixelCNN++ 80 filters x 5 blocks, 10 mixtures). Variants, timed one after the other in one run:

- full MuSE (both decoders),
- only-L_task (no decoders),
- w/o-CT (both decoders, no CrossTransformer).

Each variant runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is its own. Prints
a table (median of --repeats steps after --warmup steps) and, last, the headline ratio
``decoder overhead (full / only-L_task): X.XX``; the paper's own figure was 180 s / 145 s = 1.24 per epoch.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {"full": {}, "only-L_task": {"caption_loss_weight": 0.0, "generation_loss_weight": 0.0},
            "w/o-CT": {"use_cross_transformer": False}}


def run_variant(name: str, batch: int, warmup: int, repeats: int) -> dict:
    """Runs inside the subprocess: builds the model, times training steps, reports JSON."""
    import torch
    from transformers import BertConfig

    from configuration_muse import MuSEConfig
    from modeling_muse import MuSEForTokenClassification

    torch.manual_seed(0)
    config = MuSEConfig(text_config=BertConfig(), vision_model_name="resnet152", num_labels=9, **VARIANTS[name])
    model = MuSEForTokenClassification(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    n = config.max_text_length
    generator = torch.Generator().manual_seed(0)
    attention_mask = (torch.arange(n) < torch.randint(n // 4, n, (batch, 1), generator=generator)).long()
    word_start_mask = attention_mask.clone()
    word_start_mask[:, 0] = 0
    inputs = {
        "input_ids": torch.randint(1000, 30000, (batch, n), generator=generator),
        "attention_mask": attention_mask,
        "word_start_mask": word_start_mask,
        "labels": torch.where(word_start_mask.bool(), torch.randint(0, 9, (batch, n), generator=generator), -100),
        "pixel_values": torch.randn(batch, 3, 224, 224, generator=generator),
        "decoder_pixel_values": torch.randint(0, 256, (batch, 3, 32, 32), generator=generator) / 255 * 2 - 1,
    }
    timings = []
    for step in range(warmup + repeats):
        start = time.perf_counter()
        loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            timings.append(time.perf_counter() - start)
    parameters = sum(p.numel() for p in model.parameters())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"timings": timings, "parameters": parameters, "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.batch, args.warmup, args.repeats)))
        return

    results = {}
    for name in VARIANTS:
        completed = subprocess.run(
            [sys.executable, __file__, "--variant", name, "--batch", str(args.batch), "--warmup", str(args.warmup),
             "--repeats", str(args.repeats)],
            check=True, capture_output=True, text=True,
        )
        results[name] = json.loads(completed.stdout.strip().splitlines()[-1])

    print(f"MuSE training step (forward, backward, AdamW) on CPU, batch {args.batch}, n 64, 224x224 images, "
          f"BERT-base-sized text encoder, ResNet-152, median of {args.repeats} steps after {args.warmup} warm-up")
    print(f"{'variant':<14}{'params (M)':>11}{'median s':>10}{'min s':>8}{'max s':>8}{'vs only-L_task':>16}{'peak RSS MiB':>14}")
    base = statistics.median(results["only-L_task"]["timings"])
    for name, result in results.items():
        median = statistics.median(result["timings"])
        print(f"{name:<14}{result['parameters'] / 1e6:>11.1f}{median:>10.2f}{min(result['timings']):>8.2f}"
              f"{max(result['timings']):>8.2f}{median / base:>16.2f}{result['peak_mib']:>14.0f}")
    full = statistics.median(results["full"]["timings"])
    print(f"decoder overhead (full / only-L_task): {full / base:.2f}")


if __name__ == "__main__":
    main()
