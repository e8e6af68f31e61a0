"""The pipelines on the inputs a `datasets` user brings: a `datasets.Dataset` with an ``Image()`` column, the Image
storage dict ``{"bytes": ..., "path": ...}``, transformers' `KeyDataset`, generators, and the keyword form."""

from __future__ import annotations

import functools
import io

import datasets
import numpy as np
import pytest
from local_server import QuietFileHandler, serving
from PIL import Image
from tiny_models import save_tiny_checkpoints
from transformers import pipeline
from transformers.pipelines.pt_utils import KeyDataset

WORDS = [
    ["Lionel", "Messi", "arrives", "in", "Paris"],
    ["rain"],
    ["the", "mayor", "of", "London", "meets", "fans", "at", "the", "new", "stadium"],
    ["Obama", "visits", "New", "York"],
    ["great", "game", "tonight"],
]


def picture(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (30 + seed, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    found = save_tiny_checkpoints(root)
    for seed in range(len(WORDS)):
        picture(seed).save(root / f"photo{seed}.png")
    return found


@pytest.fixture(scope="module")
def ner(folders):
    return pipeline("multimodal-ner", model=str(folders["ner"]), device="cpu")


@pytest.fixture(scope="module")
def sentiment(folders):
    return pipeline("multimodal-sentiment", model=str(folders["sentiment"]), device="cpu")


def posts() -> list[dict]:
    return [{"text": words, "image": picture(seed)} for seed, words in enumerate(WORDS)]


def image_dataset(folders, **columns) -> datasets.Dataset:
    """Rows as the NER script reads them: tokens, ner_tags, an Image() column (files and bytes mixed), an id."""
    root = folders["photo"].parent
    images = [
        {"bytes": None, "path": str(root / f"photo{seed}.png")}
        if seed % 2
        else {"bytes": png_bytes(picture(seed)), "path": None}
        for seed in range(len(WORDS))
    ]
    data = {"tokens": WORDS, "ner_tags": [[0] * len(words) for words in WORDS], "image": images, "id": list(range(5))}
    data.update(columns)
    return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())


def assert_same_results(left: list, right: list, tolerance: float = 1e-5) -> None:
    """Same entities or labels; scores within ``tolerance`` (a batch pads posts, which moves the last bits)."""
    assert len(left) == len(right)
    for a, b in zip(left, right):
        a, b = (a, b) if isinstance(a, list) else ([a], [b])
        assert [{k: v for k, v in x.items() if k != "score"} for x in a] == [
            {k: v for k, v in x.items() if k != "score"} for x in b
        ]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=tolerance)


def test_a_dataset_with_an_image_column_streams_its_results_in_order(ner, folders):
    dataset = image_dataset(folders)
    assert isinstance(dataset.features["image"], datasets.Image)
    expected = [ner(post) for post in posts()]
    assert any(expected), "the fixture model should tag some words"
    for batch_size in (1, 2, 4):
        results = ner(dataset, batch_size=batch_size)
        # A dataset streams: an iterator, not a list built before the first result.
        assert not isinstance(results, list)
        assert_same_results(list(results), expected)


def test_the_column_names_are_arguments_as_the_scripts_flags_name_them(sentiment, folders):
    expected = [sentiment(post) for post in posts()]
    renamed = image_dataset(folders).rename_columns({"tokens": "words", "image": "picture"})
    assert_same_results(list(sentiment(renamed, text_column="words", image_column="picture", batch_size=3)), expected)
    # Given to pipeline(...), the names hold for every call.
    named = pipeline("multimodal-sentiment", model=str(folders["sentiment"]), device="cpu", text_column="words",
                     image_column="picture")
    assert_same_results(list(named(renamed, batch_size=3)), expected)
    # The sentiment script reads "text" by default, the NER script "tokens".
    as_text = image_dataset(folders).rename_column("tokens", "text")
    assert_same_results(list(sentiment(as_text, batch_size=2)), expected)
    with pytest.raises(ValueError, match=r"text_column: the dataset has none of the columns \['text'\].*text_column="):
        sentiment(image_dataset(folders))
    with pytest.raises(ValueError, match=r"image_column: the dataset has no column 'photo'.*image_column=<column>"):
        sentiment(as_text, image_column="photo")
    with pytest.raises(ValueError, match=r"image_column: .*no column 'image'.*allow_missing_image=True"):
        sentiment(as_text.remove_columns("image"))
    text_only = list(sentiment(as_text.remove_columns("image"), allow_missing_image=True))
    assert_same_results(text_only, sentiment([{"text": words} for words in WORDS], allow_missing_image=True))


def test_an_iterable_dataset_and_a_generator_stream_lazily_in_order(ner, folders):
    expected = [ner(post) for post in posts()]
    iterable = image_dataset(folders).to_iterable_dataset()
    assert_same_results(list(ner(iterable, batch_size=2)), expected)
    taken = []

    def many_posts():
        for index in range(60):
            taken.append(index)
            yield posts()[index % len(WORDS)]

    results = ner(many_posts(), batch_size=2)
    first = next(iter(results))
    assert_same_results([first], expected[:1])
    # The first result came after one batch, not after reading all 60 posts.
    assert len(taken) <= 4
    rest = list(results)
    assert len(rest) == 59
    assert_same_results(rest[:9], (expected * 2)[1:10])


def test_a_key_dataset_of_posts_streams_and_one_of_texts_is_told_what_to_pass(ner, folders):
    rows = [
        {"text": " ".join(words), "image": {"bytes": png_bytes(picture(seed)), "path": None}}
        for seed, words in enumerate(WORDS)
    ]
    dataset = datasets.Dataset.from_dict({"post": rows, "label": [0] * len(rows)})
    expected = [ner(post) for post in posts()]
    assert_same_results(list(ner(KeyDataset(dataset, "post"), batch_size=2)), expected)
    with pytest.raises(TypeError, match="KeyDataset passes one column only: pass the dataset itself, with text_col"):
        list(ner(KeyDataset(image_dataset(folders), "tokens")))


def test_a_stream_of_dataset_rows_is_read_by_the_column_names(ner, folders):
    """Rows with columns besides the post's (labels, ids) are read when the columns are named, refused otherwise."""
    rows = list(image_dataset(folders))
    assert_same_results(list(ner(iter(rows), text_column="tokens", batch_size=2)), [ner(post) for post in posts()])
    with pytest.raises(ValueError, match=r"post 0: inputs: unknown keys \['id', 'ner_tags', 'tokens'\].*text_column="):
        list(ner(row for row in rows))


def test_the_image_storage_dict_reads_bytes_first_and_paths_as_local_files_only(ner, folders, tmp_path, no_proxy):
    photo = Image.open(folders["photo"])
    expected = ner({"text": WORDS[0], "image": photo})
    data = folders["photo"].read_bytes()
    # The bytes win over a path, which may name a file that is not there (datasets keeps the original name).
    assert ner({"text": WORDS[0], "image": {"bytes": data, "path": "gone/photo.png"}}) == expected
    assert ner({"text": WORDS[0], "image": {"bytes": None, "path": str(folders["photo"])}}) == expected
    with pytest.raises(ValueError, match=r"image: the post has no image"):
        ner({"text": WORDS[0], "image": {"bytes": None, "path": None}})
    with pytest.raises(ValueError, match=r"post 1: image: a dict image is datasets' storage form .*\['size'\]"):
        ner([{"text": WORDS[0], "image": photo}, {"text": WORDS[0], "image": {"bytes": data, "size": 3}}])
    # A stored path is a local file, never a download, even where the server would answer.
    requested = []

    class Recording(QuietFileHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

    handler = functools.partial(Recording, directory=str(folders["photo"].parent))
    with serving(handler) as url:
        assert ner({"text": WORDS[0], "image": f"{url}/photo.png"}, allow_private_urls=True) == expected
        with pytest.raises(FileNotFoundError):
            ner({"text": WORDS[0], "image": {"bytes": None, "path": f"{url}/photo.png"}}, allow_private_urls=True)
    assert requested == ["/photo.png"]  # the URL given as a URL, once; never the stored path
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png' is not a readable image"):
        ner({"text": WORDS[0], "image": {"bytes": None, "path": str(tmp_path / "broken.png")}})


def test_the_keyword_form_is_the_post(ner, sentiment):
    photo = picture(0)
    assert ner(text=WORDS[0], image=photo) == ner({"text": WORDS[0], "image": photo})
    assert ner(text="Lionel Messi arrives", image=photo, aggregation_strategy="none") == ner(
        {"text": "Lionel Messi arrives", "image": photo}, aggregation_strategy="none"
    )
    texts = [" ".join(words) for words in WORDS]
    pictures = [picture(seed) for seed in range(len(WORDS))]
    assert_same_results(
        sentiment(text=texts, image=pictures, batch_size=2), [sentiment(post) for post in posts()]
    )
    with pytest.raises(ValueError, match="text, image: image is a list of 5 pictures, so text must be a list of"):
        sentiment(text=texts[:2], image=pictures)
    with pytest.raises(TypeError, match="inputs: pass the posts either as inputs or as text=... and image=..., not"):
        ner({"text": "a", "image": photo}, text="a")
    with pytest.raises(TypeError, match=r"text: the keyword form needs text="):
        ner(image=photo)
    with pytest.raises(TypeError, match="inputs: nothing to run on"):
        ner()
