"""Sample 32x32 images from MuSE's text-to-image decoder (conditional PixelCNN++, paper eq. 5).

With no checkpoint the decoder has random weights and the conditions are random vectors: the
script then shows that sampling runs end to end, and that different conditions give different
images. Give ``--checkpoint`` a ``state_dict`` saved from a :class:`PixelCNNPlusPlusDecoder`
built with the same sizes to look at a trained decoder.

    python examples/sample_pixelcnn.py --num-conditions 4 --samples-per-condition 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from modeling_muse.pixelcnn_decoder import PixelCNNPlusPlusDecoder


def sample_grid(
    decoder: PixelCNNPlusPlusDecoder,
    conditions: torch.Tensor,
    samples_per_condition: int,
    image_size: int = 32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images for every condition, condition-major: (num_conditions * samples_per_condition, C, H, W) in [0, 1].

    All samples are drawn in one batch, since the sampler's cost is dominated by its H*W passes.
    """
    repeated = conditions.repeat_interleave(samples_per_condition, dim=0)
    images = decoder.sample(repeated, image_size=image_size, generator=generator)
    return (images + 1) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, help="state_dict of a PixelCNNPlusPlusDecoder (default: random weights)"
    )
    parser.add_argument("--condition-dim", type=int, default=16)
    parser.add_argument("--num-filters", type=int, default=8)
    parser.add_argument("--num-resnet-blocks", type=int, default=1)
    parser.add_argument("--num-mixtures", type=int, default=5)
    parser.add_argument("--num-conditions", type=int, default=3)
    parser.add_argument("--samples-per-condition", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads; the H*W small passes of a tiny decoder run fastest on one",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/pixelcnn_samples.png"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    decoder = PixelCNNPlusPlusDecoder(
        args.condition_dim,
        num_filters=args.num_filters,
        num_resnet_blocks=args.num_resnet_blocks,
        num_mixtures=args.num_mixtures,
    )
    if args.checkpoint is not None:
        decoder.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))

    conditions = torch.randn(args.num_conditions, args.condition_dim)
    generator = torch.Generator().manual_seed(args.seed)
    images = sample_grid(decoder, conditions, args.samples_per_condition, args.image_size, generator)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    # One row per condition.
    save_image(images, args.output, nrow=args.samples_per_condition, padding=2)
    print(f"saved {len(images)} samples ({args.num_conditions} conditions) to {args.output}")


if __name__ == "__main__":
    main()
