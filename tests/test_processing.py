import logging

import numpy as np
import pytest
from PIL import Image

from processing_muse import MuSEProcessor, load_rgb_image, split_words_with_offsets
from tiny_models import NER_LABELS, TINY_LENGTH, tiny_processor


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def first_subtokens(processor, encoding, index=0):
    ids = encoding["input_ids"][index]
    starts = encoding["word_start_mask"][index]
    return [processor.tokenizer.convert_ids_to_tokens(int(i)) for i, s in zip(ids, starts) if s]


def test_labels_align_to_first_subtokens_of_hard_words():
    processor = tiny_processor(max_length=64)
    words = ["RT", "@barackobama", ":", "unbelievable", "😀", "https://t.co/xyz", "#MuSE2023", "北京", "!"]
    labels = [0, 1, 0, 0, 0, 0, 3, 3, 0]
    encoding = processor(text=[words], word_labels=[labels])
    tokens = processor.tokenizer.convert_ids_to_tokens(encoding["input_ids"][0])
    starts = encoding["word_start_mask"][0]
    assert sum(starts) == len(words)
    assert [label for label in encoding["labels"][0] if label != -100] == labels
    assert all((label != -100) == bool(start) for label, start in zip(encoding["labels"][0], starts))
    assert first_subtokens(processor, encoding) == ["rt", "@", ":", "unbelievable", "[UNK]", "https", "#", "北", "!"]
    # Padded to the post's own length, or with padding="max_length" to max_length.
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) == 28
    fixed = processor(text=[words], word_labels=[labels], padding="max_length")
    assert len(fixed["input_ids"][0]) == 64 and fixed["input_ids"][0][:28] == encoding["input_ids"][0]
    assert fixed["labels"][0][:28] == encoding["labels"][0] and set(fixed["labels"][0][28:]) == {-100}
    # Continuation pieces of a word are not starts: "@barackobama" is '@', 'barack', '##oba', '##ma'.
    assert starts[2:6] == [1, 0, 0, 0]


def test_raw_strings_split_on_whitespace_and_match_pre_split_words(processor):
    text = "  Obama   visits\tParis "
    assert split_words_with_offsets(text) == (["Obama", "visits", "Paris"], [(2, 7), (10, 16), (17, 22)])
    raw = processor(text=text)
    split = processor(text=["Obama", "visits", "Paris"], is_split_into_words=True)
    assert raw["input_ids"] == split["input_ids"] and raw["word_start_mask"] == split["word_start_mask"]
    batch = processor(text=[text, "hello"])
    assert len(batch["input_ids"]) == 2


def test_empty_post_has_no_words(processor):
    encoding = processor(text=[""], word_labels=[[]])
    assert sum(encoding["word_start_mask"][0]) == 0
    assert set(encoding["labels"][0]) == {-100}
    assert sum(encoding["attention_mask"][0]) == 2  # [CLS] [SEP]


def test_words_without_subtokens_keep_their_label(processor):
    encoding = processor(text=[["a", "\u200d", "b"]], word_labels=[[1, 2, 0]])
    assert [label for label in encoding["labels"][0] if label != -100] == [1, 2, 0]


def test_string_labels_map_through_label_names(processor):
    encoding = processor(text=[["Obama", "spoke"]], word_labels=[["B-PER", "O"]])
    assert [label for label in encoding["labels"][0] if label != -100] == [1, 0]
    with pytest.raises(ValueError, match="word_labels"):
        processor(text=[["Obama"]], word_labels=[["B-XYZ"]])


def test_truncation_warns_with_words_and_entities_cut(processor, caplog):
    words = ["word"] * 13 + ["Barack", "Obama", "in", "Paris"]
    labels = [0] * 13 + [1, 2, 0, 3]
    with caplog.at_level(logging.WARNING, logger="processing_muse"):
        encoding = processor(text=[words], word_labels=[labels])
    kept = sum(encoding["word_start_mask"][0])
    assert kept == TINY_LENGTH - 2
    message = caplog.records[-1].getMessage()
    assert f"last {len(words) - kept} of {len(words)} words were cut" in message
    assert "from 'Obama' on" in message
    assert "2 labelled entities" in message  # "Obama" (the cut half of "Barack Obama") and "Paris"


def test_label_count_mismatch_names_word_labels(processor):
    with pytest.raises(ValueError, match="word_labels: post 0 has 2 words but 1 labels"):
        processor(text=[["a", "b"]], word_labels=[[0]])


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_image_modes_become_rgb(processor, mode):
    image = Image.new("RGB", (20, 12), (250, 120, 30)).convert(mode)
    converted = load_rgb_image(image)
    assert converted.mode == "RGB" and converted.size == (20, 12)
    encoding = processor(images=[image], return_tensors="np")
    assert encoding["pixel_values"].shape == (1, 3, 32, 32)


def test_palette_transparency_and_numpy_inputs(processor):
    palette = Image.new("P", (8, 8))
    palette.info["transparency"] = 0
    assert load_rgb_image(palette).mode == "RGB"
    gray = np.full((10, 10), 200, dtype=np.uint8)
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    encoding = processor(images=[gray, rgba, np.zeros((5, 5, 1), dtype=np.uint8)], return_tensors="np")
    assert encoding["pixel_values"].shape == (3, 3, 32, 32)


def test_decoder_copy_is_32x32_on_the_8_bit_grid(processor):
    image = Image.new("RGB", (64, 64), (0, 255, 128))
    decoder = processor(images=image, return_tensors="np")["decoder_pixel_values"]
    assert decoder.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(decoder[0, :, 0, 0], [-1.0, 1.0, 128 / 255 * 2 - 1], atol=1e-6)


def test_file_paths_and_bad_inputs(processor, tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), "green").save(path)
    assert processor(images=[str(path), path], return_tensors="np")["pixel_values"].shape[0] == 2
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"images\[0\].*notes.jpg.*not a readable image"):
        processor(images=[tmp_path / "notes.jpg"])
    with pytest.raises(FileNotFoundError, match=r"images\[1\].*missing.jpg"):
        processor(images=[path, tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="images"):
        processor(images=[np.zeros((4, 4, 2), dtype=np.uint8)])
    with pytest.raises(ValueError, match="images"):
        processor(images=[np.zeros((4, 4, 3), dtype=np.float32)])
    with pytest.raises(TypeError, match="images"):
        processor(images=[42])
    with pytest.raises(ValueError, match="images: got 1 images for 2 posts"):
        processor(images=[path], text=["a", "b"])
    with pytest.raises(TypeError, match="text"):
        processor(text=[["a"], "b"])


def test_processor_round_trips_through_save_pretrained(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = MuSEProcessor.from_pretrained(tmp_path)
    assert (loaded.max_length, loaded.decoder_image_size, loaded.label_names) == (TINY_LENGTH, 32, NER_LABELS)
    assert loaded.image_processor.size == processor.image_processor.size
    words = [["Obama", "visits", "Paris"]]
    image = Image.new("RGB", (30, 30), "red")
    original, restored = processor(images=[image], text=words), loaded(images=[image], text=words)
    assert original["input_ids"] == restored["input_ids"]
    np.testing.assert_array_equal(original["pixel_values"], restored["pixel_values"])
