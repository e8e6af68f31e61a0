"""The decoders' CPU dropout masks (``uniform_() >= p``, modeling_muse/dropout.py) against torch's (``bernoulli_``).

Forward+backward time of the decoders, each run with MuSE's dropout module and with ``torch.nn.functional.dropout``
in its place, the two interleaved step by step so that changes in the machine's load hit both alike; median of
``--repeats`` steps after one warm-up:

- PixelCNN++ at the paper's size (80 filters x 5 blocks, batch 4) and in the README's CPU configuration (16 x 1,
  batch 32), 32x32 images;
- the mask alone: ``bernoulli_`` against ``uniform_`` on a (32, 65, 1536) tensor.

    python bench/dropout_speed.py [--repeats 8]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cost_tools import timed
from modeling_muse import dropout as muse_dropout
from modeling_muse.pixelcnn_decoder import PixelCNNPlusPlusDecoder


MUSE_MODULE_FORWARD = muse_dropout.Dropout.forward


def _torch_module_forward(self: muse_dropout.Dropout, inputs: torch.Tensor) -> torch.Tensor:
    return F.dropout(inputs, self.p, self.training)


def use_torch_dropout(enabled: bool) -> None:
    """Swap torch's dropout into (or back out of) MuSE's dropout module."""
    muse_dropout.Dropout.forward = _torch_module_forward if enabled else MUSE_MODULE_FORWARD


def compare(step: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``step`` with torch's dropout and with MuSE's, interleaved."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats + 1):
        for torch_dropout in (True, False):
            use_torch_dropout(torch_dropout)
            seconds[torch_dropout].append(timed(step, "cpu"))
    use_torch_dropout(False)
    return statistics.median(seconds[True][1:]), statistics.median(seconds[False][1:])


def pixelcnn_step(num_filters: int, blocks: int, batch: int, condition_dim: int) -> Callable[[], None]:
    decoder = PixelCNNPlusPlusDecoder(condition_dim, num_filters=num_filters, num_resnet_blocks=blocks).train()
    images = torch.randint(0, 256, (batch, 3, 32, 32)) / 255 * 2 - 1
    condition = torch.randn(batch, condition_dim)

    def step() -> None:
        decoder.zero_grad(set_to_none=True)
        decoder(images, condition).loss.backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {
        "PixelCNN++ 80x5, batch 4": pixelcnn_step(80, 5, 4, 768),
        "PixelCNN++ 16x1, batch 32": pixelcnn_step(16, 1, 32, 384),
    }
    mask = torch.empty(32, 65, 1536)
    print(f"forward+backward on cpu, {torch.get_num_threads()} threads, median of {args.repeats} interleaved steps")
    print(f"{'':<36}{'torch dropout s':>16}{'MuSE dropout s':>16}{'MuSE / torch':>14}")
    for name, step in cases.items():
        torch_seconds, muse_seconds = compare(step, args.repeats)
        print(f"{name:<36}{torch_seconds:>16.3f}{muse_seconds:>16.3f}{muse_seconds / torch_seconds:>14.2f}")
    bernoulli = statistics.median(timed(lambda: mask.bernoulli_(0.9), "cpu") for _ in range(args.repeats))
    uniform = statistics.median(timed(mask.uniform_, "cpu") for _ in range(args.repeats))
    print(f"{'mask of (32, 65, 1536) alone':<36}{bernoulli:>16.4f}{uniform:>16.4f}{uniform / bernoulli:>14.2f}")


if __name__ == "__main__":
    main()
