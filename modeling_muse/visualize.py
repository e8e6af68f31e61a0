"""Drawing what MuSE's CrossTransformer exchanged between text and image (``return_exchange=True``).

`draw_exchange` draws one row per exchange layer: on the left the image (stretched to a square, as the image
processor feeds it to the model) under its P x P patch grid, each patch shaded by the cls token's attention to
it (viridis, min-max scaled within the layer: dark = least attended, the exchange candidates) and the exchanged
patches outlined in red; on the right the post's sub-word tokens, shaded the same way, with the exchanged tokens
boxed in red. matplotlib is an optional extra: ``pip install "muse-hf[viz]"``.

Command line::

    python -m modeling_muse.visualize --model <checkpoint folder> --image photo.jpg \
        --text "Messi arrives in Paris" --output exchange.png
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .pipelines import DEFAULT_TIMEOUT, ImageInput, load_post_image

__all__ = ["draw_exchange", "main"]

FIGURE_WIDTH_INCHES = 12.0
ROW_HEIGHT_INCHES = 3.0
_FONT_SIZE = 9
# Width of a monospace character relative to the font size, to lay the tokens out without a renderer.
_MONOSPACE_CHAR_WIDTH = 0.6
_EXCHANGED_COLOR = "red"
_ATTENTION_CMAP = "viridis"


def _check_exchange_info(tokens: Sequence[str], exchange_info: Mapping[str, Any]) -> None:
    layers = exchange_info.get("layers")
    if not layers:
        raise ValueError(
            "exchange_info: no exchange layers to draw; pass the 'exchange' entry of a MuSE pipeline result called "
            "with return_exchange=True."
        )
    grid = exchange_info["grid_size"]
    for layer in layers:
        if len(layer["text_cls_attention"]) != len(tokens):
            raise ValueError(
                f"tokens: got {len(tokens)} tokens but layer {layer['layer']} has attention for "
                f"{len(layer['text_cls_attention'])} text positions; pass exchange_info['tokens']."
            )
        if np.shape(layer["image_cls_attention"]) != (grid, grid):
            raise ValueError(
                f"exchange_info: layer {layer['layer']} image attention has shape "
                f"{np.shape(layer['image_cls_attention'])}, expected ({grid}, {grid})."
            )


def _relative(attention: Any) -> np.ndarray:
    # Min-max scaling: the exchange picks the least-attended tokens, so what matters is the ranking within the
    # post, not the absolute share (which is close to 1/n everywhere in an untrained model).
    values = np.asarray(attention, dtype=float)
    spread = values.max() - values.min()
    return (values - values.min()) / spread if spread > 0 else np.full_like(values, 0.5)


def _draw_image_panel(axes: Any, picture: np.ndarray, layer: Mapping[str, Any], grid: int) -> None:
    from matplotlib.patches import Rectangle

    # extent puts patch (row, col) at [col, col + 1] x [row, row + 1], so the grid needs no pixel arithmetic.
    extent = (0, grid, grid, 0)
    axes.imshow(picture, extent=extent)
    axes.imshow(_relative(layer["image_cls_attention"]), extent=extent, cmap=_ATTENTION_CMAP, alpha=0.45,
                vmin=0.0, vmax=1.0)
    for position in range(grid + 1):
        axes.axhline(position, color="white", linewidth=0.5)
        axes.axvline(position, color="white", linewidth=0.5)
    for row, col in layer["exchanged_patches"]:
        axes.add_patch(Rectangle((col, row), 1, 1, fill=False, edgecolor=_EXCHANGED_COLOR, linewidth=2.5))
    axes.set_xlim(0, grid)
    axes.set_ylim(grid, 0)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(
        f"layer {layer['layer']}: image, {len(layer['exchanged_patches'])} of {grid * grid} patches exchanged",
        fontsize=_FONT_SIZE + 1,
    )


def _draw_text_panel(axes: Any, tokens: Sequence[str], layer: Mapping[str, Any], width_inches: float) -> None:
    from matplotlib import colormaps

    axes.set_axis_off()
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    exchanged = {entry["position"] for entry in layer["exchanged_tokens"]}
    shades = _relative(layer["text_cls_attention"])
    cmap = colormaps[_ATTENTION_CMAP]
    char_width = _MONOSPACE_CHAR_WIDTH * _FONT_SIZE / 72 / width_inches  # in axes fractions
    line_height = 2.2 * _FONT_SIZE / 72 / ROW_HEIGHT_INCHES
    x, y = 0.0, 1.0 - line_height
    for position, token in enumerate(tokens):
        token_width = (len(token) + 1.5) * char_width
        if x > 0 and x + token_width > 1.0:
            x, y = 0.0, y - line_height
        red = position in exchanged
        axes.text(
            x, y, token, fontsize=_FONT_SIZE, family="monospace", va="bottom", ha="left",
            fontweight="bold" if red else "normal",
            bbox={
                "boxstyle": "round,pad=0.2",
                "facecolor": (*cmap(shades[position])[:3], 0.45),
                "edgecolor": _EXCHANGED_COLOR if red else "none",
                "linewidth": 2.0 if red else 0.0,
            },
        )
        x += token_width
    axes.set_title(
        f"layer {layer['layer']}: text, {len(exchanged)} of {len(tokens)} tokens exchanged (boxed)",
        fontsize=_FONT_SIZE + 1,
    )


def draw_exchange(
    image: ImageInput,
    tokens: Sequence[str],
    exchange_info: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    dpi: int = 100,
) -> Path:
    """Draw the CrossTransformer's exchanges of one post into a PNG.

    Args:
        image: the post's image (PIL image, uint8 numpy array, path or URL).
        tokens: one label per text position of ``exchange_info``, normally ``exchange_info["tokens"]``.
        exchange_info: the ``"exchange"`` entry of a MuSE pipeline result with ``return_exchange=True``.
        path: where to write the PNG.
        dpi: resolution; the PNG is ``12 * dpi`` pixels wide and ``3 * dpi`` pixels high per exchange layer.

    Returns:
        ``path`` as a `Path`.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError('draw_exchange needs matplotlib, an optional extra: pip install "muse-hf[viz]"') from error
    _check_exchange_info(tokens, exchange_info)
    layers = exchange_info["layers"]
    grid = exchange_info["grid_size"]
    picture = np.asarray(load_post_image(image))

    # A bare Figure (no pyplot) leaves the caller's matplotlib backend and global figure state alone.
    figure = Figure(figsize=(FIGURE_WIDTH_INCHES, ROW_HEIGHT_INCHES * len(layers)), dpi=dpi)
    panels = figure.subplots(len(layers), 2, squeeze=False, gridspec_kw={"width_ratios": [1, 2.4]})
    figure.subplots_adjust(left=0.02, right=0.98, top=1 - 0.3 / len(layers), bottom=0.03, wspace=0.05, hspace=0.35)
    for (image_axes, text_axes), layer in zip(panels, layers):
        _draw_image_panel(image_axes, picture, layer, grid)
        _draw_text_panel(text_axes, tokens, layer, text_axes.get_position().width * FIGURE_WIDTH_INCHES)
    path = Path(path)
    figure.savefig(path, format="png", dpi=dpi)
    return path


def _task_of(model: str) -> str:
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(model).architectures or []
    return "sentiment" if "MuSEForSequenceClassification" in architectures else "ner"


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line entry point: run a MuSE pipeline with ``return_exchange=True`` and draw the result."""
    parser = argparse.ArgumentParser(
        prog="python -m modeling_muse.visualize",
        description="Draw which text tokens and image patches MuSE's CrossTransformer exchanged for one post.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder with the MuSE model and its processor")
    parser.add_argument("--image", required=True, help="image path or http(s) URL")
    parser.add_argument("--text", required=True, help="the post's text")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--task", choices=("ner", "sentiment"),
                        help="pipeline to run; by default read from the checkpoint's architecture")
    parser.add_argument("--device", default="cpu", help="torch device for the model (default: cpu)")
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for an image URL")
    args = parser.parse_args(argv)

    from transformers import pipeline

    task = args.task or _task_of(args.model)
    pipe = pipeline(f"multimodal-{task}", model=args.model, device=args.device)
    image = load_post_image(args.image, timeout=args.timeout)
    result = pipe({"text": args.text, "image": image}, return_exchange=True)
    exchange = result["exchange"]
    output = draw_exchange(image, exchange["tokens"], exchange, args.output, dpi=args.dpi)
    prediction = result["entities"] if task == "ner" else result["prediction"]
    print(f"prediction: {prediction}")
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
