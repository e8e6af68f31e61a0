"""Tests of the multimodal-ner and multimodal-sentiment pipelines and of the CRF marginals behind NER scores."""

from __future__ import annotations

import itertools
import logging
import socket

import numpy as np
import pytest
from local_server import serving, serving_files
import torch
from PIL import Image
from tiny_models import NER_LABELS, SENTIMENT_LABELS, TINY_DECODERS, tiny_config, tiny_processor
from transformers import pipeline

from modeling_muse import (
    MuSEForSequenceClassification,
    MuSEForTokenClassification,
    MultimodalNERPipeline,
    MultimodalSentimentPipeline,
)
from modeling_muse.heads import CRFTaggingHead, WordPositions
from modeling_muse.pipelines import PostText, aggregate_word_tags, placeholder_image
from processing_muse import MuSEProcessor, UnreadableImageError

TEXT = "Lionel Messi  visits\tParis with   friends"


def random_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def save_checkpoint(model: torch.nn.Module, processor: MuSEProcessor, folder) -> str:
    """The folder as the training scripts leave it for serving: without the training-only decoders."""
    model.remove_regularizers()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def ner_folder(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = MuSEForTokenClassification(tiny_config(**TINY_DECODERS))
    # Emissions of a freshly initialised head are ~0, which leaves the CRF tagging every word alike; larger
    # weights make the tags and their confidences depend on the post.
    torch.nn.init.normal_(model.tagger.classifier.weight, std=1.0)
    return save_checkpoint(model, tiny_processor(), tmp_path_factory.mktemp("ner"))


@pytest.fixture(scope="module")
def ner(ner_folder) -> MultimodalNERPipeline:
    return pipeline("multimodal-ner", model=ner_folder, device="cpu")


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> MultimodalSentimentPipeline:
    torch.manual_seed(1)
    model = MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS, **TINY_DECODERS))
    torch.nn.init.normal_(model.classifier.classifier.weight, std=1.0)
    folder = save_checkpoint(model, tiny_processor(label_names=None), tmp_path_factory.mktemp("sentiment"))
    return pipeline("multimodal-sentiment", model=folder, device="cpu")


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    """A local HTTP server on 127.0.0.1 serving photo.png (random_image(0)) and notes.txt."""
    root = tmp_path_factory.mktemp("served")
    random_image(0).save(root / "photo.png")
    (root / "notes.txt").write_text("not an image")
    with serving(serving_files(str(root))) as url:
        yield url


def direct_outputs(pipe, text_words: list[str], image: Image.Image, **kwargs):
    """The model called directly on the processor's tensors, bypassing the pipeline."""
    encoded = pipe.processor(images=[image], text=[text_words], return_tensors="pt")
    with torch.no_grad():
        return encoded, pipe.model(**encoded, **kwargs)


def assert_same_entities(left: list[dict], right: list[dict], tolerance: float = 1e-5) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
        assert a["score"] == pytest.approx(b["score"], abs=tolerance)


# ---------------------------------------------------------------------------------------------- loading


def test_pipeline_loads_model_and_processor_from_the_folder(ner):
    assert isinstance(ner, MultimodalNERPipeline)
    assert isinstance(ner.processor, MuSEProcessor)
    assert ner.device.type == "cpu"
    assert not ner.model.training


def test_direct_construction_puts_the_model_in_eval_mode_and_checks_the_processor():
    model = MuSEForTokenClassification(tiny_config()).train()
    pipe = MultimodalNERPipeline(model=model, processor=tiny_processor(), device="cpu")
    assert not pipe.model.training
    with pytest.raises(TypeError, match="processor: MuSE pipelines need a MuSEProcessor"):
        MultimodalNERPipeline(model=model, device="cpu")
    wrong_length = tiny_processor()
    wrong_length.max_length = 32
    with pytest.raises(ValueError, match="max_length=32 differs from the model's max_text_length=16"):
        MultimodalNERPipeline(model=model, processor=wrong_length, device="cpu")


@pytest.mark.parametrize("pipe_fixture", ["ner", "sentiment"])
def test_a_saved_pipeline_reloads_into_the_same_pipeline(pipe_fixture, request, tmp_path):
    original = request.getfixturevalue(pipe_fixture)
    # The fixtures' models read 16 sub-word tokens, not the processor's default 64: a folder without the saved
    # MuSEProcessor does not load.
    assert original.processor.max_length == original.model.config.max_text_length == 16
    original.save_pretrained(tmp_path)
    reloaded = pipeline(original.task, model=str(tmp_path), device="cpu")
    assert type(reloaded) is type(original)

    def settings(processor: MuSEProcessor) -> dict:
        # auto_map names the processor's code for AutoProcessor; save_pretrained writes it, so only a processor that
        # has been saved carries it.
        return {name: value for name, value in processor.to_dict().items() if name != "auto_map"}

    assert settings(reloaded.processor) == settings(original.processor)
    assert reloaded.processor.label_names == original.processor.label_names
    assert reloaded.processor.tokenizer.get_vocab() == original.processor.tokenizer.get_vocab()
    posts = [
        {"text": TEXT, "image": random_image(0)},
        {"text": " ".join(f"w{index}" for index in range(30)), "image": random_image(1)},  # cut at 16 tokens
        {"text": "New York is big", "image": random_image(2)},
    ]
    options = {"aggregation_strategy": "none"} if pipe_fixture == "ner" else {"top_k": None}
    assert reloaded(posts, batch_size=2, return_exchange=True, **options) == original(
        posts, batch_size=2, return_exchange=True, **options
    )


def test_saving_a_pipeline_into_a_file_is_an_error(ner, tmp_path):
    target = tmp_path / "pipeline.bin"
    target.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="save_directory: .*pipeline.bin is a file"):
        ner.save_pretrained(target)


def test_a_bf16_pipeline_saves_and_reloads_in_bf16(ner_folder, tmp_path):
    original = pipeline("multimodal-ner", model=ner_folder, device="cpu", dtype=torch.bfloat16)
    original.save_pretrained(tmp_path)
    reloaded = pipeline("multimodal-ner", model=str(tmp_path), device="cpu")
    assert reloaded.model.dtype == torch.bfloat16
    assert reloaded.model.tagger.crf.transitions.dtype == torch.float32
    post = {"text": TEXT, "image": random_image(0)}
    assert reloaded(post, aggregation_strategy="none") == original(post, aggregation_strategy="none")


# ----------------------------------------------------------------------------------------- input forms


def test_every_image_form_gives_the_same_prediction(ner, tmp_path, image_server, no_proxy):
    photo = random_image(0)
    path = tmp_path / "photo.png"
    photo.save(path)
    expected = ner({"text": TEXT, "image": photo}, aggregation_strategy="none")
    assert expected, "the fixture model should tag some words of TEXT"
    for image in (np.asarray(photo), str(path), path, f"{image_server}/photo.png", path.read_bytes()):
        # The test server is on the loopback address, which is fetched only when asked for.
        assert ner({"text": TEXT, "image": image}, aggregation_strategy="none", allow_private_urls=True) == expected


def test_image_bytes_are_held_to_max_image_bytes(ner, tmp_path):
    path = tmp_path / "photo.png"
    random_image(0).save(path)
    data = path.read_bytes()
    with pytest.raises(UnreadableImageError, match=f"image: the image data is larger than max_image_bytes={len(data) - 1}"):
        ner({"text": TEXT, "image": data}, max_image_bytes=len(data) - 1)
    with pytest.raises(UnreadableImageError, match="image: '5 bytes of image data' is not a readable image"):
        ner({"text": TEXT, "image": b"bytes"})


def test_word_list_input_tags_like_the_string_with_offsets_into_the_joined_words(ner):
    words = TEXT.split()
    from_string = ner({"text": TEXT, "image": random_image(0)}, aggregation_strategy="none")
    from_words = ner({"text": words, "image": random_image(0)}, aggregation_strategy="none")
    joined = " ".join(words)
    assert [(e["entity"], e["index"], e["word"]) for e in from_words] == [
        (e["entity"], e["index"], e["word"]) for e in from_string
    ]
    assert [e["score"] for e in from_words] == pytest.approx([e["score"] for e in from_string], abs=1e-6)
    for entity in from_words:
        assert joined[entity["start"] : entity["end"]] == entity["word"]
    # The string has runs of whitespace, so its offsets differ from the joined words' after the first gap.
    assert [e["start"] for e in from_words] != [e["start"] for e in from_string]


def test_a_list_of_posts_gives_one_result_per_post_in_order(ner):
    posts = [{"text": TEXT, "image": random_image(0)}, {"text": "New York is big", "image": random_image(1)}]
    results = ner(posts)
    assert len(results) == 2
    for post, result in zip(posts, results):
        assert result == ner(post)


@pytest.mark.parametrize("strategy", ["none", "simple", "first"])
def test_offsets_point_at_the_exact_words(ner, strategy):
    text = "  Lionel\tMessi meets\n\nthe   New York  fans at Madison Square Garden "
    entities = ner({"text": text, "image": random_image(3)}, aggregation_strategy=strategy)
    assert entities
    key = "entity" if strategy == "none" else "entity_group"
    for entity in entities:
        assert text[entity["start"] : entity["end"]] == entity["word"]
        assert key in entity


def test_words_past_the_model_length_get_no_tag(ner, caplog):
    words = [f"w{index}" for index in range(40)]
    with caplog.at_level(logging.WARNING):
        entities = ner({"text": words, "image": random_image(2)}, aggregation_strategy="none")
    encoded = ner.processor(images=[random_image(2)], text=[words], return_tensors="pt")
    kept = int(encoded["word_start_mask"].sum())
    assert kept < len(words)
    assert entities and max(entity["index"] for entity in entities) < kept
    assert "words were cut" in caplog.text


# ------------------------------------------------------------------------------------ batch vs single


def test_batched_inference_equals_one_by_one(ner):
    texts = [TEXT, "New York", "a b c d e f g h i j k", "Paris", "the Eiffel tower at night in Paris France", "x"]
    posts = [{"text": text, "image": random_image(seed)} for seed, text in enumerate(texts)]
    single = ner(posts, batch_size=1, aggregation_strategy="none", return_exchange=True)
    batched = ner(posts, batch_size=4, aggregation_strategy="none", return_exchange=True)
    assert any(result["entities"] for result in single)
    for one, many in zip(single, batched):
        assert_same_entities(one["entities"], many["entities"])
        assert one["exchange"]["tokens"] == many["exchange"]["tokens"]
        for layer_one, layer_many in zip(one["exchange"]["layers"], many["exchange"]["layers"]):
            assert layer_one["exchanged_tokens"] == layer_many["exchanged_tokens"]
            assert layer_one["exchanged_patches"] == layer_many["exchanged_patches"]
            assert layer_one["text_cls_attention"] == pytest.approx(layer_many["text_cls_attention"], abs=1e-5)
            assert np.allclose(layer_one["image_cls_attention"], layer_many["image_cls_attention"], atol=1e-5)


# ------------------------------------------------------------------------------------------- scores


def test_scores_are_the_crf_marginals_of_the_viterbi_tags(ner):
    image = random_image(4)
    entities = ner({"text": TEXT, "image": image}, aggregation_strategy="none")
    encoded, outputs = direct_outputs(ner, TEXT.split(), image)
    words = WordPositions(encoded["word_start_mask"])
    tags = words.gather(outputs.predicted_tag_ids)[0]
    with torch.no_grad():
        marginals = ner.model.tagger.marginals(outputs.logits, words)[0]
    assert entities
    for entity in entities:
        tag = int(tags[entity["index"]])
        assert entity["entity"] == NER_LABELS[tag]
        assert entity["score"] == pytest.approx(float(marginals[entity["index"], tag]), abs=1e-6)
        assert 0.0 < entity["score"] <= 1.0


def test_scores_change_with_the_image_and_the_text(ner):
    def scores(text, seed):
        return [e["score"] for e in ner({"text": text, "image": random_image(seed)}, aggregation_strategy="none")]

    assert scores(TEXT, 5) != scores(TEXT, 6)
    assert scores(TEXT, 5) != scores(TEXT.replace("Paris", "London"), 5)


def test_crf_marginals_sum_to_one_and_match_brute_force_enumeration():
    torch.manual_seed(0)
    head = CRFTaggingHead(hidden_size=4, num_labels=3, dropout=0.0)
    for parameter in (head.crf.start_transitions, head.crf.transitions, head.crf.end_transitions):
        torch.nn.init.normal_(parameter)
    emissions = torch.randn(3, 6, 3)
    # Post 0: 3 words, post 1: 2 words (one multi-piece word), post 2: no words at all.
    words = WordPositions(torch.tensor([[0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]]))
    marginals = head.marginals(emissions, words)
    assert marginals.shape == (3, 3, 3)
    word_emissions = words.gather(emissions)
    with torch.no_grad():
        for post, num_words in ((0, 3), (1, 2)):
            expected = torch.zeros(num_words, 3)
            for path in itertools.product(range(3), repeat=num_words):
                log_probability = head.crf(
                    word_emissions[post : post + 1, :num_words],
                    torch.tensor([path]),
                    mask=torch.ones(1, num_words, dtype=torch.bool),
                )
                for word, tag in enumerate(path):
                    expected[word, tag] += log_probability.exp()
            torch.testing.assert_close(marginals[post, :num_words], expected, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(marginals[post, :num_words].sum(-1), torch.ones(num_words))
    assert marginals[1, 2:].abs().sum() == 0
    assert marginals[2].abs().sum() == 0


# -------------------------------------------------------------------------------------- aggregation


@pytest.fixture
def hand_built_post() -> PostText:
    return PostText.from_input("Lionel Messi met New York fans in Los Angeles at dawn")


HAND_TAGS = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "ORG"]
HAND_SCORES = [0.9, 0.7, 0.99, 0.8, 0.6, 0.5, 0.95, 0.4, 0.3, 0.2, 0.1]


def test_aggregation_none_lists_every_tagged_word(hand_built_post):
    items = aggregate_word_tags(hand_built_post, HAND_TAGS, HAND_SCORES, "none")
    assert [(item["entity"], item["index"], item["word"]) for item in items] == [
        ("B-PER", 0, "Lionel"), ("I-PER", 1, "Messi"), ("B-LOC", 3, "New"), ("I-LOC", 4, "York"),
        ("I-PER", 5, "fans"), ("B-LOC", 7, "Los"), ("B-LOC", 8, "Angeles"), ("I-LOC", 9, "at"), ("ORG", 10, "dawn"),
    ]
    assert [item["score"] for item in items] == [0.9, 0.7, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]


def test_aggregation_simple_merges_bio_runs_of_one_type(hand_built_post):
    entities = aggregate_word_tags(hand_built_post, HAND_TAGS, HAND_SCORES, "simple")
    assert [(e["entity_group"], e["word"]) for e in entities] == [
        ("PER", "Lionel Messi"), ("LOC", "New York"), ("PER", "fans"), ("LOC", "Los"), ("LOC", "Angeles at"),
        ("ORG", "dawn"),
    ]
    assert [e["score"] for e in entities] == pytest.approx([0.8, 0.7, 0.5, 0.4, 0.25, 0.1])


def test_aggregation_first_takes_the_type_of_the_first_word(hand_built_post):
    entities = aggregate_word_tags(hand_built_post, HAND_TAGS, HAND_SCORES, "first")
    assert [(e["entity_group"], e["word"]) for e in entities] == [
        ("PER", "Lionel Messi"), ("LOC", "New York fans"), ("LOC", "Los"), ("LOC", "Angeles at dawn"),
    ]  # "ORG" has no B-/I- prefix, so it continues like I-ORG, and first takes the entity's first type
    assert entities[1]["score"] == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    for entity in entities:
        assert hand_built_post.text[entity["start"] : entity["end"]] == entity["word"]


def test_aggregation_ignores_words_without_tags_and_rejects_unknown_strategies(hand_built_post):
    entities = aggregate_word_tags(hand_built_post, HAND_TAGS[:2], HAND_SCORES[:2], "simple")
    assert [e["word"] for e in entities] == ["Lionel Messi"]
    with pytest.raises(ValueError, match="aggregation_strategy: 'max' is not supported"):
        aggregate_word_tags(hand_built_post, HAND_TAGS, HAND_SCORES, "max")


def test_the_pipeline_rejects_an_unknown_aggregation_strategy(ner):
    with pytest.raises(ValueError, match="aggregation_strategy"):
        ner({"text": TEXT, "image": random_image(0)}, aggregation_strategy="average")


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("post", [{"text": TEXT}, {"text": TEXT, "image": None}])
def test_a_missing_image_is_an_error_that_names_the_way_out(ner, post):
    with pytest.raises(ValueError, match="image: the post has no image.*allow_missing_image=True"):
        ner(post)


def test_allow_missing_image_uses_the_grey_placeholder_and_says_so(ner, caplog):
    with caplog.at_level(logging.WARNING, logger="modeling_muse.pipelines"):
        result = ner({"text": TEXT}, allow_missing_image=True, aggregation_strategy="none")
    assert "grey placeholder" in caplog.text
    assert result == ner({"text": TEXT, "image": placeholder_image()}, aggregation_strategy="none")
    assert np.asarray(placeholder_image()).shape == (224, 224, 3)
    assert (np.asarray(placeholder_image()) == 128).all()


def test_an_unreadable_or_absent_image_file_is_named(ner, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"these bytes are no PNG")
    with pytest.raises(ValueError, match="image: .*broken.png.* is not a readable image"):
        ner({"text": TEXT, "image": str(broken)})
    with pytest.raises(FileNotFoundError, match="image: no image file at .*absent.jpg"):
        ner({"text": TEXT, "image": str(tmp_path / "absent.jpg")})


@pytest.mark.parametrize("text", ["", "  \n\t ", []])
def test_an_empty_text_is_an_error(ner, text):
    with pytest.raises(ValueError, match="text: the post's .* is empty"):
        ner({"text": text, "image": random_image(0)})


def test_malformed_posts_are_errors(ner):
    with pytest.raises(ValueError, match=r"inputs: unknown keys \['images'\]"):
        ner({"text": TEXT, "images": random_image(0)})
    with pytest.raises(TypeError, match="inputs: expected a post"):
        ner("just a string")
    with pytest.raises(ValueError, match="text: word 1 is empty or whitespace"):
        ner({"text": ["Paris", " "], "image": random_image(0)})


def test_failing_urls_are_named_in_the_error(ner, image_server, no_proxy):
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    missing = f"{image_server}/absent.png"
    refused = f"http://127.0.0.1:{closed_port}/photo.png"
    # An HTTP 404 and a closed port get one message, which says nothing of the cause (it would map the network).
    messages = []
    for url in (missing, refused):
        with pytest.raises(ConnectionError, match=f"image: could not fetch image URL '{url}'") as raised:
            ner({"text": TEXT, "image": url}, timeout=2, allow_private_urls=True)
        messages.append(str(raised.value).replace(url, "<url>"))
    assert messages[0] == messages[1] and "404" not in messages[0]
    not_an_image = f"{image_server}/notes.txt"
    with pytest.raises(ValueError, match=f"image: '{not_an_image}' is not a readable image"):
        ner({"text": TEXT, "image": not_an_image}, allow_private_urls=True)


# -------------------------------------------------------------------------------------- exchange


def test_return_exchange_reports_what_the_model_exchanged(ner):
    image = random_image(7, size=(96, 80))
    result = ner({"text": TEXT, "image": image}, return_exchange=True)
    assert result["entities"] == ner({"text": TEXT, "image": image})
    exchange = result["exchange"]
    encoded, outputs = direct_outputs(
        ner, TEXT.split(), image, output_exchange_masks=True, output_cls_attentions=True
    )
    num_tokens = int(encoded["attention_mask"].sum())
    assert exchange["tokens"] == ner.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0, :num_tokens].tolist())
    assert exchange["tokens"][0] == "[CLS]" and exchange["tokens"][-1] == "[SEP]"
    assert exchange["token_words"][0] is None and exchange["token_words"][-1] is None
    words = TEXT.split()
    assert [w for w in exchange["token_words"] if w is not None] == sorted(
        w for w in exchange["token_words"] if w is not None
    )
    assert set(w for w in exchange["token_words"] if w is not None) == set(range(len(words)))
    grid = ner.model.config.image_grid_size
    assert [layer["layer"] for layer in exchange["layers"]] == [2, 3]
    for index, layer in enumerate(exchange["layers"]):
        text_mask = outputs.text_exchange_masks[index][0]
        image_mask = outputs.image_exchange_masks[index][0]
        assert [t["position"] for t in layer["exchanged_tokens"]] == text_mask.nonzero().flatten().tolist()
        assert layer["exchanged_tokens"], "exchange_ratio=0.25 exchanges tokens in every exchange layer"
        for token in layer["exchanged_tokens"]:
            assert token["token"] == exchange["tokens"][token["position"]]
            word_index = exchange["token_words"][token["position"]]
            assert token["word"] == (None if word_index is None else words[word_index])
        assert layer["exchanged_patches"] == [divmod(p, grid) for p in image_mask.nonzero().flatten().tolist()]
        attention_layer = layer["layer"] - 1
        assert layer["text_cls_attention"] == pytest.approx(
            outputs.text_cls_attentions[attention_layer][0, 1 : num_tokens + 1].tolist(), abs=1e-6
        )
        np.testing.assert_allclose(
            layer["image_cls_attention"],
            outputs.image_cls_attentions[attention_layer][0, 1:].view(grid, grid).numpy(),
            atol=1e-6,
        )


# ------------------------------------------------------------------------------------------ sentiment


def test_sentiment_returns_softmax_probabilities_with_top_k(sentiment):
    post = {"text": "what a wonderful day at the beach", "image": random_image(8)}
    _, outputs = direct_outputs(sentiment, post["text"].split(), post["image"])
    probabilities = outputs.logits.softmax(-1)[0]
    order = probabilities.argsort(descending=True).tolist()

    best = sentiment(post)
    assert best == {"label": SENTIMENT_LABELS[order[0]], "score": pytest.approx(float(probabilities[order[0]]))}
    two = sentiment(post, top_k=2)
    assert [entry["label"] for entry in two] == [SENTIMENT_LABELS[i] for i in order[:2]]
    everything = sentiment(post, top_k=None)
    assert [entry["label"] for entry in everything] == [SENTIMENT_LABELS[i] for i in order]
    assert sum(entry["score"] for entry in everything) == pytest.approx(1.0)
    assert [entry["score"] for entry in everything] == pytest.approx(probabilities[order].tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="top_k: expected a positive int or None"):
        sentiment(post, top_k=0)


def test_sentiment_batches_and_reports_the_exchange(sentiment):
    posts = [{"text": text, "image": random_image(seed)} for seed, text in enumerate(["good", "bad day", "meh"])]
    single = sentiment(posts, batch_size=1, top_k=None)
    batched = sentiment(posts, batch_size=3, top_k=None)
    for one, many in zip(single, batched):
        assert [e["label"] for e in one] == [e["label"] for e in many]
        assert [e["score"] for e in one] == pytest.approx([e["score"] for e in many], abs=1e-5)
    result = sentiment(posts[1], return_exchange=True)
    assert result["prediction"] == sentiment(posts[1])
    assert result["exchange"]["tokens"] == ["[CLS]", "bad", "day", "[SEP]"]
    assert [layer["layer"] for layer in result["exchange"]["layers"]] == [2, 3]


# ------------------------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_compiled_pipelines_give_the_eager_results(ner_folder, sentiment):
    # backend="eager" runs the graphs that TorchDynamo captured (fullgraph=True, dynamic=True) without Inductor's
    # code generation, which takes minutes on a CPU; bench/pipeline_speed.py measures the Inductor-compiled pipeline.
    options = {"backend": "eager"}
    posts = [
        {"text": TEXT, "image": random_image(1)},
        {"text": "rain", "image": random_image(2)},
        {"text": "the mayor of London meets fans of the new team at the stadium", "image": random_image(3)},
    ]
    eager_ner = pipeline("multimodal-ner", model=ner_folder, device="cpu")
    compiled_ner = pipeline("multimodal-ner", model=ner_folder, device="cpu", torch_compile=options)
    assert compiled_ner.model.tagger.marginals is not type(compiled_ner.model.tagger).marginals
    torch.compiler.reset()
    for batch_size in (1, 2, 3):
        expected = eager_ner(posts, batch_size=batch_size, aggregation_strategy="none")
        assert compiled_ner(posts, batch_size=batch_size, aggregation_strategy="none") == expected
        assert any(expected)
    folder = save_checkpoint(sentiment.model, sentiment.processor, ner_folder + "-sentiment")
    compiled_sentiment = pipeline("multimodal-sentiment", model=folder, device="cpu", torch_compile=options)
    assert compiled_sentiment(posts, batch_size=2, top_k=None) == sentiment(posts, batch_size=2, top_k=None)
    torch.compiler.reset()


def test_torch_compile_takes_a_bool_or_options(ner_folder):
    with pytest.raises(TypeError, match="torch_compile"):
        pipeline("multimodal-ner", model=ner_folder, device="cpu", torch_compile="yes")
