"""bf16: training under autocast, as `accelerate launch --mixed_precision bf16` runs it, gives the float32 losses;
models and pipelines loaded with ``dtype=torch.bfloat16`` predict as in float32.

Autocast tolerance: 2% relative per loss term over three AdamW steps. bf16 keeps 8 significant bits (a relative
rounding step of 2**-8, about 0.4%), and autocast runs the matrix products and convolutions in bf16 while the losses,
softmaxes and normalisations stay in float32; a term computed wholly in bf16 (such as the PixelCNN++ mixture
likelihood from bf16 parameters and bf16 pixels, about 5% off) breaks this bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import NER_LABELS, SENTIMENT_LABELS, tiny_config, tiny_processor
from transformers import pipeline

from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification
from modeling_muse.heads import CRFTaggingHead, WordPositions

RELATIVE_TOLERANCE = 2e-2
POSTS = [["Lionel", "Messi", "visits", "Paris"], ["RT", "@nba", "Kawhi", "wins", "again"], ["hello"], ["New", "York"]]
TAGS = [[1, 2, 0, 3], [0, 0, 1, 0, 0], [0], [3, 4]]
LOSS_TERMS = ("loss", "task_loss", "caption_loss", "generation_loss")


def _batch(with_tags: bool):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in POSTS]
    processor = tiny_processor(label_names=None)
    batch = processor(images=images, text=POSTS, word_labels=TAGS if with_tags else None, return_tensors="pt")
    if not with_tags:
        batch["labels"] = torch.tensor([0, 2, 1, 0])
    return batch


def _losses_over_steps(model_class, labels, batch, autocast: bool, steps: int = 3) -> list[dict[str, float]]:
    torch.manual_seed(0)
    config = tiny_config(
        labels, caption_loss_weight=1e-2, generation_loss_weight=1e-4, caption_decoder_dim=16, pixelcnn_filters=8,
        pixelcnn_resnet_blocks=1,
    )
    model = model_class(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for step in range(steps):
        torch.manual_seed(100 + step)  # the same dropout masks and regularizer noise in both runs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outputs = model(**batch)
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append({name: getattr(outputs, name).item() for name in LOSS_TERMS})
        assert outputs.loss.dtype == torch.float32
    return history


@pytest.mark.parametrize(
    "model_class, labels, with_tags",
    [(MuSEForTokenClassification, NER_LABELS, True), (MuSEForSequenceClassification, SENTIMENT_LABELS, False)],
)
def test_bf16_autocast_training_matches_float32(model_class, labels, with_tags):
    batch = _batch(with_tags)
    float32 = _losses_over_steps(model_class, labels, batch, autocast=False)
    bfloat16 = _losses_over_steps(model_class, labels, batch, autocast=True)
    for step, (expected, actual) in enumerate(zip(float32, bfloat16)):
        for name in LOSS_TERMS:
            assert actual[name] == pytest.approx(expected[name], rel=RELATIVE_TOLERANCE), (step, name)
    # The runs did train: the task loss moved.
    assert float32[-1]["task_loss"] != float32[0]["task_loss"]


# ------------------------------------------------------------------------------ models loaded with dtype=bfloat16
#
# Loaded with dtype=torch.bfloat16, the whole evaluation forward runs in bf16 except the CRF (float32 transitions,
# emissions cast to float32). Tolerance for probabilities and losses: 5e-2 absolute. Each bf16 layer rounds to 8
# significant bits (2**-8, about 0.4%), which moves these trained models' probabilities by less than 4e-3 (seeds 0
# to 5) unless it flips an exchange: where two tokens' cls attentions lie within bf16's rounding, bf16 may exchange
# the other one: in the fourth post one moves a probability by 0.02 (0.967 against 0.987), though not its tag.
BF16_TOLERANCE = 5e-2
SENTIMENTS = [0, 2, 1, 0]


def _train(model: torch.nn.Module, batch, steps: int, learning_rate: float) -> torch.nn.Module:
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def trained_folders(tmp_path_factory) -> dict[str, str]:
    """Tiny NER and sentiment models trained on POSTS until they predict TAGS and SENTIMENTS, saved with their
    processors: models whose predictions are decided, so that bf16 rounding finds no near-tie between classes."""
    root = tmp_path_factory.mktemp("trained")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ner = _train(MuSEForTokenClassification(tiny_config()), _batch(with_tags=True), steps=60, learning_rate=3e-3)
        torch.manual_seed(0)
        sentiment_batch = _batch(with_tags=False)
        sentiment_batch["labels"] = torch.tensor(SENTIMENTS)
        # A lower rate leaves its probabilities short of 0 and 1 (0.77 to 0.97 for the taught class).
        sentiment = _train(
            MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS)), sentiment_batch, steps=60, learning_rate=1e-3
        )
    ner.save_pretrained(root / "ner")
    tiny_processor().save_pretrained(root / "ner")
    sentiment.save_pretrained(root / "sentiment")
    tiny_processor(label_names=None).save_pretrained(root / "sentiment")
    return {"ner": str(root / "ner"), "sentiment": str(root / "sentiment")}


def _posts() -> list[dict]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in POSTS]
    return [{"text": words, "image": image} for words, image in zip(POSTS, images)]


def test_the_bf16_ner_pipeline_tags_as_float32_with_float32_crf_scores(trained_folders):
    float32 = pipeline("multimodal-ner", model=trained_folders["ner"], device="cpu")
    bfloat16 = pipeline("multimodal-ner", model=trained_folders["ner"], device="cpu", dtype=torch.bfloat16)
    assert bfloat16.model.dtype == torch.bfloat16
    expected = float32(_posts(), aggregation_strategy="none", batch_size=2)
    actual = bfloat16(_posts(), aggregation_strategy="none", batch_size=2)
    # The trained model tags every post as taught (O is not listed): the comparison is between decided tags.
    assert [[(e["index"], NER_LABELS.index(e["entity"])) for e in post] for post in expected] == [
        [(index, tag) for index, tag in enumerate(tags) if tag] for tags in TAGS
    ]
    for expected_post, actual_post in zip(expected, actual):
        assert [{k: v for k, v in e.items() if k != "score"} for e in actual_post] == [
            {k: v for k, v in e.items() if k != "score"} for e in expected_post
        ]
        assert [e["score"] for e in actual_post] == pytest.approx(
            [e["score"] for e in expected_post], abs=BF16_TOLERANCE
        )
    # The scores are the CRF marginals computed in float32 from the bf16 model's emissions.
    post = _posts()[0]
    encoded = bfloat16.processor(images=[post["image"]], text=[post["text"]], return_tensors="pt")
    with torch.no_grad():
        emissions = bfloat16.model(**encoded).logits
        marginals = bfloat16.model.tagger.marginals(emissions, WordPositions(encoded["word_start_mask"]))[0]
    assert emissions.dtype == torch.bfloat16 and marginals.dtype == torch.float32
    # The pipeline hands the model bf16 pixels, as transformers' image pipelines do.
    assert bfloat16.preprocess(post)["pixel_values"].dtype == torch.bfloat16
    entities = bfloat16(post, aggregation_strategy="none")
    assert [e["score"] for e in entities] == pytest.approx(
        [float(marginals[e["index"], NER_LABELS.index(e["entity"])]) for e in entities], abs=1e-6
    )


def test_the_bf16_sentiment_pipeline_ranks_as_float32(trained_folders):
    float32 = pipeline("multimodal-sentiment", model=trained_folders["sentiment"], device="cpu")
    bfloat16 = pipeline(
        "multimodal-sentiment", model=trained_folders["sentiment"], device="cpu", dtype=torch.bfloat16
    )
    assert bfloat16.model.dtype == torch.bfloat16
    expected = float32(_posts(), top_k=None, batch_size=2)
    actual = bfloat16(_posts(), top_k=None, batch_size=2)
    assert [ranking[0]["label"] for ranking in expected] == [SENTIMENT_LABELS[label] for label in SENTIMENTS]
    for expected_ranking, actual_ranking in zip(expected, actual):
        assert [e["label"] for e in actual_ranking] == [e["label"] for e in expected_ranking]
        assert [e["score"] for e in actual_ranking] == pytest.approx(
            [e["score"] for e in expected_ranking], abs=BF16_TOLERANCE
        )


def test_a_token_classifier_loaded_in_bf16_keeps_its_crf_in_float32_and_trains(trained_folders):
    float32 = MuSEForTokenClassification.from_pretrained(trained_folders["ner"])
    bfloat16 = MuSEForTokenClassification.from_pretrained(trained_folders["ner"], dtype=torch.bfloat16)
    crf_dtypes = {name: p.dtype for name, p in bfloat16.named_parameters() if name.startswith("tagger.crf.")}
    assert crf_dtypes and set(crf_dtypes.values()) == {torch.float32}
    assert {p.dtype for name, p in bfloat16.named_parameters() if name not in crf_dtypes} == {torch.bfloat16}
    # The processor's float32 pixels go in as they are.
    batch = _batch(with_tags=True)
    with torch.no_grad():
        expected, actual = float32(**batch), bfloat16(**batch)
    assert actual.logits.dtype == torch.bfloat16
    assert torch.equal(actual.predicted_tag_ids, expected.predicted_tag_ids)
    assert actual.loss.dtype == torch.float32
    assert actual.loss.item() == pytest.approx(expected.loss.item(), abs=BF16_TOLERANCE)
    bfloat16.train()
    loss = bfloat16(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert bfloat16.tagger.crf.transitions.grad.dtype == torch.float32
    assert bfloat16.tagger.crf.transitions.grad.abs().sum() > 0


def test_a_sequence_classifier_loaded_in_bf16_computes_its_loss(trained_folders):
    float32 = MuSEForSequenceClassification.from_pretrained(trained_folders["sentiment"])
    bfloat16 = MuSEForSequenceClassification.from_pretrained(trained_folders["sentiment"], dtype=torch.bfloat16)
    batch = _batch(with_tags=False)
    batch["labels"] = torch.tensor(SENTIMENTS)
    with torch.no_grad():
        expected, actual = float32(**batch), bfloat16(**batch)
    assert actual.logits.dtype == torch.bfloat16
    assert torch.equal(actual.logits.argmax(-1), expected.logits.argmax(-1))
    assert actual.loss.item() == pytest.approx(expected.loss.item(), abs=BF16_TOLERANCE)
    bfloat16.train()
    loss = bfloat16(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert bfloat16.classifier.classifier.weight.grad.abs().sum() > 0


def test_the_crf_decodes_bf16_scores_in_float32():
    # 256 + 1 lies between two bf16 numbers (their spacing is 2 there) and rounds to 256: summed in bf16, the path
    # ending in tag 1 (256 + 1) ties with the one ending in tag 0 (256 + 0) and the tie goes to tag 0; in float32
    # tag 1 wins.
    head = CRFTaggingHead(hidden_size=4, num_labels=2, dropout=0.0)
    for parameter in (head.crf.start_transitions, head.crf.transitions, head.crf.end_transitions):
        torch.nn.init.zeros_(parameter)
    head.to(torch.bfloat16)
    emissions = torch.tensor([[[256.0, 0.0], [0.0, 1.0]]], dtype=torch.bfloat16)
    words = WordPositions(torch.tensor([[1, 1]]))
    assert head.decode(emissions, words).tolist() == [[0, 1]]
    marginals = head.marginals(emissions, words)
    assert marginals.dtype == torch.float32
    assert marginals[0, 1].tolist() == pytest.approx([1 / (1 + torch.e), torch.e / (1 + torch.e)], abs=1e-6)
