"""bf16 mixed precision: training under autocast, as `accelerate launch --mixed_precision bf16` runs it, gives the
float32 losses.

Tolerance: 2% relative per loss term over three AdamW steps. bf16 keeps 8 significant bits (a relative rounding
step of 2**-8, about 0.4%), and autocast runs the matrix products and convolutions in bf16 while the losses,
softmaxes and normalisations stay in float32; a term computed wholly in bf16 (such as the PixelCNN++ mixture
likelihood from bf16 parameters and bf16 pixels, about 5% off) breaks this bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import NER_LABELS, SENTIMENT_LABELS, tiny_config, tiny_processor

from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification

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
