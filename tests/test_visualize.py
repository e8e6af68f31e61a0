"""Tests of the exchange drawing (`modeling_muse.visualize`) and its command line."""

from __future__ import annotations

import copy
import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_config, tiny_processor
from transformers import pipeline

from modeling_muse import MuSEForTokenClassification
from modeling_muse.visualize import draw_exchange, exchange_figure, figure_height_inches, main

TEXT = "Lionel Messi visits Paris with friends"
DPI = 50


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ner")
    MuSEForTokenClassification(tiny_config()).save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def exchange(checkpoint, photo_path) -> dict:
    ner = pipeline("multimodal-ner", model=checkpoint, device="cpu")
    return ner({"text": TEXT, "image": photo_path}, return_exchange=True)["exchange"]


def test_draw_exchange_writes_a_png_of_the_documented_size(exchange, photo_path, tmp_path):
    path = draw_exchange(photo_path, exchange["tokens"], exchange, tmp_path / "exchange.png", dpi=DPI)
    assert len(exchange["layers"]) == 2
    with Image.open(path) as drawn:
        assert drawn.format == "PNG"
        assert drawn.size == (12 * DPI, round(figure_height_inches(2) * DPI))
        assert np.asarray(drawn.convert("RGB")).std() > 0


def render(figure) -> np.ndarray:
    """The figure's RGB pixels, drawn once; its artists' window extents then refer to these pixels."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def red_mask(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)


def pixel_box(axes, pixels: np.ndarray, points) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in PNG pixels of data points of ``axes`` (display y runs upwards, PNG rows down)."""
    (x0, y0), (x1, y1) = axes.transData.transform(points)
    height = pixels.shape[0]
    return round(min(x0, x1)), round(height - max(y0, y1)), round(max(x0, x1)), round(height - min(y0, y1))


def axes_labelled(figure, label: str):
    (axes,) = [axes for axes in figure.axes if axes.get_label() == label]
    return axes


def only_exchanged(exchange: dict, patches: list, token_positions: list) -> dict:
    edited = copy.deepcopy(exchange)
    for layer in edited["layers"]:
        layer["exchanged_patches"] = list(patches)
        layer["exchanged_tokens"] = [
            {"position": position, "token": edited["tokens"][position], "word": None} for position in token_positions
        ]
    return edited


@pytest.mark.parametrize("size", [(90, 40), (30, 75)], ids=["wide", "tall"])
def test_the_picture_keeps_its_aspect_ratio_under_the_patch_grid(exchange, size):
    picture = Image.new("RGB", size, (128, 128, 128))
    figure = exchange_figure(picture, exchange["tokens"], exchange, dpi=100)
    render(figure)
    grid = exchange["grid_size"]
    for layer in exchange["layers"]:
        axes = axes_labelled(figure, f"image, layer {layer['layer']}")
        shown = axes.get_window_extent()
        assert shown.width / shown.height == pytest.approx(size[0] / size[1], rel=0.03)
        # The grid spans the whole picture: the model sees the picture squashed, each patch 1/P of each side.
        corner_x, corner_y = axes.transData.transform((grid, grid))
        assert (corner_x, corner_y) == pytest.approx((shown.x1, shown.y0), abs=1)


def test_the_red_outline_surrounds_exactly_the_exchanged_patch(exchange):
    picture = Image.new("RGB", (80, 50), (128, 128, 128))  # no red in the picture itself
    for row, col in [(0, 0), (1, 2), (3, 3)]:
        figure = exchange_figure(picture, exchange["tokens"], only_exchanged(exchange, [(row, col)], []), dpi=100)
        pixels = render(figure)
        red = red_mask(pixels)
        for layer in exchange["layers"]:
            axes = axes_labelled(figure, f"image, layer {layer['layer']}")
            left, top, right, bottom = pixel_box(axes, pixels, [(col, row), (col + 1, row + 1)])
            panel = pixel_box(axes, pixels, [(0, 0), (exchange["grid_size"], exchange["grid_size"])])
            ys, xs = np.nonzero(red[panel[1] - 3 : panel[3] + 4, panel[0] - 3 : panel[2] + 4])
            xs, ys = xs + panel[0] - 3, ys + panel[1] - 3
            assert (xs.min(), ys.min(), xs.max(), ys.max()) == pytest.approx((left, top, right, bottom), abs=3)
            assert not red[(top + bottom) // 2, (left + right) // 2]  # an outline, not a fill


def test_tokens_are_boxed_in_red_exactly_when_exchanged(exchange):
    grey = Image.new("RGB", (64, 64), (128, 128, 128))

    def red_in_text_panels(token_positions: list) -> list[int]:
        figure = exchange_figure(grey, exchange["tokens"], only_exchanged(exchange, [], token_positions), dpi=100)
        pixels = render(figure)
        counts = []
        for layer in exchange["layers"]:
            box = axes_labelled(figure, f"text, layer {layer['layer']}").get_window_extent()
            rows = slice(round(pixels.shape[0] - box.y1), round(pixels.shape[0] - box.y0))
            counts.append(int(red_mask(pixels[rows, round(box.x0) : round(box.x1)]).sum()))
        return counts

    nothing, one, two = red_in_text_panels([]), red_in_text_panels([1]), red_in_text_panels([1, 3])
    assert nothing == [0, 0]
    assert all(0 < a < b for a, b in zip(one, two))


def test_the_header_explains_the_marks_and_the_colours(exchange):
    figure = exchange_figure(Image.new("RGB", (64, 64)), exchange["tokens"], exchange, dpi=DPI)
    (legend,) = figure.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels[0].startswith("exchanged") and labels[1].startswith("kept")
    assert legend.legend_handles[0].get_edgecolor()[:3] == pytest.approx((1.0, 0.0, 0.0))
    bar = axes_labelled(figure, "colour bar")
    assert [tick.get_text() for tick in bar.get_xticklabels()] == ["least attended", "most attended"]
    assert "cls attention" in bar.get_title()


def test_tokens_must_match_the_exchange_info(exchange, photo_path, tmp_path):
    with pytest.raises(ValueError, match="tokens: got 2 tokens but layer 2 has attention for"):
        draw_exchange(photo_path, ["a", "b"], exchange, tmp_path / "x.png")
    with pytest.raises(ValueError, match="exchange_info: no exchange layers to draw"):
        draw_exchange(photo_path, exchange["tokens"], {**exchange, "layers": []}, tmp_path / "x.png")


def test_a_missing_matplotlib_names_the_extra(exchange, photo_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "muse-hf\[viz\]"'):
        draw_exchange(photo_path, exchange["tokens"], exchange, tmp_path / "x.png")


def test_command_line_draws_the_exchange_of_a_post(checkpoint, photo_path, tmp_path, capsys):
    output = tmp_path / "cli.png"
    main(["--model", checkpoint, "--image", photo_path, "--text", TEXT, "--output", str(output), "--dpi", str(DPI)])
    with Image.open(output) as drawn:
        assert drawn.size == (12 * DPI, round(figure_height_inches(2) * DPI))
    printed = capsys.readouterr().out
    assert f"wrote {output}" in printed
    assert "prediction: [" in printed
