"""Property-based tests (hypothesis) of the input parsing: the UMT reader, and the pipelines' images and texts.

The properties are those the documentation promises: only the documented exceptions escape, each naming the file and
line (UMT files) or the post's position and the file (pipelines), and every post of a readable file is loaded or
reported, never dropped. Examples are derandomized, so that a run in CI is the same as a run here.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_models import tiny_config, tiny_processor
from transformers import pipeline

from datasets_scripts import TWITTER2017_LABELS, UMTFormatError
from datasets_scripts.errors import file_id_problem
from datasets_scripts.images import check_image_file
from datasets_scripts.umt import read_umt_file
from modeling_muse import MuSEForTokenClassification
from modeling_muse.image_input import load_post_image
from processing_muse import UnreadableImageError

PROPERTY = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LINE_BREAK = re.compile(r"\r\n|\r|\n")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for the module, whose files each example overwrites."""
    return tmp_path_factory.mktemp("examples")


def write(folder: Path, content: bytes, name: str = "train.txt") -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


# ------------------------------------------------------------------------------------------- UMT reader

# Tokens: any text without TAB or line breaks (lone CR included), not read as an IMGID line.
TOKENS = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\t\r\n"), min_size=1, max_size=6).filter(
    lambda token: not token.lstrip("\ufeff").startswith("IMGID:")
)
# Image ids: any text without whitespace that names a file (no path separator, NUL, "." or ".."; such ids are
# refused, tests/test_hostile_inputs.py).
IMAGE_IDS = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=6).filter(
    lambda image_id: not any(character.isspace() for character in image_id) and file_id_problem(image_id) is None
)
LINE_ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])
TRAILING_SPACE = st.sampled_from(["", " ", "\t", " \t", "\u3000"])
BLANK_LINES = st.lists(st.sampled_from(["", " ", "\t", "\u00a0"]), min_size=1, max_size=3)
POSTS = st.lists(
    st.tuples(IMAGE_IDS, st.lists(st.tuples(TOKENS, st.sampled_from(TWITTER2017_LABELS)), max_size=5)), max_size=6
)


@settings(PROPERTY, max_examples=100)
@given(posts=POSTS, bom=st.booleans(), data=st.data())
def test_umt_files_with_any_text_line_endings_and_blank_lines_read_back_exactly(scratch, posts, bom, data):
    lines: list[str] = []
    for index, (image_id, rows) in enumerate(posts):
        if index:
            lines += data.draw(BLANK_LINES)
        lines.append(f"IMGID:{image_id}{data.draw(TRAILING_SPACE)}")
        lines += [f"{token}\t{tag}{data.draw(TRAILING_SPACE)}" for token, tag in rows]
    text = "".join(line + data.draw(LINE_ENDINGS) for line in lines)
    path = write(scratch, (("\ufeff" if bom else "") + text).encode("utf-8"))
    read = read_umt_file(path, TWITTER2017_LABELS)
    assert [(post.image_id, list(zip(post.tokens, post.tags))) for post in read] == posts


FRAGMENTS = st.sampled_from(
    ["IMGID:", "IMGID:a", "IMGID:b c", "x", "Kawhi", "\t", "O", "B-PER", "I-LOC", "B-OTHER", "\n", "\r", "\r\n", " ",
     "\ufeff", "\u2028", "\x85", "\x00", "é", "北"]
)
GARBAGE = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(FRAGMENTS, st.text(max_size=4)), max_size=40).map(lambda parts: "".join(parts).encode()),
)


@settings(PROPERTY, max_examples=200)
@given(content=GARBAGE, labels=st.sampled_from([TWITTER2017_LABELS, None]))
def test_umt_reader_loads_every_post_or_names_file_and_line(scratch, content, labels):
    path = write(scratch, content)
    try:
        posts = read_umt_file(path, labels)
    except UMTFormatError as error:
        lines = LINE_BREAK.split(content.decode("utf-8", errors="replace"))
        assert str(error).startswith(f"{path}:{error.line}: ") and 1 <= error.line <= len(lines)
        return
    lines = LINE_BREAK.split(content.decode("utf-8-sig"))
    imgid_lines = [number for number, line in enumerate(lines, 1) if line.lstrip("\ufeff").startswith("IMGID:")]
    assert [post.line for post in posts] == imgid_lines  # one post per IMGID line: none dropped
    for post in posts:
        assert len(post.tokens) == len(post.tags) and all(post.tokens) and all(tag.strip() for tag in post.tags)
        assert labels is None or set(post.tags) <= set(labels)


# ------------------------------------------------------------------------------------ pipelines' inputs


def _encoded(format_name: str, mode: str, **options) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=format_name, **options)
    return buffer.getvalue()


REAL_IMAGES = [
    _encoded("PNG", "RGB"),
    _encoded("PNG", "P"),
    _encoded("PNG", "I;16"),
    _encoded("JPEG", "RGB", quality=90),
    _encoded("GIF", "P"),
    _encoded("BMP", "RGB"),
    _encoded("TIFF", "RGB"),
    _encoded("TIFF", "F"),
    _encoded("WEBP", "RGB"),
    _encoded("PPM", "L"),
    _encoded("ICO", "RGBA"),
]


@st.composite
def damaged_images(draw) -> bytes:
    """Random bytes, or a real image file truncated or with some bytes overwritten (header included)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(REAL_IMAGES)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


@settings(PROPERTY, max_examples=300)
@given(content=damaged_images())
def test_any_bytes_as_an_image_file_give_an_rgb_image_or_a_named_unreadable_error(scratch, content):
    path = write(scratch, content, "image.jpg")
    try:
        image = load_post_image(str(path), argument="post 3: image")
    except UnreadableImageError as error:
        assert str(error).startswith(f"post 3: image: '{path}' ")
        assert check_image_file(path) is not None, "the dataset check must refuse what the processor cannot read"
        return
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ner")
    MuSEForTokenClassification(tiny_config()).save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return pipeline("multimodal-ner", model=str(folder), device="cpu")


TEXTS = st.one_of(st.text(max_size=30), st.lists(st.text(min_size=1, max_size=8), max_size=5))


@settings(PROPERTY, max_examples=25)
@given(posts=st.lists(st.tuples(TEXTS, damaged_images()), min_size=1, max_size=4))
def test_a_list_of_posts_with_any_text_and_image_bytes_loses_no_post(ner, scratch, posts):
    inputs = [
        {"text": text, "image": str(write(scratch, content, f"post{index}.png"))}
        for index, (text, content) in enumerate(posts)
    ]
    try:
        results = ner(inputs, allow_missing_image=True)
    except (ValueError, TypeError) as error:
        # Only a text without words may stop the call, and the error names its post.
        located = re.match(r"post (\d+): text: ", str(error))
        assert located, f"an error that names no post's text: {error}"
        text = posts[int(located.group(1))][0]
        assert not (text.split() if isinstance(text, str) else text) or any(not word.strip() for word in text)
        return
    assert len(results) == len(posts)
    try:
        ner(inputs)
    except (ValueError, TypeError, FileNotFoundError) as error:
        assert re.match(r"post \d+: (image|text): ", str(error))
