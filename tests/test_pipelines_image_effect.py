"""``return_image_effect=True``: what the pipelines predict without the picture, on tiny models trained here where
only the picture decides the answer (a large effect) and where the picture is noise (an effect near zero)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_config, tiny_processor

from modeling_muse import (
    MultimodalNERPipeline,
    MultimodalSentimentPipeline,
    MuSEForSequenceClassification,
    MuSEForTokenClassification,
)
from modeling_muse.image_input import placeholder_image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
NER_TAGS = ["O", "B-PER", "B-LOC"]
# The tag of the first word when the picture decides it: a person on red, a place on blue.
TAG_OF_COLOUR = {"red": "B-PER", "blue": "B-LOC"}


def coloured(colour: str, seed: int) -> Image.Image:
    """A picture of one colour with a little noise, so that no two are the same."""
    noise = np.random.default_rng(seed).integers(-20, 21, (32, 32, 3))
    return Image.fromarray(np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8))


def noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def train(model: torch.nn.Module, processor, posts: list[tuple[list[str], Image.Image, object]], steps: int) -> None:
    """A few Adam steps on batches of the posts (text words, picture, label), then eval mode."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        batch = [posts[index] for index in rng.choice(len(posts), size=16, replace=False)]
        words, images, labels = zip(*batch)
        if isinstance(model, MuSEForTokenClassification):
            encoded = processor(images=list(images), text=list(words), word_labels=list(labels), return_tensors="pt")
        else:
            encoded = processor(images=list(images), text=list(words), return_tensors="pt")
            encoded["labels"] = torch.tensor(labels)
        loss = model(**encoded).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def sentiment_pipeline(posts, steps: int = 40) -> MultimodalSentimentPipeline:
    torch.manual_seed(0)
    model = MuSEForSequenceClassification(tiny_config(["red", "blue"]))
    processor = tiny_processor(label_names=None)
    train(model, processor, posts, steps)
    return MultimodalSentimentPipeline(model=model, processor=processor, device="cpu")


def ner_pipeline(posts, steps: int = 40) -> MultimodalNERPipeline:
    torch.manual_seed(0)
    model = MuSEForTokenClassification(tiny_config(NER_TAGS))
    processor = tiny_processor(label_names=NER_TAGS)
    train(model, processor, posts, steps)
    return MultimodalNERPipeline(model=model, processor=processor, device="cpu")


@pytest.fixture(scope="module")
def picture_decides_sentiment() -> MultimodalSentimentPipeline:
    # Every post says the same; its label is its picture's colour.
    posts = [(["look", "at", "this"], coloured(colour, seed), label)
             for seed in range(32) for label, colour in enumerate(COLOURS)]
    return sentiment_pipeline(posts)


@pytest.fixture(scope="module")
def text_decides_sentiment() -> MultimodalSentimentPipeline:
    # The label is in the words; the pictures are noise, or the placeholder of a lost picture, as the dataset
    # builders store it.
    posts = [([word, "day", "today"], placeholder_image() if seed % 4 == 0 else noise(seed * 2 + label), label)
             for seed in range(32) for label, word in enumerate(["sunny", "rainy"])]
    return sentiment_pipeline(posts)


def test_where_only_the_picture_decides_the_sentiment_its_effect_is_large(picture_decides_sentiment):
    posts = [{"text": "look at this", "image": coloured(colour, 100 + seed)} for seed in range(4) for colour in COLOURS]
    results = picture_decides_sentiment(posts, return_image_effect=True, batch_size=3)
    assert [result["prediction"]["label"] for result in results] == [colour for _ in range(4) for colour in COLOURS]
    # Without the picture every post is the same post: one answer for all of them.
    blind = {(result["without_image"]["label"], round(result["without_image"]["score"], 4)) for result in results}
    assert len(blind) == 1
    effects = [result["image_effect"] for result in results]
    assert min(effects) > -1e-6 and np.mean(effects) > 0.3, effects
    for result in results:
        assert result["image_effect"] == pytest.approx(
            result["prediction"]["score"]
            - (result["without_image"]["score"] if result["without_image"]["label"] == result["prediction"]["label"]
               else 1 - result["without_image"]["score"]),
            abs=1e-6,
        )


def test_where_the_picture_is_noise_its_effect_is_near_zero(text_decides_sentiment):
    posts = [
        {"text": f"{word} day today", "image": noise(500 + seed)} for seed in range(4) for word in ("sunny", "rainy")
    ]
    results = text_decides_sentiment(posts, return_image_effect=True)
    assert [result["prediction"]["label"] for result in results] == ["red", "blue"] * 4
    assert [result["without_image"]["label"] for result in results] == ["red", "blue"] * 4
    assert max(abs(result["image_effect"]) for result in results) < 0.1


def test_the_image_effect_keeps_the_prediction_and_its_top_k_form(text_decides_sentiment):
    post = {"text": "sunny day today", "image": noise(7)}
    result = text_decides_sentiment(post, return_image_effect=True, top_k=None, return_exchange=True)
    assert result["prediction"] == text_decides_sentiment(post, top_k=None)
    assert [entry["label"] for entry in result["without_image"]] in (["red", "blue"], ["blue", "red"])
    assert sum(entry["score"] for entry in result["without_image"]) == pytest.approx(1.0)
    assert result["exchange"] == text_decides_sentiment(post, return_exchange=True)["exchange"]
    # The placeholder picture is what a post without one gets with allow_missing_image=True.
    missing = text_decides_sentiment({"text": "sunny day today"}, allow_missing_image=True, top_k=None)
    assert result["without_image"] == missing


@pytest.fixture(scope="module")
def picture_decides_ner() -> MultimodalNERPipeline:
    # "Alex" is a person on a red picture and a place on a blue one; the rest of the post never changes.
    posts = [(["Alex", "is", "great"], coloured(colour, seed), [TAG_OF_COLOUR[colour], "O", "O"])
             for seed in range(32) for colour in COLOURS]
    return ner_pipeline(posts, steps=60)


def test_where_only_the_picture_decides_the_entity_type_the_answer_without_it_differs(picture_decides_ner):
    posts = [
        {"text": "Alex is great", "image": coloured(colour, 200 + seed)} for seed in range(3) for colour in COLOURS
    ]
    results = picture_decides_ner(posts, return_image_effect=True, batch_size=2)
    types = [[entity["entity_group"] for entity in result["entities"]] for result in results]
    assert types == [[TAG_OF_COLOUR[colour][2:]] for _ in range(3) for colour in COLOURS]
    # Without the picture all posts are one post: the same answer, so it differs from the picture's for one colour.
    blind = [(result["entities"][0]["without_image"], result["only_without_image"]) for result in results]
    assert all(answer == blind[0] for answer in blind)
    changed = [
        result["entities"][0]["without_image"] is None
        or result["entities"][0]["without_image"]["entity_group"] != result["entities"][0]["entity_group"]
        for result in results
    ]
    assert changed.count(True) >= 3


def test_where_the_picture_is_noise_the_entities_stay_without_it():
    # Some posts have lost their picture and carry the placeholder, as the dataset builders store them.
    posts = [([name, "is", "great"], placeholder_image() if seed % 4 == 0 else noise(seed * 2 + index), [tag, "O", "O"])
             for seed in range(32) for index, (name, tag) in enumerate([("Alex", "B-PER"), ("Rome", "B-LOC")])]
    ner = ner_pipeline(posts, steps=60)
    test_posts = [
        {"text": f"{name} is great", "image": noise(900 + seed)} for seed in range(3) for name in ("Alex", "Rome")
    ]
    results = ner(test_posts, return_image_effect=True, aggregation_strategy="none", batch_size=4)
    for result, name in zip(results, ["Alex", "Rome"] * 3):
        assert [entity["word"] for entity in result["entities"]] == [name]
        entity = result["entities"][0]
        assert entity["without_image"]["entity"] == entity["entity"]
        assert abs(entity["without_image"]["score"] - entity["score"]) < 0.1
        assert result["only_without_image"] == []
