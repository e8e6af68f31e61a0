"""MuSE's CPU dropout masks (32-bit random integers, modeling_muse/dropout.py) against torch's (``bernoulli_``).

Forward+backward time of MuSE's layers that use MuSE's dropout, each run with it and with torch's dropout in its place
(``torch.nn.functional.dropout``, whose CPU mask is ``bernoulli_``; in the CrossTransformer's attention that is what
``scaled_dot_product_attention`` does with dropout on a CPU), the two interleaved step by step so that changes in the
machine's load hit both alike; median of ``--repeats`` steps after one warm-up:

- one CrossTransformer layer (attention and feed-forward sub-modules) on the image stream of the README's CPU
  configuration: batch 32, 65 tokens, width 384, 12 heads, feed-forward 1536, dropout 0.1;
- the caption decoder of that configuration (LSTM 64, BERT vocabulary, 64 image vectors, 36-token captions);
- PixelCNN++ at the paper's size (80 filters x 5 blocks, batch 4) and in the README's CPU configuration (16 x 1,
  batch 32), 32x32 images;
- the mask alone: ``bernoulli_`` against ``dropout_mask`` on a (32, 65, 1536) tensor.

    python bench/dropout_speed.py [--repeats 8]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from configuration_muse import MuSEConfig
from cost_tools import timed
from modeling_muse import dropout as muse_dropout
from modeling_muse.caption_decoder import CaptionDecoder
from modeling_muse.cross_transformer import CrossTransformerLayer
from modeling_muse.pixelcnn_decoder import PixelCNNPlusPlusDecoder

MUSE_MASKED_DROPOUT = muse_dropout._MaskedDropout


class _TorchDropout:
    """Stands in for MuSE's masked dropout function: torch's dropout, drawing its mask with ``bernoulli_``."""

    @staticmethod
    def apply(inputs: torch.Tensor, p: float) -> torch.Tensor:
        return F.dropout(inputs, p, training=True)


def use_torch_dropout(enabled: bool) -> None:
    """Swap torch's dropout into (or back out of) every use of MuSE's dropout."""
    muse_dropout._MaskedDropout = _TorchDropout if enabled else MUSE_MASKED_DROPOUT


def compare(step: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``step`` with torch's dropout and with MuSE's, interleaved."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats + 1):
        for torch_dropout in (True, False):
            use_torch_dropout(torch_dropout)
            seconds[torch_dropout].append(timed(step, "cpu"))
    use_torch_dropout(False)
    return statistics.median(seconds[True][1:]), statistics.median(seconds[False][1:])


def cross_transformer_step(batch: int, length: int) -> Callable[[], None]:
    layer = CrossTransformerLayer(MuSEConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536)).train()
    hidden_states = torch.randn(batch, length, 384, requires_grad=True)
    key_mask = torch.ones(batch, length, dtype=torch.bool)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        attended, _ = layer.attend(hidden_states, key_mask, return_cls_attention=False)
        layer.feed_forward(attended).sum().backward()

    return step


def caption_decoder_step(batch: int, length: int) -> Callable[[], None]:
    decoder = CaptionDecoder(384, vocab_size=30522, decoder_dim=64, attention_dim=64, embedding_dim=64).train()
    features = torch.randn(batch, 64, 384, requires_grad=True)
    ids = torch.randint(1000, 30000, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)

    def step() -> None:
        decoder.zero_grad(set_to_none=True)
        decoder(features, ids, mask).loss.backward()

    return step


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
        "CrossTransformer layer, batch 32": cross_transformer_step(32, 65),
        "caption decoder LSTM 64, batch 32": caption_decoder_step(32, 36),
        "PixelCNN++ 80x5, batch 4": pixelcnn_step(80, 5, 4, 768),
        "PixelCNN++ 16x1, batch 32": pixelcnn_step(16, 1, 32, 384),
    }
    shape = torch.Size([32, 65, 1536])
    mask = torch.empty(shape)
    print(f"forward+backward on cpu, {torch.get_num_threads()} threads, median of {args.repeats} interleaved steps")
    print(f"{'':<36}{'torch dropout s':>16}{'MuSE dropout s':>16}{'MuSE / torch':>14}")
    for name, step in cases.items():
        torch_seconds, muse_seconds = compare(step, args.repeats)
        print(f"{name:<36}{torch_seconds:>16.3f}{muse_seconds:>16.3f}{muse_seconds / torch_seconds:>14.2f}")
    bernoulli = statistics.median(timed(lambda: mask.bernoulli_(0.9), "cpu") for _ in range(args.repeats))
    ours = statistics.median(timed(lambda: muse_dropout.dropout_mask(shape, 0.1), "cpu") for _ in range(args.repeats))
    print(f"{'mask of (32, 65, 1536) alone':<36}{bernoulli:>16.4f}{ours:>16.4f}{ours / bernoulli:>14.2f}")


if __name__ == "__main__":
    main()
