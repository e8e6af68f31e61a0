"""Tests of datasets_scripts: UMT parsing, MVSA preprocessing, image policies, Parquet export, samples.

All fixtures are generated under tmp_path and every builder gets a tmp_path cache_dir, so nothing
touches ~/.cache. Tests on the real Twitter-2017 text files skip when ../shared is absent.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from datasets_scripts import (
    MVSA_LABELS,
    SAMPLE_DIR,
    TWITTER2017_LABELS,
    MissingImagesError,
    MVSAFormatError,
    UMTFormatError,
    UMTNerBuilder,
    count_placeholder_images,
    load_muse_dataset,
)
from datasets_scripts.export import main as export_main
from datasets_scripts.images import PLACEHOLDER_COLOR, PLACEHOLDER_SIZE, check_image_file
from datasets_scripts.make_mvsa_sample import write_mvsa_sample
from datasets_scripts.mvsa import fuse_labels, majority_label, read_mvsa_text, split_8_1_1
from datasets_scripts.umt import PUBLISHED_SPLIT_SIZES, labels_from_tags, read_umt_file

REAL_TWITTER2017 = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter2017"
needs_real_twitter2017 = pytest.mark.skipif(
    not (REAL_TWITTER2017 / "train.txt").is_file(),
    reason=f"the real Twitter-2017 text files are not at {REAL_TWITTER2017}",
)


# ---------------------------------------------------------------------------------------------
# helpers


def write_jpeg(path: Path, colour: tuple[int, int, int], noisy: bool = False) -> Path:
    """A 32x32 JPEG of one colour, or a 64x64 noisy one (big enough to truncate meaningfully)."""
    if noisy:
        pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    else:
        image = Image.new("RGB", (32, 32), colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=95)
    return path


def write_umt(folder: Path, train: str, valid: str = "IMGID:v1\nx\tO\n", test: str = "IMGID:t1\ny\tO\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        (folder / name).write_text(text, encoding="utf-8", newline="")
    return folder


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def is_placeholder(image: Image.Image) -> bool:
    array = pixels(image)
    return image.size == PLACEHOLDER_SIZE and bool((array == np.array(PLACEHOLDER_COLOR)).all())


# ---------------------------------------------------------------------------------------------
# UMT format on the real Twitter-2017 files


@needs_real_twitter2017
def test_real_twitter2017_counts_and_label_set(tmp_path: Path) -> None:
    dataset = load_muse_dataset(
        "twitter2017", data_dir=REAL_TWITTER2017, missing_images="placeholder", cache_dir=tmp_path
    )
    assert {split: len(rows) for split, rows in dataset.items()} == {"train": 3373, "validation": 723, "test": 723}
    assert {split: len(rows) for split, rows in dataset.items()} == PUBLISHED_SPLIT_SIZES["twitter2017"]
    expected = {"O"} | {f"{prefix}-{entity}" for prefix in "BI" for entity in ("PER", "LOC", "ORG", "MISC")}
    names = dataset["train"].features["ner_tags"].feature.names
    assert set(names) == expected and names[0] == "O" and len(names) == 9
    used = set()
    for rows in dataset.values():
        for tokens, tags in zip(rows["tokens"], rows["ner_tags"], strict=True):
            assert len(tokens) == len(tags) > 0
            used.update(names[tag] for tag in tags)
    assert used == expected


@needs_real_twitter2017
def test_real_twitter2017_inferred_labels_are_the_fixed_set() -> None:
    files = [REAL_TWITTER2017 / f"{name}.txt" for name in ("train", "valid", "test")]
    inferred = labels_from_tags(tag for path in files for post in read_umt_file(path) for tag in post.tags)
    assert inferred[0] == "O" and sorted(inferred) == sorted(TWITTER2017_LABELS)


# ---------------------------------------------------------------------------------------------
# UMT format: parsing rules on generated fixtures


def test_umt_parsing_handles_bom_crlf_whitespace_chinese_and_empty_posts(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_bytes(
        (
            "\ufeffIMGID:a1\r\n"
            "Hello\tO  \r\n"
            "Kawhi\tB-PER\t\r\n"
            "Leonard\tI-PER \t \r\n"
            "\r\n"
            "IMGID:a2\r\n"
            "\r\n"
            "IMGID:a3\n"
            "北\tB-LOC\n京\tI-LOC\n很\tO\n好\tO\n"
            "a\u2028b\tO\n"
            " \t \n"
            "\n\n"
            "IMGID:a4\n"
            "IMGID:a5\n"
            "x\tO"
        ).encode("utf-8")
    )
    posts = read_umt_file(path, TWITTER2017_LABELS)
    assert [(post.image_id, post.tokens, post.tags, post.line) for post in posts] == [
        ("a1", ("Hello", "Kawhi", "Leonard"), ("O", "B-PER", "I-PER"), 1),
        ("a2", (), (), 6),
        ("a3", ("北", "京", "很", "好", "a\u2028b"), ("B-LOC", "I-LOC", "O", "O", "O"), 8),
        ("a4", (), (), 17),
        ("a5", ("x",), ("O",), 18),
    ]


def test_umt_parsing_reads_any_mix_of_line_endings_and_a_bom_from_concatenation(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    # Old-Mac CR, CRLF and LF line endings in one file, and a second file's BOM where two files were concatenated.
    path.write_bytes("IMGID:a\rKawhi\tB-PER\r\nLeonard\tI-PER\n\r\ufeffIMGID:b\rx\u2028y\tO\r\n".encode())
    posts = read_umt_file(path, TWITTER2017_LABELS)
    assert [(post.image_id, post.tokens, post.tags, post.line) for post in posts] == [
        ("a", ("Kawhi", "Leonard"), ("B-PER", "I-PER"), 1),
        ("b", ("x\u2028y",), ("O",), 5),
    ]
    path.write_bytes(b"IMGID:a\rx\tO\ry\tB-FOO\r")
    with pytest.raises(UMTFormatError, match=r"train\.txt:3: unknown tag 'B-FOO'"):
        read_umt_file(path, TWITTER2017_LABELS)
    path.write_bytes(b"IMGID:a\rx\tO\r\ncaf\xe9\tO\n")
    with pytest.raises(UMTFormatError, match=r"train\.txt:3: not valid UTF-8"):
        read_umt_file(path, TWITTER2017_LABELS)


@pytest.mark.parametrize(
    ("content", "line", "fragments"),
    [
        (b"IMGID:a\nfoo bar O\n", 2, ["token line without a TAB", "'foo bar O'"]),
        (b"IMGID:a\nfoo\tB-FOO\n", 2, ["unknown tag 'B-FOO'", "B-MISC, I-MISC", "'umt' configuration", "labels="]),
        (b"foo\tO\nIMGID:a\n", 1, ["before the first IMGID line"]),
        (b"IMGID:a\nx\tO\n\ny\tO\n", 4, ["after a blank line"]),
        (b"IMGID:a\nx\tO\tO\n", 2, ["with 2 TABs"]),
        (b"IMGID:a\n\tO\n", 2, ["empty token"]),
        (b"IMGID:\nx\tO\n", 1, ["invalid image id"]),
        (b"IMGID:a b\nx\tO\n", 1, ["invalid image id"]),
        (b"IMGID:a\nx\tO\ncaf\xe9\tO\n", 3, ["not valid UTF-8"]),
    ],
)
def test_umt_parsing_rejects_with_file_and_line(
    tmp_path: Path, content: bytes, line: int, fragments: list[str]
) -> None:
    path = tmp_path / "train.txt"
    path.write_bytes(content)
    with pytest.raises(UMTFormatError) as caught:
        read_umt_file(path, TWITTER2017_LABELS)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert (caught.value.path, caught.value.line) == (str(path), line)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_builder_reports_format_errors_unwrapped(tmp_path: Path) -> None:
    data = write_umt(tmp_path / "data", "IMGID:a\nfoo\tB-PER\n\nIMGID:b\nbar\tB-PRODUCT\n")
    with pytest.raises(UMTFormatError, match=r"train\.txt:5: unknown tag 'B-PRODUCT'"):
        load_muse_dataset("twitter2017", data_dir=data, missing_images="placeholder", cache_dir=tmp_path / "cache")


def test_labels_from_tags_orders_o_first_then_by_type() -> None:
    assert labels_from_tags(["I-PROD", "B-ORG", "B-PROD", "O", "I-ORG", "E-ORG"]) == (
        "O",
        "B-ORG",
        "I-ORG",
        "E-ORG",
        "B-PROD",
        "I-PROD",
    )
    assert labels_from_tags(["B-X"]) == ("O", "B-X")


def test_umt_config_labels_from_data_or_user(tmp_path: Path) -> None:
    data = write_umt(
        tmp_path / "data", "IMGID:a\n手\tB-PROD\n机\tI-PROD\n好\tO\n", valid="IMGID:b\n", test="IMGID:c\n"
    )
    inferred = load_muse_dataset("umt", data_dir=data, missing_images="placeholder", cache_dir=tmp_path / "c1")
    assert inferred["train"].features["ner_tags"].feature.names == ["O", "B-PROD", "I-PROD"]
    assert inferred["train"][0]["ner_tags"] == [1, 2, 0]
    assert inferred["validation"][0]["tokens"] == [] and inferred["validation"][0]["ner_tags"] == []

    given = ["O", "B-PROD", "I-PROD", "B-BRAND", "I-BRAND"]
    dataset = load_muse_dataset(
        "umt", data_dir=data, labels=given, missing_images="placeholder", cache_dir=tmp_path / "c2"
    )
    assert dataset["train"].features["ner_tags"].feature.names == given

    with pytest.raises(ValueError, match="start with 'O'"):
        load_muse_dataset("umt", data_dir=data, labels=["B-PROD", "I-PROD", "O"], cache_dir=tmp_path / "c3")
    with pytest.raises(UMTFormatError, match="unknown tag 'B-PROD'"):
        load_muse_dataset(
            "umt", data_dir=data, labels=["O", "B-X"], missing_images="placeholder", cache_dir=tmp_path / "c4"
        )
    with pytest.raises(ValueError, match="only accepted for the 'umt' dataset"):
        load_muse_dataset("twitter2017", data_dir=data, labels=given, cache_dir=tmp_path / "c5")
    with pytest.raises(ValueError, match="fixed label set"):
        UMTNerBuilder(
            config_name="twitter2017", data_dir=str(data), labels=("O", "B-X"), cache_dir=str(tmp_path / "c6")
        )


def test_umt_config_uses_only_present_split_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("IMGID:a\nx\tB-T\n", encoding="utf-8")
    (data / "test.txt").write_text("IMGID:b\ny\tO\n", encoding="utf-8")
    dataset = load_muse_dataset("umt", data_dir=data, missing_images="placeholder", cache_dir=tmp_path / "cache")
    assert sorted(dataset) == ["test", "train"]
    with pytest.raises(FileNotFoundError, match=r"valid\.txt"):
        load_muse_dataset("twitter2017", data_dir=data, missing_images="placeholder", cache_dir=tmp_path / "cache")


def test_builder_used_directly(tmp_path: Path) -> None:
    data = write_umt(tmp_path / "data", "IMGID:a\nKawhi\tB-PER\n")
    builder = UMTNerBuilder(
        config_name="twitter2017", data_dir=str(data), missing_images="placeholder", cache_dir=str(tmp_path / "cache")
    )
    builder.download_and_prepare()
    dataset = builder.as_dataset()
    assert dataset["train"][0]["ner_tags"] == [TWITTER2017_LABELS.index("B-PER")]
    assert dataset["train"].features["image"] == datasets.Image()
    assert str(tmp_path / "cache") in builder.cache_dir
    with pytest.raises(ValueError, match="Pass config_name="):
        UMTNerBuilder(data_dir=str(data), cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------
# images: checks and the two policies


def test_check_image_file_detects_missing_empty_corrupt_and_truncated(tmp_path: Path) -> None:
    good = write_jpeg(tmp_path / "good.jpg", (10, 200, 30))
    noisy = write_jpeg(tmp_path / "noisy.jpg", (0, 0, 0), noisy=True)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(noisy.read_bytes()[: noisy.stat().st_size // 2])
    with Image.open(truncated) as image:
        image.verify()  # the header check alone does not notice the truncation
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "html.jpg").write_bytes(b"<html>not an image</html>")
    png = tmp_path / "png.jpg"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png, format="PNG")
    broken_png = tmp_path / "broken_png.jpg"
    broken_png.write_bytes(png.read_bytes()[:-20])

    assert check_image_file(good) is None
    assert check_image_file(png) is None
    assert check_image_file(tmp_path / "absent.jpg") == "missing"
    assert check_image_file(tmp_path / "empty.jpg") == "unreadable (empty file)"
    assert check_image_file(tmp_path / "html.jpg").startswith("unreadable (UnidentifiedImageError")
    assert "truncated" in check_image_file(truncated)
    assert check_image_file(broken_png).startswith("unreadable")


def test_check_image_file_decodes_what_header_checks_miss(tmp_path: Path) -> None:
    good = write_jpeg(tmp_path / "good.jpg", (10, 200, 30))
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(good.read_bytes() + b"\x00" * 100)
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(good.read_bytes() + b"EXTRA")
    for path in (good, padded, trailing):
        assert check_image_file(path) is None
    # A JPEG whose frame header claims to be longer than it is, swallowing the next segment: both ends intact.
    data = bytearray(good.read_bytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 2 : frame + 4] = (80).to_bytes(2, "big")
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(bytes(data))
    assert damaged.read_bytes().rstrip(b"\x00").endswith(b"\xff\xd9")
    with Image.open(damaged) as image:
        image.verify()  # the header check alone does not notice
    assert check_image_file(damaged) == "unreadable (OSError: broken data stream when reading image file)"


@pytest.fixture
def twitter_with_images(tmp_path: Path) -> tuple[Path, Path]:
    """UMT data whose train split has one good, one missing, one corrupt and one truncated image."""
    data = write_umt(
        tmp_path / "data",
        "IMGID:good\nA\tB-PER\n\nIMGID:gone\nB\tO\n\nIMGID:corrupt\nC\tO\n\nIMGID:cut\nD\tB-LOC\n",
        valid="IMGID:v1\nE\tO\n",
        test="IMGID:t1\nF\tO\n",
    )
    images = tmp_path / "images"
    write_jpeg(images / "good.jpg", (200, 20, 20))
    write_jpeg(images / "v1.jpg", (20, 200, 20))
    write_jpeg(images / "t1.jpg", (20, 20, 200))
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8 garbage")
    noisy = write_jpeg(tmp_path / "noisy.jpg", (0, 0, 0), noisy=True)
    (images / "cut.jpg").write_bytes(noisy.read_bytes()[:1500])
    return data, images


def test_missing_images_error_policy_lists_ids_and_names_the_switch(tmp_path: Path, twitter_with_images) -> None:
    data, images = twitter_with_images
    with pytest.raises(MissingImagesError) as caught:
        load_muse_dataset("twitter2017", data_dir=data, image_dir=images, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "3 of 6 images are missing or unreadable (train: 3)" in message
    assert f"gone: missing ({images / 'gone.jpg'})" in message
    assert "corrupt: unreadable" in message and "cut: unreadable" in message and "truncated" in message
    assert "good:" not in message
    assert f"image_dir={images}" in message
    assert "missing_images='placeholder'" in message and "--missing_images placeholder" in message


def test_no_image_dir_under_error_policy(tmp_path: Path) -> None:
    data = write_umt(tmp_path / "data", "IMGID:a\nx\tO\n")
    with pytest.raises(MissingImagesError, match=r"no image_dir was given, so all 3 images are missing") as caught:
        load_muse_dataset("twitter2017", data_dir=data, cache_dir=tmp_path / "cache")
    assert "image_dir=" in str(caught.value) and "missing_images='placeholder'" in str(caught.value)


def test_placeholder_policy_replaces_counts_and_logs_once_per_split(
    tmp_path: Path, twitter_with_images, caplog: pytest.LogCaptureFixture
) -> None:
    data, images = twitter_with_images
    with caplog.at_level(logging.WARNING, logger="datasets_scripts"):
        dataset = load_muse_dataset(
            "twitter2017", data_dir=data, image_dir=images, missing_images="placeholder", cache_dir=tmp_path / "cache"
        )
    replaced = [record.getMessage() for record in caplog.records if "placeholder" in record.getMessage()]
    assert len(replaced) == 1 and "train: replaced 3 of 4 images" in replaced[0]

    train = dataset["train"]
    assert train["image_id"] == ["good", "gone", "corrupt", "cut"]  # nothing dropped
    assert count_placeholder_images(train) == 3
    assert count_placeholder_images(dataset["validation"]) == 0
    assert not is_placeholder(train[0]["image"])
    assert pixels(train[0]["image"])[16, 16].tolist() == pytest.approx([200, 20, 20], abs=3)
    assert all(is_placeholder(train[index]["image"]) for index in (1, 2, 3))

    # A cache hit repeats the count, since the build-time message does not come again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datasets_scripts"):
        load_muse_dataset(
            "twitter2017", data_dir=data, image_dir=images, missing_images="placeholder", cache_dir=tmp_path / "cache"
        )
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "from the cache" in messages[0] and "3 of 4 images" in messages[0]


def test_cache_is_rebuilt_when_images_arrive(tmp_path: Path) -> None:
    data = write_umt(tmp_path / "data", "IMGID:a\nx\tO\n")
    images = tmp_path / "images"
    images.mkdir()
    kwargs = {"data_dir": data, "image_dir": images, "missing_images": "placeholder", "cache_dir": tmp_path / "cache"}
    assert count_placeholder_images(load_muse_dataset("twitter2017", **kwargs)["train"]) == 1
    write_jpeg(images / "a.jpg", (0, 0, 0))
    assert count_placeholder_images(load_muse_dataset("twitter2017", **kwargs)["train"]) == 0


def test_invalid_policy_and_names(tmp_path: Path) -> None:
    data = write_umt(tmp_path / "data", "IMGID:a\nx\tO\n")
    with pytest.raises(ValueError, match="missing_images must be one of"):
        load_muse_dataset("twitter2017", data_dir=data, missing_images="skip", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="Unknown dataset 'twitter2019'"):
        load_muse_dataset("twitter2019", data_dir=data)
    with pytest.raises(ValueError, match="takes no data_dir"):
        load_muse_dataset("twitter2017_sample", data_dir=data)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_muse_dataset("twitter2015")


# ---------------------------------------------------------------------------------------------
# MVSA


def test_majority_and_fusion_rules() -> None:
    assert majority_label(["positive"]) == "positive"
    assert majority_label(["neutral", "positive", "neutral"]) == "neutral"
    assert majority_label(["negative", "negative", "negative"]) == "negative"
    assert majority_label(["positive", "neutral", "negative"]) is None
    expected = {
        ("positive", "positive"): "positive",
        ("neutral", "neutral"): "neutral",
        ("negative", "negative"): "negative",
        ("neutral", "positive"): "positive",
        ("positive", "neutral"): "positive",
        ("neutral", "negative"): "negative",
        ("negative", "neutral"): "negative",
        ("positive", "negative"): None,
        ("negative", "positive"): None,
    }
    assert {pair: fuse_labels(*pair) for pair in expected} == expected


def write_mvsa(
    folder: Path, header: str, rows: list[str], with_images: bool = True, skip_text: tuple[str, ...] = ()
) -> Path:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    (folder / "labelResultAll.txt").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    for row in rows:
        post_id = row.split("\t")[0]
        if post_id not in skip_text:
            (data / f"{post_id}.txt").write_text(f"post {post_id}", encoding="utf-8")
        if with_images:
            write_jpeg(data / f"{post_id}.jpg", (int(post_id) % 256, 0, 0))
    return folder


def all_rows(dataset: datasets.DatasetDict) -> dict[str, tuple[str, str, str]]:
    names = MVSA_LABELS
    return {
        row["id"]: (names[row["label"]], names[row["text_label"]], names[row["image_label"]])
        for split in dataset.values()
        for row in split.select_columns(["id", "label", "text_label", "image_label"])
    }


def test_mvsa_single_consistency_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        "1\tpositive,positive",
        "2\tneutral,neutral",
        "3\tnegative,negative",
        "4\tneutral,positive",
        "5\tpositive,neutral",
        "6\tneutral,negative",
        "7\tnegative,neutral",
        "8\tpositive,negative",
        "9\tnegative,positive",
        "10\tPositive,NEUTRAL",
        "11\tpositive,positive",
    ]
    folder = write_mvsa(tmp_path / "single", "ID\ttext,image", rows, skip_text=("11",))
    with caplog.at_level(logging.WARNING, logger="datasets_scripts"):
        dataset = load_muse_dataset("mvsa_single", data_dir=folder, cache_dir=tmp_path / "cache")
    assert all_rows(dataset) == {
        "1": ("positive", "positive", "positive"),
        "2": ("neutral", "neutral", "neutral"),
        "3": ("negative", "negative", "negative"),
        "4": ("positive", "neutral", "positive"),
        "5": ("positive", "positive", "neutral"),
        "6": ("negative", "neutral", "negative"),
        "7": ("negative", "negative", "neutral"),
        "10": ("positive", "positive", "neutral"),
    }
    summary = "kept 8 posts (train 6, validation 0, test 2, seed 42) and dropped 3: no_majority_text 0, "
    summary += "no_majority_image 0, no_majority_text_and_image 0, positive_vs_negative 2, missing_text 1."
    assert any(summary in record.getMessage() for record in caplog.records)
    assert summary in dataset["train"].info.description
    # datasets cannot hold a split of zero rows: it is left out, with a warning.
    assert sorted(dataset) == ["test", "train"]
    assert any("the validation split has no posts and is left out" in record.getMessage() for record in caplog.records)
    row = dataset["train"].filter(lambda example: example["id"] == "4")[0]
    assert row["text"] == "post 4" and pixels(row["image"])[0, 0, 0] == pytest.approx(4, abs=3)
    assert dataset["train"].features["label"].names == ["positive", "neutral", "negative"]


def test_mvsa_multiple_majority_then_consistency(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        "101\tpositive,positive\tpositive,neutral\tnegative,positive",
        "102\tneutral,negative\tneutral,negative\tpositive,neutral",
        "103\tpositive,positive\tneutral,neutral\tnegative,negative",
        "104\tpositive,neutral\tneutral,neutral\tnegative,neutral",
        "105\tpositive,positive\tpositive,neutral\tpositive,negative",
        "106\tpositive,negative\tpositive,negative\tneutral,neutral",
        "107\tnegative,neutral\tnegative,neutral\tnegative,neutral",
        "108\tneutral,neutral\tneutral,positive\tneutral,neutral",
        "109\tneutral,positive\tpositive,positive\tneutral,positive",
    ]
    folder = write_mvsa(tmp_path / "multiple", "ID\ttext,image\ttext,image\ttext,image", rows)
    with caplog.at_level(logging.WARNING, logger="datasets_scripts"):
        dataset = load_muse_dataset("mvsa_multiple", data_dir=folder, cache_dir=tmp_path / "cache")
    assert all_rows(dataset) == {
        "101": ("positive", "positive", "positive"),
        "102": ("negative", "neutral", "negative"),
        "107": ("negative", "negative", "neutral"),
        "108": ("neutral", "neutral", "neutral"),
        "109": ("positive", "neutral", "positive"),
    }
    assert any(
        "dropped 4: no_majority_text 1, no_majority_image 1, no_majority_text_and_image 1, positive_vs_negative 1, "
        "missing_text 0." in record.getMessage()
        for record in caplog.records
    )


@pytest.mark.parametrize(
    ("header", "row", "line", "fragment"),
    [
        ("text,image", "1\tpositive,positive", 1, "header line starting with 'ID'"),
        ("ID\ttext,image", "1\tpositive,positive\tpositive,positive", 2, "expected 1 annotator column(s)"),
        ("ID\ttext,image", "1\tpositive;positive", 2, "expected 'text_label,image_label'"),
        ("ID\ttext,image", "1\thappy,positive", 2, "expected 'text_label,image_label'"),
    ],
)
def test_mvsa_label_file_errors(tmp_path: Path, header: str, row: str, line: int, fragment: str) -> None:
    folder = write_mvsa(tmp_path / "single", header, [row], with_images=False)
    with pytest.raises(MVSAFormatError) as caught:
        load_muse_dataset("mvsa_single", data_dir=folder, cache_dir=tmp_path / "cache")
    assert str(caught.value).startswith(f"{folder / 'labelResultAll.txt'}:{line}: ")
    assert fragment in str(caught.value)


def test_mvsa_duplicate_id_and_multiple_column_count(tmp_path: Path) -> None:
    folder = write_mvsa(tmp_path / "dup", "ID\ttext,image", ["1\tpositive,positive", "1\tneutral,neutral"], False)
    with pytest.raises(MVSAFormatError, match=r":3: duplicate ID '1'"):
        load_muse_dataset("mvsa_single", data_dir=folder, cache_dir=tmp_path / "cache")
    folder = write_mvsa(tmp_path / "multi", "ID\ttext,image", ["1\tpositive,positive\tpositive,positive"], False)
    with pytest.raises(MVSAFormatError, match="expected 3 annotator column"):
        load_muse_dataset("mvsa_multiple", data_dir=folder, cache_dir=tmp_path / "cache")


def test_mvsa_text_decoding(tmp_path: Path) -> None:
    cases = {
        "utf8_bom_crlf.txt": ("\ufeffcafé ’ ok\r\nline two\r\n".encode(), "café ’ ok\nline two"),
        "cp1252.txt": (b"caf\xe9 \x93quoted\x94 it\x92s \x80 5", "café “quoted” it’s € 5"),
        "latin1_unassigned.txt": (b"a\x81b\x8dc \xe9", "a\x81b\x8dc é"),
    }
    for name, (raw, expected) in cases.items():
        (tmp_path / name).write_bytes(raw)
        assert read_mvsa_text(tmp_path / name) == expected


def test_split_8_1_1_sizes_and_seed() -> None:
    items = [f"id{index}" for index in range(25)]
    split = split_8_1_1(items, seed=0)
    assert [len(split[name]) for name in ("train", "validation", "test")] == [20, 2, 3]
    assert sorted(item for part in split.values() for item in part) == sorted(items)
    assert all(part == sorted(part, key=items.index) for part in split.values())  # file order kept
    assert split_8_1_1(items, seed=0) == split
    assert split_8_1_1(items, seed=1) != split
    assert [len(part) for part in split_8_1_1(list(range(4511)), 0).values()] == [3608, 451, 452]
    assert [len(part) for part in split_8_1_1(list(range(9)), 0).values()] == [7, 0, 2]


def test_mvsa_split_same_for_same_seed_and_different_for_another(tmp_path: Path) -> None:
    rows = [f"{index}\tpositive,positive" for index in range(1, 31)]
    folder = write_mvsa(tmp_path / "single", "ID\ttext,image", rows, with_images=False)

    def train_ids(seed: int, cache: str) -> list[str]:
        dataset = load_muse_dataset(
            "mvsa_single", data_dir=folder, seed=seed, missing_images="placeholder", cache_dir=tmp_path / cache
        )
        assert [len(dataset[name]) for name in ("train", "validation", "test")] == [24, 3, 3]
        return dataset["train"]["id"]

    first = train_ids(1, "a")
    assert train_ids(1, "b") == first  # separate caches: really rebuilt
    assert train_ids(2, "a") != first


# ---------------------------------------------------------------------------------------------
# Parquet export


def test_parquet_round_trip_and_push_only_when_asked(
    tmp_path: Path, twitter_with_images, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, images = twitter_with_images
    pushed: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        datasets.DatasetDict, "push_to_hub", lambda self, repo_id, private=False: pushed.append((repo_id, private))
    )
    arguments = ["twitter2017", "--data_dir", str(data), "--image_dir", str(images), "--missing_images", "placeholder"]
    arguments += ["--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "parquet")]
    written = export_main(arguments)
    assert pushed == []
    assert written == {split: tmp_path / "parquet" / f"{split}.parquet" for split in ("train", "validation", "test")}

    original = load_muse_dataset(
        "twitter2017", data_dir=data, image_dir=images, missing_images="placeholder", cache_dir=tmp_path / "cache"
    )
    expected = {split: [dict(row, image=pixels(row["image"])) for row in rows] for split, rows in original.items()}
    shutil.rmtree(images)  # the Parquet files must not need the image folder
    loaded = datasets.load_dataset(
        "parquet", data_files={split: str(path) for split, path in written.items()}, cache_dir=str(tmp_path / "pq")
    )
    for split, rows in loaded.items():
        # Features (ClassLabel names, Image) come back from the Parquet schema metadata.
        assert rows.features == original[split].features
        assert rows.features["ner_tags"].feature.names == list(TWITTER2017_LABELS)
        assert count_placeholder_images(rows) == count_placeholder_images(original[split])
        for got, want in zip(rows, expected[split], strict=True):
            assert {key: got[key] for key in ("id", "image_id", "tokens", "ner_tags")} == {
                key: want[key] for key in ("id", "image_id", "tokens", "ner_tags")
            }
            assert np.array_equal(pixels(got["image"]), want["image"])

    export_main([*arguments, "--push_to_hub", "user/repo", "--private"])
    assert pushed == [("user/repo", True)]


# ---------------------------------------------------------------------------------------------
# bundled samples


def test_twitter2017_sample_loads_with_placeholders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="datasets_scripts"):
        dataset = load_muse_dataset("twitter2017_sample", cache_dir=tmp_path)
    assert {split: len(rows) for split, rows in dataset.items()} == {"train": 300, "validation": 60, "test": 60}
    assert all(count_placeholder_images(rows) == len(rows) for rows in dataset.values())
    assert is_placeholder(dataset["test"][0]["image"])
    assert any("bundled sample ships without images" in record.getMessage() for record in caplog.records)
    assert dataset["train"].features["ner_tags"].feature.names == list(TWITTER2017_LABELS)
    with pytest.raises(MissingImagesError, match="no image_dir was given"):
        load_muse_dataset("twitter2017_sample", missing_images="error", cache_dir=tmp_path)


@needs_real_twitter2017
def test_twitter2017_sample_is_a_byte_exact_prefix_of_the_real_files() -> None:
    for name, posts in (("train", 300), ("valid", 60), ("test", 60)):
        sample = (SAMPLE_DIR / "twitter2017" / f"{name}.txt").read_bytes()
        assert (REAL_TWITTER2017 / f"{name}.txt").read_bytes().startswith(sample)
        assert sample.count(b"IMGID:") == posts and sample.endswith(b"\n\n")


def test_mvsa_single_sample_loads_and_is_learnable(tmp_path: Path) -> None:
    dataset = load_muse_dataset("mvsa_single_sample", cache_dir=tmp_path)
    assert {split: len(rows) for split, rows in dataset.items()} == {"train": 110, "validation": 13, "test": 15}
    assert all(count_placeholder_images(rows) == 0 for rows in dataset.values())
    blue_minus_red = {label: [] for label in MVSA_LABELS}
    for row in dataset["train"]:
        assert row["image"].size == (64, 64)
        mean = pixels(row["image"]).reshape(-1, 3).mean(axis=0)
        blue_minus_red[MVSA_LABELS[row["image_label"]]].append(mean[2] - mean[0])
    # Image colour follows the image label: negative is blue, positive is warm, neutral in between.
    assert max(blue_minus_red["positive"]) < min(blue_minus_red["neutral"])
    assert max(blue_minus_red["neutral"]) < min(blue_minus_red["negative"])
    texts = {MVSA_LABELS[row["text_label"]]: row["text"] for row in dataset["train"]}
    assert len(texts) == 3 and all(text for text in texts.values())
    assert any("café" in text for text in dataset["train"]["text"])  # the Windows-1252 files decode


def test_mvsa_sample_generator_is_deterministic(tmp_path: Path) -> None:
    regenerated = write_mvsa_sample(tmp_path / "sample")
    bundled = SAMPLE_DIR / "mvsa_single"
    assert (regenerated / "labelResultAll.txt").read_bytes() == (bundled / "labelResultAll.txt").read_bytes()
    names = sorted(path.name for path in (bundled / "data").iterdir())
    assert names == sorted(path.name for path in (regenerated / "data").iterdir())
    for name in names:
        if name.endswith(".txt"):
            assert (regenerated / "data" / name).read_bytes() == (bundled / "data" / name).read_bytes()
        else:
            with Image.open(regenerated / "data" / name) as new, Image.open(bundled / "data" / name) as old:
                assert np.abs(pixels(new).astype(int) - pixels(old).astype(int)).max() <= 2
    total = sum(path.stat().st_size for path in bundled.rglob("*") if path.is_file())
    assert total < 1_000_000
