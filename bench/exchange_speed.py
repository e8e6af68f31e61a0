"""Forward+backward time of the CrossTransformer with and without the exchange (issue "Core", benchmark).

Three variants of the same shared-weight stack, at the paper's size by default (d 768, 12 heads, 6 layers,
batch 40, n 64), timed in one run:

(a) exchange switched off (theta = 0): the plain post-norm Transformer stack;
(b) our exchange: vectorised, the cls attention row from the cls query alone, no host sync;
(c) a naive exchange like the public research code's: the full attention map is materialised to read its
    cls row, and the selection and replacement loop over samples and tokens with `.item()` and NumPy.

Prints a table (median of --repeats runs after --warmup runs) and, last, ``exchange overhead: X.XX`` =
(b) / (a). Usage: ``python bench/exchange_speed.py [--device cuda --dtype bfloat16]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from transformers import BertConfig

from configuration_muse import MuSEConfig
from modeling_muse.cross_transformer import CrossTransformer


def naive_exchange_forward(module: CrossTransformer, text, image, text_mask):
    """The CrossTransformer's forward with the exchange written as the public research code wrote it."""
    batch, n, width = text.shape
    states = torch.cat(
        [
            torch.cat([module.text_cls.expand(batch, 1, -1), text], 1),
            torch.cat([module.image_cls.expand(batch, 1, -1), image], 1),
        ]
    )
    key_mask = torch.cat([torch.ones(2 * batch, 1, dtype=torch.bool, device=text.device),
                          torch.cat([text_mask.bool(), torch.ones_like(text_mask, dtype=torch.bool)])], 1)
    for layer_number, layer in enumerate(module.layers, start=1):
        states, _ = layer.attend(states, key_mask, return_cls_attention=False)
        if layer_number in module.exchange_layers:
            # The research code asked the attention module for its full (L x L) weights.
            q, k, _ = layer.qkv(states).view(2 * batch, n + 1, 3, layer.num_heads, layer.head_dim).permute(2, 0, 3, 1, 4)
            full_map = (q @ k.transpose(-1, -2) / math.sqrt(layer.head_dim)).softmax(-1).mean(1)
            cls_rows = full_map[:, 0, 1:].detach().float().cpu().numpy()
            text_states, image_states = states[:batch].clone(), states[batch:].clone()
            text_mean, image_mean = text_states[:, 1:].mean(1), image_states[:, 1:].mean(1)
            for b in range(batch):
                for stream, rows, other_mean in ((text_states, cls_rows[b], image_mean[b]),
                                                  (image_states, cls_rows[batch + b], text_mean[b])):
                    k_tokens = int(math.ceil(module.exchange_ratio * len(rows)))
                    for token in np.argsort(rows)[:k_tokens]:
                        stream[b, 1 + int(token)] = stream[b, 1 + int(token)] + other_mean
            states = torch.cat([text_states, image_states])
        states = layer.feed_forward(states)
    return states


def time_once(step, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden_size", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--grid", type=int, default=8, help="P; the text length is n = P*P")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    n = args.grid * args.grid
    dtype = getattr(torch, args.dtype)
    text_config = BertConfig(hidden_size=args.hidden_size, num_attention_heads=args.heads)
    variants = {}
    for name, ratio in (("(a) exchange off", 0.0), ("(b) ours", 0.1), ("(c) naive loop", 0.1)):
        config = MuSEConfig(text_config=text_config, num_cross_layers=args.layers, num_attention_heads=args.heads,
                            image_grid_size=args.grid, max_text_length=n, exchange_ratio=ratio)
        torch.manual_seed(0)
        module = CrossTransformer(config).to(args.device, dtype).train()
        torch.nn.init.kaiming_normal_(module.text_cls)
        torch.nn.init.kaiming_normal_(module.image_cls)
        variants[name] = module

    generator = torch.Generator().manual_seed(0)
    text = torch.randn(args.batch, n, args.hidden_size, generator=generator).to(args.device, dtype)
    image = torch.randn(args.batch, n, args.hidden_size, generator=generator).to(args.device, dtype)
    lengths = torch.randint(n // 4, n + 1, (args.batch,), generator=generator)
    text_mask = (torch.arange(n) < lengths[:, None]).long().to(args.device)

    def step_for(name, module):
        def step():
            module.zero_grad(set_to_none=True)
            if name.startswith("(c)"):
                out = naive_exchange_forward(module, text, image, text_mask)
                loss = out.float().pow(2).mean()
            else:
                out = module(text, image, text_mask)
                loss = out.text_hidden_state.float().pow(2).mean() + out.image_hidden_state.float().pow(2).mean()
            loss.backward()
        return step

    steps = {name: step_for(name, module) for name, module in variants.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    # Round-robin over the variants, so that drift in the machine's load affects all of them alike.
    timings = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            timings[name].append(time_once(step, args.device))
    medians = {name: statistics.median(values) for name, values in timings.items()}

    print(f"CrossTransformer forward+backward: d={args.hidden_size}, heads={args.heads}, layers={args.layers}, "
          f"batch={args.batch}, n={n}, exchange layers 2-4, theta 0.1, {args.device} {args.dtype}, "
          f"torch threads={torch.get_num_threads()}, median of {args.repeats} after {args.warmup} warm-up")
    print(f"{'variant':<20}{'median s':>10}{'min s':>10}{'max s':>10}{'vs (a)':>9}")
    for name, values in timings.items():
        ratio = medians[name] / medians["(a) exchange off"]
        print(f"{name:<20}{medians[name]:>10.3f}{min(values):>10.3f}{max(values):>10.3f}{ratio:>9.2f}")
    print(f"naive exchange overhead: {medians['(c) naive loop'] / medians['(a) exchange off']:.2f}")
    print(f"exchange overhead: {medians['(b) ours'] / medians['(a) exchange off']:.2f}")


if __name__ == "__main__":
    main()
