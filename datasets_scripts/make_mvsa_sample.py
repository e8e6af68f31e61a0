"""Write the small synthetic MVSA-Single sample bundled in ``datasets_scripts/sample/mvsa_single``.

The sample exists for the sentiment quick start and the tests: it has the original MVSA-Single
layout (``labelResultAll.txt``, ``data/<ID>.txt``, ``data/<ID>.jpg``) and is learnable. Each text
is a short English post built around words of its text label; each image is a 64x64 JPEG whose
base colour follows its image label (positive: warm yellow, neutral: grey, negative: dark blue),
with jitter, noise and a random shape so that images are not identical. The label pairs cover
every preprocessing rule: about 70% agreeing, 20% neutral plus positive/negative and 10% positive
against negative (dropped by the preprocessing). Every 25th text is written in Windows-1252 instead
of UTF-8, as some real MVSA files are, to exercise the decoder.

Deterministic for a given ``--seed`` and Pillow/NumPy version. Regenerate with::

    python -m datasets_scripts.make_mvsa_sample
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DEFAULT_OUTPUT_DIR", "main", "write_mvsa_sample"]

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "sample" / "mvsa_single"
_IMAGE_SIDE = 64
_BASE_COLOURS = {"positive": (235, 185, 60), "neutral": (128, 128, 128), "negative": (40, 60, 140)}
_WORDS = {
    "positive": ["love", "great", "happy", "wonderful", "amazing", "awesome", "beautiful", "fantastic", "best", "fun"],
    "neutral": ["okay", "usual", "normal", "average", "plain", "ordinary", "scheduled", "regular", "standard", "fine"],
    "negative": ["hate", "terrible", "sad", "awful", "horrible", "worst", "angry", "broken", "ugly", "boring"],
}
_SUBJECTS = [
    "the game", "my coffee", "this weather", "the concert", "our trip", "the new phone",
    "the traffic", "this movie", "the train", "dinner", "the match", "my morning",
]  # fmt: skip
_TEMPLATES = [
    "{subject} was {word} today",
    "honestly {subject} is {word}",
    "just saw {subject}, so {word}",
    "{word} {word2} vibes from {subject} #{word}",
    "can't stop thinking about {subject}: {word}!",
]
# Pairs (text_label, image_label) by kind; the kinds are drawn with weights 7:2:1.
_AGREE = [("positive", "positive"), ("neutral", "neutral"), ("negative", "negative")]
_NEUTRAL_PLUS_POLAR = [
    ("neutral", "positive"),
    ("positive", "neutral"),
    ("neutral", "negative"),
    ("negative", "neutral"),
]
_CONFLICT = [("positive", "negative"), ("negative", "positive")]


def _text(rng: random.Random, label: str) -> str:
    word, word2 = rng.sample(_WORDS[label], 2)
    return rng.choice(_TEMPLATES).format(subject=rng.choice(_SUBJECTS), word=word, word2=word2)


def _image(rng: np.random.Generator, label: str) -> Image.Image:
    base = np.array(_BASE_COLOURS[label], dtype=np.float64) + rng.normal(0, 12, size=3)
    pixels = base + rng.normal(0, 6, size=(_IMAGE_SIDE, _IMAGE_SIDE, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    x0, y0 = (int(value) for value in rng.integers(0, _IMAGE_SIDE // 2, size=2))
    x1, y1 = (int(value) for value in rng.integers(_IMAGE_SIDE // 2, _IMAGE_SIDE, size=2))
    shade = tuple(int(value) for value in np.clip(base * rng.uniform(0.6, 1.3), 0, 255))
    draw = ImageDraw.Draw(image)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=shade)
    return image


def write_mvsa_sample(output_dir: str | Path = DEFAULT_OUTPUT_DIR, num_posts: int = 150, seed: int = 0) -> Path:
    """Write the sample to ``output_dir`` (replacing its files) and return ``output_dir``."""
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    image_rng = np.random.default_rng(seed)
    rows = ["ID\ttext,image"]
    for post_id in range(1, num_posts + 1):
        kind = rng.choices([_AGREE, _NEUTRAL_PLUS_POLAR, _CONFLICT], weights=[7, 2, 1])[0]
        text_label, image_label = rng.choice(kind)
        rows.append(f"{post_id}\t{text_label},{image_label}")
        text = _text(rng, text_label)
        if post_id % 25 == 0:
            (data_dir / f"{post_id}.txt").write_bytes(f"{text} at the caf\u00e9 \u2019".encode("cp1252"))
        else:
            (data_dir / f"{post_id}.txt").write_text(text + "\n", encoding="utf-8")
        _image(image_rng, image_label).save(data_dir / f"{post_id}.jpg", format="JPEG", quality=80)
    (output_dir / "labelResultAll.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return output_dir


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets_scripts.make_mvsa_sample", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--num_posts", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_mvsa_sample(args.output_dir, args.num_posts, args.seed))


if __name__ == "__main__":
    main()
