"""Drawing what MuSE's CrossTransformer exchanged between text and image (``return_exchange=True``).

`exchange_figure` draws one row per exchange layer (paper eqs. 10-11): on the left the post's image at its own
aspect ratio under the P x P patch grid, each patch shaded by the cls token's attention to it, the exchanged
patches outlined in red; on the right the post's sub-word tokens, shaded the same way, the exchanged tokens boxed
in red. A header holds the legend and the colour bar. The image processor squashes the image to a square before
the backbone sees it, so patch (row, col) covers the col-th P-th of the width and the row-th P-th of the height of
the original picture: the grid is drawn over the picture as it is, with cells as wide and tall as those fractions.

The shading is min-max scaled within each panel (dark = least attended): the exchange picks the least-attended
tokens of each post, so the ranking is what matters; each panel's title gives the raw attention range.
matplotlib is an optional extra: ``pip install "muse-hf[viz]"``.

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

from .image_input import DEFAULT_TIMEOUT, ImageInput, load_post_image

__all__ = ["draw_exchange", "exchange_figure", "figure_height_inches", "main"]

FIGURE_WIDTH_INCHES = 12.0
ROW_HEIGHT_INCHES = 3.0
HEADER_HEIGHT_INCHES = 0.8
IMAGE_PANEL_WIDTH_INCHES = 3.6
EXCHANGED_COLOR = "red"
ATTENTION_CMAP = "viridis"
_FONT_SIZE = 9
_MARGIN_INCHES = 0.2
_TITLE_HEIGHT_INCHES = 0.35
# Width of a monospace character relative to the font size, to lay the tokens out without a renderer.
_MONOSPACE_CHAR_WIDTH = 0.6
_SHADE_ALPHA = 0.45


def figure_height_inches(num_layers: int) -> float:
    """Height of `exchange_figure`'s figure: the header plus one row per exchange layer."""
    return HEADER_HEIGHT_INCHES + ROW_HEIGHT_INCHES * num_layers


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


def _attention_range(attention: Any) -> str:
    values = np.asarray(attention, dtype=float)
    return f"cls attention {values.min():.3g} to {values.max():.3g}"


def _draw_image_panel(axes: Any, picture: np.ndarray, layer: Mapping[str, Any], grid: int) -> None:
    from matplotlib.patches import Rectangle

    # extent puts patch (row, col) at [col, col + 1] x [row, row + 1]; the aspect makes one row unit as tall on
    # screen as height/width column units, which shows the picture undistorted under its squashed patch grid.
    height, width = picture.shape[:2]
    extent = (0, grid, grid, 0)
    axes.imshow(picture, extent=extent, interpolation="antialiased")
    axes.imshow(_relative(layer["image_cls_attention"]), extent=extent, cmap=ATTENTION_CMAP, alpha=_SHADE_ALPHA,
                vmin=0.0, vmax=1.0, interpolation="nearest")
    for position in range(grid + 1):
        axes.axhline(position, color="white", linewidth=0.5)
        axes.axvline(position, color="white", linewidth=0.5)
    for row, col in layer["exchanged_patches"]:
        axes.add_patch(Rectangle((col, row), 1, 1, fill=False, edgecolor=EXCHANGED_COLOR, linewidth=2.5))
    axes.set_xlim(0, grid)
    axes.set_ylim(grid, 0)
    axes.set_aspect(height / width)
    axes.set_anchor("N")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_label(f"image, layer {layer['layer']}")
    axes.set_title(
        f"layer {layer['layer']} image: {len(layer['exchanged_patches'])} of {grid * grid} patches exchanged\n"
        f"{_attention_range(layer['image_cls_attention'])}",
        fontsize=_FONT_SIZE,
    )


def _draw_text_panel(
    axes: Any, tokens: Sequence[str], layer: Mapping[str, Any], size_inches: tuple[float, float]
) -> None:
    from matplotlib import colormaps

    axes.set_axis_off()
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_label(f"text, layer {layer['layer']}")
    exchanged = {entry["position"] for entry in layer["exchanged_tokens"]}
    shades = _relative(layer["text_cls_attention"])
    cmap = colormaps[ATTENTION_CMAP]
    width_inches, height_inches = size_inches
    char_width = _MONOSPACE_CHAR_WIDTH * _FONT_SIZE / 72 / width_inches  # in axes fractions
    line_height = 2.2 * _FONT_SIZE / 72 / height_inches
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
                "facecolor": (*cmap(shades[position])[:3], _SHADE_ALPHA),
                "edgecolor": EXCHANGED_COLOR if red else "none",
                "linewidth": 2.0 if red else 0.0,
            },
        )
        x += token_width
    axes.set_title(
        f"layer {layer['layer']} text: {len(exchanged)} of {len(tokens)} tokens exchanged, "
        f"{_attention_range(layer['text_cls_attention'])}",
        fontsize=_FONT_SIZE, loc="left",
    )


def _draw_header(figure: Any, height_inches: float) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    top = 1 - _MARGIN_INCHES / 2 / height_inches
    handles = [
        Patch(facecolor="none", edgecolor=EXCHANGED_COLOR, linewidth=2.0,
              label="exchanged: moved towards the other modality's mean token (eqs. 10-11)"),
        Patch(facecolor=colormaps[ATTENTION_CMAP](0.5), alpha=_SHADE_ALPHA, edgecolor="none",
              label="kept: shaded by the cls token's attention"),
    ]
    figure.legend(handles=handles, loc="upper left", bbox_to_anchor=(_MARGIN_INCHES / FIGURE_WIDTH_INCHES, top),
                  frameon=False, fontsize=_FONT_SIZE, handlelength=1.5)
    bar_height = 0.15 / height_inches
    bar_axes = figure.add_axes((0.6, top - 0.45 / height_inches, 0.3, bar_height))
    bar = figure.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=ATTENTION_CMAP), cax=bar_axes,
                          orientation="horizontal")
    bar.solids.set_alpha(_SHADE_ALPHA)
    bar.set_ticks([0.0, 1.0], labels=["least attended", "most attended"], fontsize=_FONT_SIZE - 1)
    bar_axes.set_title("cls attention, min-max scaled within each panel\n(the least attended are exchanged)",
                       fontsize=_FONT_SIZE)
    bar_axes.set_label("colour bar")


def exchange_figure(
    image: ImageInput,
    tokens: Sequence[str],
    exchange_info: Mapping[str, Any],
    *,
    dpi: int = 100,
) -> Any:
    """Draw the CrossTransformer's exchanges of one post into a matplotlib `Figure` (see the module docs).

    Args:
        image: the post's image (PIL image, uint8 numpy array, path or URL).
        tokens: one label per text position of ``exchange_info``, normally ``exchange_info["tokens"]``.
        exchange_info: the ``"exchange"`` entry of a MuSE pipeline result with ``return_exchange=True``.
        dpi: resolution of the figure.

    Returns:
        A `matplotlib.figure.Figure`, ``12 in`` wide and `figure_height_inches` (layers) high. Its image and text
        axes are labelled ``"image, layer L"`` and ``"text, layer L"`` (`Axes.get_label`).
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
    height_inches = figure_height_inches(len(layers))
    figure = Figure(figsize=(FIGURE_WIDTH_INCHES, height_inches), dpi=dpi)
    _draw_header(figure, height_inches)
    text_left = _MARGIN_INCHES + IMAGE_PANEL_WIDTH_INCHES + _MARGIN_INCHES
    text_size = (
        FIGURE_WIDTH_INCHES - text_left - _MARGIN_INCHES,
        ROW_HEIGHT_INCHES - _TITLE_HEIGHT_INCHES - _MARGIN_INCHES,
    )
    for index, layer in enumerate(layers):
        row_bottom = ROW_HEIGHT_INCHES * (len(layers) - 1 - index) + _MARGIN_INCHES / 2
        panel_height = ROW_HEIGHT_INCHES - 2 * _TITLE_HEIGHT_INCHES - _MARGIN_INCHES / 2
        # In figure fractions; the image axes shrink inside this box to the picture's aspect (adjustable="box").
        image_axes = figure.add_axes((
            _MARGIN_INCHES / FIGURE_WIDTH_INCHES,
            row_bottom / height_inches,
            IMAGE_PANEL_WIDTH_INCHES / FIGURE_WIDTH_INCHES,
            panel_height / height_inches,
        ))
        _draw_image_panel(image_axes, picture, layer, grid)
        text_axes = figure.add_axes((
            text_left / FIGURE_WIDTH_INCHES,
            row_bottom / height_inches,
            text_size[0] / FIGURE_WIDTH_INCHES,
            text_size[1] / height_inches,
        ))
        _draw_text_panel(text_axes, tokens, layer, text_size)
    return figure


def draw_exchange(
    image: ImageInput,
    tokens: Sequence[str],
    exchange_info: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    dpi: int = 100,
) -> Path:
    """Draw the CrossTransformer's exchanges of one post into a PNG (`exchange_figure`, saved).

    Args:
        image, tokens, exchange_info: as for `exchange_figure`.
        path: where to write the PNG.
        dpi: resolution; the PNG is ``12 * dpi`` pixels wide and ``figure_height_inches(layers) * dpi`` high.

    Returns:
        ``path`` as a `Path`.
    """
    figure = exchange_figure(image, tokens, exchange_info, dpi=dpi)
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
