"""Tests of the exchange drawing (`modeling_muse.visualize`) and its command line."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_config, tiny_processor
from transformers import pipeline

from modeling_muse import MuSEForTokenClassification
from modeling_muse.visualize import draw_exchange, main

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
def photo_path(tmp_path_factory) -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def exchange(checkpoint, photo_path) -> dict:
    ner = pipeline("multimodal-ner", model=checkpoint, device="cpu")
    return ner({"text": TEXT, "image": photo_path}, return_exchange=True)["exchange"]


def test_draw_exchange_writes_a_png_of_the_documented_size(exchange, photo_path, tmp_path):
    path = draw_exchange(photo_path, exchange["tokens"], exchange, tmp_path / "exchange.png", dpi=DPI)
    with Image.open(path) as drawn:
        assert drawn.format == "PNG"
        assert drawn.size == (12 * DPI, 3 * DPI * len(exchange["layers"]))
        pixels = np.asarray(drawn.convert("RGB"))
    assert len(exchange["layers"]) == 2
    assert pixels.std() > 0


def test_the_drawing_outlines_exactly_the_exchanged_patches_and_tokens(exchange, tmp_path):
    grey = Image.new("RGB", (64, 64), (128, 128, 128))  # no red in the picture itself

    def red_pixels(info, name):
        path = draw_exchange(grey, info["tokens"], info, tmp_path / name, dpi=DPI)
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB")).astype(int)
        return int(((pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum())

    nothing_exchanged = copy.deepcopy(exchange)
    for layer in nothing_exchanged["layers"]:
        layer["exchanged_patches"] = []
        layer["exchanged_tokens"] = []
    only_patches = copy.deepcopy(exchange)
    for layer in only_patches["layers"]:
        layer["exchanged_tokens"] = []
    assert red_pixels(nothing_exchanged, "plain.png") == 0
    assert 0 < red_pixels(only_patches, "patches.png") < red_pixels(exchange, "all.png")


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
        assert drawn.size == (12 * DPI, 3 * DPI * 2)
    printed = capsys.readouterr().out
    assert f"wrote {output}" in printed
    assert "prediction: [" in printed
