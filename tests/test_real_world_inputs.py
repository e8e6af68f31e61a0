"""Real files, images and URLs a user brings (issue 9): each works or fails clearly, and one bad post never sinks a
batch. Every fixture is a real file written here in its real format; the URL tests run against real local servers.

Sections follow the issue's items: 1 bit depths, 2 tokenizer coverage, 3 label sets, 4 URL deadline and size,
5 images without image data, 6 decompression bombs, 7 lists of posts, 8 empty lists, 9 the truncated post's
position, 10 URL schemes; then EXIF orientation.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from local_server import QuietHandler, serving
import torch
from PIL import Image
from tiny_models import MINILM_DIR, TINY_LENGTH, tiny_config, tiny_processor
from transformers import pipeline

from datasets_scripts import MT_PRODUCT_LABELS, TWITTER2015_LABELS, TWITTER2017_LABELS, MissingImagesError
from datasets_scripts import UMTFormatError, count_placeholder_images, load_muse_dataset
from datasets_scripts.images import check_image_file
from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification
from modeling_muse.image_input import load_post_image
from processing_muse import TextReport, UnreadableImageError, load_rgb_image, placeholder_image

REPO_ROOT = Path(__file__).resolve().parents[1]

REAL_TWITTER2017 = REPO_ROOT.parent / "shared" / "data" / "twitter2017"
TEXT = "Lionel Messi visits Paris"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    torch.manual_seed(0)
    model = MuSEForTokenClassification(tiny_config())
    torch.nn.init.normal_(model.tagger.classifier.weight, std=1.0)
    folder = tmp_path_factory.mktemp("ner")
    model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return pipeline("multimodal-ner", model=str(folder), device="cpu")


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    torch.manual_seed(1)
    model = MuSEForSequenceClassification(tiny_config(["positive", "neutral", "negative"]))
    folder = tmp_path_factory.mktemp("sentiment")
    model.save_pretrained(folder)
    tiny_processor(label_names=None).save_pretrained(folder)
    return pipeline("multimodal-sentiment", model=str(folder), device="cpu")


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def grey_levels(mean: float, spread: float, top: int, seed: int = 0) -> np.ndarray:
    """A 40x48 greyscale picture on a 0..top scale with the given mean and spread (both in 8-bit units)."""
    scale = top / 255
    values = np.random.default_rng(seed).normal(mean * scale, spread * scale, (40, 48))
    return np.clip(np.rint(values), 0, top)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)


def warnings_of(caplog, logger_name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger_name and r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------ 1. bit depth and value range


def sixteen_bit_png(path: Path, eight_bit: np.ndarray) -> Path:
    Image.fromarray((eight_bit * 257).astype(np.uint16)).save(path, format="PNG")
    return path


def sixteen_bit_files(folder: Path, eight_bit: np.ndarray) -> dict[str, Path]:
    """The same picture as real 16-bit and float files: PNG and TIFF (mode I;16), PGM (mode I), float TIFF (F)."""
    sixteen = (eight_bit * 257).astype(np.uint16)
    files = {
        "png": sixteen_bit_png(folder / "grey16.png", eight_bit),
        "tiff": folder / "grey16.tif",
        "pgm": folder / "grey16.pgm",
        "float_tiff": folder / "float.tif",
    }
    Image.fromarray(sixteen).save(files["tiff"])
    Image.fromarray(sixteen).save(files["pgm"])
    Image.fromarray((eight_bit / 255).astype(np.float32)).save(files["float_tiff"])
    return files


def test_16_bit_and_float_files_keep_their_brightness(tmp_path):
    eight_bit = grey_levels(mean=129, spread=40, top=255)
    files = sixteen_bit_files(tmp_path, eight_bit)
    modes = {}
    for kind, path in files.items():
        with Image.open(path) as opened:
            modes[kind] = opened.mode
        rgb = np.asarray(load_rgb_image(path))
        assert rgb.shape == (40, 48, 3)
        # Each 8-bit level k is stored as 257 k (or k / 255): it must come back as k, not clipped to white or black.
        np.testing.assert_array_equal(rgb[..., 0], eight_bit, err_msg=kind)
    assert modes == {"png": "I;16", "tiff": "I;16", "pgm": "I", "float_tiff": "F"}


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_16_bit_and_float_pil_images_and_the_processor(processor, mode):
    eight_bit = grey_levels(mean=129, spread=40, top=255, seed=1)
    if mode == "F":
        image = Image.fromarray((eight_bit / 255).astype(np.float32))
    elif mode == "I":
        image = Image.fromarray((eight_bit * 257).astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, (48, 40), (eight_bit * 257).astype(dtype).tobytes())
    assert image.mode == mode
    decoder = processor(images=[image], return_tensors="np")["decoder_pixel_values"]
    reference = processor(images=[Image.fromarray(eight_bit.astype(np.uint8))], return_tensors="np")
    np.testing.assert_allclose(decoder, reference["decoder_pixel_values"], atol=1e-6)
    assert abs(float(((decoder[0] + 1) / 2 * 255).mean()) - eight_bit.mean()) < 1.0


def test_16_bit_files_through_the_pipeline_predict_like_their_8_bit_picture(ner, tmp_path):
    eight_bit = grey_levels(mean=129, spread=40, top=255, seed=2)
    reference = ner({"text": TEXT, "image": Image.fromarray(eight_bit.astype(np.uint8))}, aggregation_strategy="none")
    white = ner({"text": TEXT, "image": Image.new("L", (48, 40), 255)}, aggregation_strategy="none")
    assert reference != white, "the fixture model should tell this picture from a white one"
    for kind, path in sixteen_bit_files(tmp_path, eight_bit).items():
        result = ner({"text": TEXT, "image": str(path)}, aggregation_strategy="none")
        assert [e["entity"] for e in result] == [e["entity"] for e in reference], kind
        assert [e["score"] for e in result] == pytest.approx([e["score"] for e in reference], abs=1e-5), kind


def test_16_bit_images_through_the_training_collator(tmp_path):
    sys.path.insert(0, str(REPO_ROOT))
    import run_mner

    eight_bit = grey_levels(mean=129, spread=40, top=255, seed=3)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (data / name).write_text("IMGID:grey16\nParis\tB-LOC\n", encoding="utf-8")
    images = tmp_path / "images"
    images.mkdir()
    sixteen_bit_png(images / "grey16.jpg", eight_bit)  # the builders look up <id>.jpg; PIL reads the PNG inside
    dataset = load_muse_dataset("twitter2017", data_dir=data, image_dir=images, cache_dir=tmp_path / "cache")
    rows = list(dataset["train"])
    assert rows[0]["image"].mode == "I;16"  # datasets.Image hands the 16-bit picture over as it is
    processor = tiny_processor(label_names=list(TWITTER2017_LABELS))
    batch = run_mner.MNERCollator(processor)(rows)
    brightness = float(((batch["decoder_pixel_values"][0] + 1) / 2 * 255).mean())
    assert brightness == pytest.approx(eight_bit.mean(), abs=1.0)


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        (np.full((8, 8), 3.5, np.float32), ["mode 'F'", "from 3.5 to 3.5", "[0, 1]"]),
        (np.array([[0.2, np.nan]], np.float32), ["mode 'F'", "NaN", "[0, 1]"]),
        (np.full((8, 8), -7, np.int32), ["mode 'I'", "from -7 to -7", "0..65535"]),
        (np.full((8, 8), 70000, np.int32), ["mode 'I'", "70000", "0..65535"]),
    ],
)
def test_values_without_an_8_bit_reading_are_refused_naming_the_file_and_the_fix(
    processor, tmp_path, values, fragments
):
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(UnreadableImageError) as caught:
        processor(images=[Image.new("RGB", (4, 4)), path])
    message = str(caught.value)
    assert message.startswith(f"images[1]: '{path}' has PIL mode")
    for fragment in fragments:
        assert fragment in message
    assert "scale it to" in message.lower()  # and how to fix it
    with pytest.raises(UnreadableImageError, match=r"images\[0\]: the PIL image has PIL mode"):
        processor(images=[Image.fromarray(values)])


# -------------------------------------------------------------------------------- 2. tokenizer coverage

# One product title, one character per word as MT-Product is tokenised; the English MiniLM vocabulary lacks most.
CHINESE_POSTS = [list("华为手机壳超薄透明防摔"), list("小米充电宝快充便携"), list("苹果耳机无线蓝牙降噪")]


def unknown_word_count(tokenizer, posts: list[list[str]]) -> int:
    return sum(tokenizer.unk_token in tokenizer.tokenize(word) for post in posts for word in post)


def test_a_tokenizer_that_does_not_cover_the_script_warns_once_per_call(processor, caplog):
    unknown = unknown_word_count(processor.tokenizer, CHINESE_POSTS)
    words = sum(len(post) for post in CHINESE_POSTS)
    assert unknown / words > 0.5
    with caplog.at_level(logging.WARNING):
        processor(text=CHINESE_POSTS)
    messages = warnings_of(caplog, "modeling_muse.processing_muse")
    assert len(messages) == 1
    assert f"{unknown} of {words} words ({unknown / words:.0%}) became the tokenizer's unknown token" in messages[0]
    assert "bert-base-chinese" in messages[0] and str(MINILM_DIR) in messages[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        processor(text=CHINESE_POSTS, warn=False)
        processor(text=[["Lionel", "Messi", "visits", "Paris", "❤"]])  # 1 of 5 words: an English tweet with emoji
    assert warnings_of(caplog, "modeling_muse.processing_muse") == []


def test_text_report_measures_without_warning(caplog):
    processor = tiny_processor()  # max_length 16: 14 words of one sub-token each fit
    long_post = ["word"] * 13 + ["Barack", "Obama", "in", "Paris"]
    posts = [["Obama"], long_post, CHINESE_POSTS[0], ["a"] * 20]
    labels = [["B-PER"], ["O"] * 13 + ["B-PER", "I-PER", "O", "B-LOC"], ["O"] * 11, ["O"] * 20]
    with caplog.at_level(logging.WARNING):
        report = processor.text_report(posts, labels)
    assert caplog.records == []
    assert isinstance(report, TextReport)
    assert report == TextReport(
        posts=4,
        words=1 + 17 + 11 + 20,
        unknown_words=unknown_word_count(processor.tokenizer, [CHINESE_POSTS[0]]),
        cut_words=3 + 6,
        cut_entities=2,  # "Obama" (the cut half of "Barack Obama") and "Paris"
        cut_posts=[1, 3],
    )
    assert report.unknown_share == pytest.approx(report.unknown_words / 49)
    assert processor.text_report(posts).cut_entities is None
    assert tiny_processor(label_names=None).text_report(posts, [[0] * len(post) for post in posts]).cut_entities is None
    with pytest.raises(TypeError, match=r"words\[1\]: expected the post's list of words"):
        processor.text_report([["a"], "raw post"])


def test_the_pipeline_warns_about_coverage_once_for_a_list(ner, caplog):
    posts = [{"text": post, "image": Image.new("RGB", (8, 8))} for post in CHINESE_POSTS]
    with caplog.at_level(logging.WARNING):
        results = ner(posts)
    assert len(results) == 3
    coverage = [m for m in caplog.messages if "unknown token" in m]
    assert len(coverage) == 1 and "bert-base-chinese" in coverage[0]


# ---------------------------------------------------------------------------------------- 3. label sets


def write_umt_split_files(folder: Path, train: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text(train, encoding="utf-8")
    (folder / "valid.txt").write_text(train, encoding="utf-8")
    (folder / "test.txt").write_text(train, encoding="utf-8")
    return folder


TWITTER2015_FORMAT = (
    "IMGID:16_05_01_6\nRT\tO\n@JayKenMinaj_\tO\n:\tO\nMe\tO\nouta\tO\nhere\tO\nlike\tO\n"
    "super\tB-OTHER\nbowl\tI-OTHER\n\n"
    "IMGID:74830\nKawhi\tB-PER\nLeonard\tI-PER\nin\tO\nSan\tB-LOC\nAntonio\tI-LOC\nwith\tO\nthe\tO\nSpurs\tB-ORG\n\n"
)
TWITTER2017_FORMAT = "IMGID:O_1\nWWE\tB-ORG\nRaw\tB-MISC\ntonight\tO\nin\tO\nLondon\tB-LOC\n\nIMGID:O_2\nhey\tO\n\n"
MT_PRODUCT_FORMAT = (
    "IMGID:mt_0001\n买\tO\n华\tB-MISC\n为\tI-MISC\n手\tI-MISC\n机\tI-MISC\n壳\tO\n\nIMGID:mt_0002\n好\tO\n用\tO\n\n"
)


@pytest.mark.parametrize(
    ("name", "content", "labels", "tokens", "tags"),
    [
        ("twitter2015", TWITTER2015_FORMAT, TWITTER2015_LABELS, ["super", "bowl"], ["B-OTHER", "I-OTHER"]),
        ("twitter2017", TWITTER2017_FORMAT, TWITTER2017_LABELS, ["WWE", "Raw"], ["B-ORG", "B-MISC"]),
        ("mt_product", MT_PRODUCT_FORMAT, MT_PRODUCT_LABELS, ["华", "为"], ["B-MISC", "I-MISC"]),
    ],
)
def test_each_named_configuration_reads_its_release_format(tmp_path, name, content, labels, tokens, tags):
    data = write_umt_split_files(tmp_path / name, content)
    dataset = load_muse_dataset(name, data_dir=data, missing_images="placeholder", cache_dir=tmp_path / "cache")
    names = dataset["train"].features["ner_tags"].feature.names
    assert names == list(labels)
    rows = list(dataset["train"])
    assert len(rows) == 2
    decoded = [(token, names[tag]) for row in rows for token, tag in zip(row["tokens"], row["ner_tags"])]
    for token, tag in zip(tokens, tags):
        assert (token, tag) in decoded


def test_the_label_sets_are_the_releases_own():
    def entity_types(labels):
        return {tag[2:] for tag in labels if tag != "O"}

    assert entity_types(TWITTER2015_LABELS) == {"PER", "LOC", "ORG", "OTHER"}
    assert entity_types(TWITTER2017_LABELS) == {"PER", "LOC", "ORG", "MISC"}
    assert entity_types(MT_PRODUCT_LABELS) == {"MISC"}


@pytest.mark.parametrize(
    ("name", "content", "allowed"),
    [
        ("twitter2015", "IMGID:1\nWWE\tB-MISC\n", "B-OTHER, I-OTHER"),
        ("twitter2017", "IMGID:1\nsuper\tB-OTHER\n", "B-MISC, I-MISC"),
        ("mt_product", "IMGID:1\n华\tB-PER\n", "O, B-MISC, I-MISC"),
    ],
)
def test_another_release_s_tag_names_the_configuration_s_labels(tmp_path, name, content, allowed):
    data = write_umt_split_files(tmp_path / name, content)
    with pytest.raises(UMTFormatError, match=rf"train\.txt:2: unknown tag .*{allowed}"):
        load_muse_dataset(name, data_dir=data, missing_images="placeholder", cache_dir=tmp_path / "cache")


@pytest.mark.skipif(
    not (REAL_TWITTER2017 / "train.txt").is_file(), reason=f"the real Twitter-2017 text is not at {REAL_TWITTER2017}"
)
def test_real_twitter2017_text_reads_with_its_configuration(tmp_path):
    dataset = load_muse_dataset(
        "twitter2017", data_dir=REAL_TWITTER2017, missing_images="placeholder", cache_dir=tmp_path
    )
    names = dataset["test"].features["ner_tags"].feature.names
    assert {names[tag] for row in dataset["test"]["ner_tags"] for tag in row} == set(TWITTER2017_LABELS)


# ------------------------------------------------------------------------------ 4. URL deadline and size


class _AwkwardServer(QuietHandler):
    """/slow: a PNG header, then one byte every 0.25 s (20 at most); /huge: 4 MiB without a Content-Length;
    /declared: a Content-Length of 1 GB."""

    def do_GET(self) -> None:
        try:
            if self.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                for _ in range(20):
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.25)
            elif self.path == "/huge":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(bytes(64 * 1024))
            elif self.path == "/declared":
                self.send_response(200)
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.write(b"\x89PNG")
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


@pytest.fixture(scope="module")
def awkward_server():
    with serving(_AwkwardServer) as url:
        yield url


def test_a_slow_server_hits_the_whole_download_deadline(ner, awkward_server, no_proxy):
    url = f"{awkward_server}/slow"
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"image: could not fetch image URL '{url}'"):
        load_post_image(url, timeout=1.0, allow_private_urls=True)
    # Each byte comes within a read timeout; only a deadline on the whole download stops it (it would take 5 s).
    assert time.monotonic() - started < 3.0
    posts = [{"text": TEXT, "image": Image.new("RGB", (8, 8))}, {"text": TEXT, "image": url}]
    with pytest.raises(ConnectionError, match=r"post 1: image: could not fetch image URL '.*/slow'"):
        ner(posts, timeout=1, allow_private_urls=True)


@pytest.mark.parametrize(
    ("path", "cause"),
    [("/huge", "it sent more than 100000 bytes"), ("/declared", "its Content-Length is 1000000000 bytes")],
)
def test_an_oversized_download_is_refused(ner, awkward_server, no_proxy, path, cause):
    url = f"{awkward_server}{path}"
    with pytest.raises(UnreadableImageError, match=rf"image: '{url}' is larger than max_image_bytes=100000: {cause}"):
        load_post_image(url, max_image_bytes=100_000, allow_private_urls=True)
    with pytest.raises(UnreadableImageError, match="max_image_bytes"):
        ner({"text": TEXT, "image": url}, max_image_bytes=100_000, allow_private_urls=True)
    with pytest.raises(ValueError, match="max_image_bytes: expected a positive int"):
        ner({"text": TEXT, "image": url}, max_image_bytes=0)


def test_slow_and_oversized_downloads_get_the_placeholder_when_allowed(ner, awkward_server, no_proxy, caplog):
    posts = [{"text": TEXT, "image": f"{awkward_server}/slow"}, {"text": TEXT, "image": f"{awkward_server}/huge"}]
    with caplog.at_level(logging.WARNING):
        results = ner(posts, timeout=1, max_image_bytes=100_000, allow_missing_image=True, allow_private_urls=True)
    assert results == [ner({"text": TEXT, "image": placeholder_image()})] * 2
    (message,) = [m for m in caplog.messages if "placeholder" in m]
    assert "2 of 2 posts" in message and "post 0: image:" in message and "post 1: image:" in message


# ------------------------------------------------------------------------ 5. an image header without image data

NO_IMAGE_DATA = {
    "no_idat": png_header(8, 8) + png_chunk(b"IEND", b""),
    "empty_idat": png_header(8, 8) + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b""),
    "short_idat": png_header(8, 8) + png_chunk(b"IDAT", zlib.compress(bytes(10))) + png_chunk(b"IEND", b""),
}


@pytest.mark.parametrize("kind", sorted(NO_IMAGE_DATA))
def test_a_png_without_image_data_is_unreadable_everywhere(ner, processor, tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    path.write_bytes(NO_IMAGE_DATA[kind])
    reason = check_image_file(path)
    assert reason is not None and reason.startswith("unreadable (")
    if kind == "no_idat":
        assert reason == "unreadable (it has an image header but no image data)"
    with pytest.raises(UnreadableImageError, match=rf"images\[0\]: '{path}' is not a readable image"):
        processor(images=[path])
    with pytest.raises(UnreadableImageError, match=rf"image: '{path}' is not a readable image"):
        ner({"text": TEXT, "image": str(path)})


def test_a_png_without_image_data_in_a_dataset_is_replaced_and_counted(tmp_path, caplog):
    data = write_umt_split_files(tmp_path / "data", "IMGID:good\nParis\tB-LOC\n\nIMGID:empty\nLondon\tB-LOC\n")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(images / "good.jpg", format="PNG")
    (images / "empty.jpg").write_bytes(NO_IMAGE_DATA["no_idat"])
    with pytest.raises(MissingImagesError, match=r"empty: unreadable \(it has an image header but no image data\)"):
        load_muse_dataset("twitter2017", data_dir=data, image_dir=images, cache_dir=tmp_path / "c1")
    with caplog.at_level(logging.WARNING):
        dataset = load_muse_dataset(
            "twitter2017", data_dir=data, image_dir=images, missing_images="placeholder", cache_dir=tmp_path / "c2"
        )
    assert {split: count_placeholder_images(rows) for split, rows in dataset.items()} == dict.fromkeys(dataset, 1)
    assert dataset["train"]["image_id"] == ["good", "empty"]
    assert np.asarray(dataset["train"][1]["image"]).tolist() == np.asarray(placeholder_image()).tolist()
    assert "train: replaced 1 of 2 images" in caplog.text


# ---------------------------------------------------------------------------------- 6. decompression bombs


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A valid, fully decodable 1-bit PNG of 14000 x 14000 pixels (24 kB): over twice PIL's default pixel limit."""
    side = 14000
    assert side * side > 2 * Image.MAX_IMAGE_PIXELS
    row = bytes(1 + side // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    header = png_header(side, side, bit_depth=1, colour_type=0)
    path.write_bytes(header + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_named_with_the_way_out(ner, processor, bomb):
    with pytest.raises(UnreadableImageError) as caught:
        processor(images=[Image.new("RGB", (4, 4)), bomb])
    message = str(caught.value)
    assert message.startswith(f"images[1]: '{bomb}' is refused as a possible decompression bomb")
    assert "PIL.Image.MAX_IMAGE_PIXELS" in message
    with pytest.raises(UnreadableImageError, match=r"post 1: image: .*bomb\.png' is refused as a possible"):
        ner([{"text": TEXT, "image": Image.new("RGB", (4, 4))}, {"text": TEXT, "image": str(bomb)}])
    assert check_image_file(bomb).startswith("unreadable (DecompressionBombError")


# ------------------------------------------------------------------------------------- 7. lists of posts


def test_an_error_in_a_list_names_the_post_s_position(ner, tmp_path):
    good = {"text": TEXT, "image": Image.new("RGB", (8, 8))}
    (tmp_path / "notes.png").write_text("not an image")
    cases = [
        ({"text": TEXT, "image": str(tmp_path / "absent.jpg")}, FileNotFoundError, "image: no image file at"),
        ({"text": TEXT, "image": str(tmp_path / "notes.png")}, UnreadableImageError, "image: .* is not a readable"),
        ({"text": "   ", "image": Image.new("RGB", (8, 8))}, ValueError, "text: the post's text is empty"),
        ({"text": TEXT}, ValueError, "image: the post has no image"),
        ({"text": TEXT, "image": 42}, TypeError, "image: expected a PIL image"),
        ("a string", TypeError, "inputs: expected a post"),
    ]
    for bad, error, fragment in cases:
        with pytest.raises(error, match=f"^post 2: {fragment}"):
            ner([good, good, bad, good])


def test_allow_missing_image_keeps_a_stream_going_past_broken_pictures(ner, tmp_path, bomb, caplog):
    (tmp_path / "notes.png").write_text("not an image")
    float_image = Image.fromarray(np.full((8, 8), 9.0, np.float32))
    good = [
        {"text": TEXT, "image": Image.new("RGB", (8, 8), (250, 0, 0))},
        {"text": "New York", "image": Image.new("RGB", (8, 8))},
    ]
    bad = [
        {"text": TEXT, "image": str(tmp_path / "notes.png")},
        {"text": TEXT, "image": str(tmp_path / "absent.jpg")},
        {"text": TEXT},
        {"text": TEXT, "image": str(bomb)},
        {"text": TEXT, "image": float_image},
    ]
    posts = [good[0], *bad, good[1]]
    with caplog.at_level(logging.WARNING, logger="modeling_muse.pipelines"):
        results = ner(posts, allow_missing_image=True)
    assert results[0] == ner(good[0]) and results[-1] == ner(good[1])
    placeholder_result = ner({"text": TEXT, "image": placeholder_image()})
    assert results[1:-1] == [placeholder_result] * len(bad)
    (message,) = warnings_of(caplog, "modeling_muse.pipelines")
    assert message.startswith("5 of 7 posts got a 224x224 grey placeholder instead of their image")
    reasons = ["not a readable image", "no image file", "has no image", "decompression bomb", "mode 'F'"]
    for position, fragment in enumerate(reasons, start=1):
        assert f"post {position}: image:" in message and fragment in message
    # Malformed posts are still errors: the flag is about pictures that cannot be had, not about wrong arguments.
    with pytest.raises(TypeError, match="post 1: image: expected a PIL image"):
        ner([good[0], {"text": TEXT, "image": 12345}], allow_missing_image=True)


# --------------------------------------------------------------------------------------- 8. empty lists


def test_an_empty_list_gives_an_empty_list(ner, sentiment):
    assert ner([]) == []
    assert sentiment([], top_k=None) == []


# ----------------------------------------------------------------------------- 9. which post was truncated


def test_the_truncation_warning_names_the_right_post(ner, caplog):
    long_words = [f"w{index}" for index in range(40)]
    posts = [{"text": "short post", "image": Image.new("RGB", (8, 8))}] * 2 + [
        {"text": long_words, "image": Image.new("RGB", (8, 8))}
    ]
    with caplog.at_level(logging.WARNING):
        ner(posts)
    cut = [m for m in caplog.messages if "were cut" in m]
    kept = sum(ner.processor(text=[long_words], warn=False)["word_start_mask"][0])
    assert cut == [
        f"Post 2 is longer than the model's max_text_length={TINY_LENGTH} sub-word tokens: its last "
        f"{40 - kept} of 40 words were cut (from 'w{kept}' on); words past it get no prediction."
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ner([posts[2], posts[0], posts[2]])
    (message,) = [m for m in caplog.messages if "were cut" in m]
    assert message.startswith("2 posts are longer") and "post 0: its last" in message and "post 2: its last" in message


def test_the_processor_s_truncation_warning_lists_the_posts_cut(processor, caplog):
    with caplog.at_level(logging.WARNING):
        processor(text=[["a"], ["b"] * 30, ["c"], ["d"] * 20], word_labels=[[0], [0] * 30, [0], [0] * 19 + [1]])
    (message,) = warnings_of(caplog, "modeling_muse.processing_muse")
    assert message.startswith(f"2 of 4 posts are longer than max_length={TINY_LENGTH} sub-word tokens: post 1:")
    assert "post 3: its last 6 of 20 words were cut (from 'd' on), 1 labelled entities among them" in message


# ------------------------------------------------------------------------------------ 10. URL schemes


@pytest.mark.parametrize("url", ["ftp://example.org/photo.jpg", "file:///tmp/photo.jpg", "s3://bucket/photo.jpg"])
def test_other_url_schemes_name_what_is_accepted(ner, processor, url):
    accepted = re.escape("the pipelines accept http(s):// URLs, local file paths, PIL images and uint8 numpy arrays")
    with pytest.raises(ValueError, match=rf"^image: '{url}' is a \w+:// URL; {accepted}"):
        ner({"text": TEXT, "image": url})
    with pytest.raises(ValueError, match=rf"^images\[0\]: '{url}' is a URL; MuSEProcessor reads local files"):
        processor(images=[url])


# ---------------------------------------------------------------------------------------- EXIF orientation


def test_exif_orientation_is_applied_as_datasets_does(ner, tmp_path):
    # A 40x20 photo stored sideways: its EXIF orientation 6 says "rotate 90 degrees clockwise to show".
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, exif=exif, quality=95)
    upright = load_rgb_image(path)
    assert upright.size == (20, 40)
    assert np.asarray(upright)[2, 10].tolist() == pytest.approx([0, 0, 255], abs=40)  # blue is now on top
    with Image.open(path) as opened:
        assert load_rgb_image(opened).size == (20, 40)
    buffer = io.BytesIO()
    upright.save(buffer, format="PNG")
    assert ner({"text": TEXT, "image": str(path)}) == ner({"text": TEXT, "image": upright})
