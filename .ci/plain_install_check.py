"""What a plain ``pip install .`` (no extras) must do in a fresh environment: import the package, build a tiny MuSE,
save it with its processor, and run both pipelines on it. Run from outside the repository (.ci/run does), so that
only the installed package can serve."""

import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image
from transformers import BertConfig, BertTokenizerFast, ViTImageProcessor, pipeline

import modeling_muse
from modeling_muse import MuSEConfig, MuSEForSequenceClassification, MuSEForTokenClassification, MuSEProcessor

assert "site-packages" in modeling_muse.__file__, f"not the installed package: {modeling_muse.__file__}"
with tempfile.TemporaryDirectory() as folder:
    root = Path(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "messi", "visits", "paris", "with", "friends"]
    tokenizer = BertTokenizerFast(vocab={word: index for index, word in enumerate(words)})
    processor = MuSEProcessor(ViTImageProcessor(size={"height": 32, "width": 32}), tokenizer, max_length=16)
    text_config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=37, max_position_embeddings=32)
    sizes = dict(text_config=text_config, vision_model_name_or_path="test_resnet", num_cross_layers=2,
                 num_attention_heads=2, exchange_start_layer=1, exchange_end_layer=2, image_grid_size=4,
                 max_text_length=16, caption_decoder_dim=16, pixelcnn_filters=8, pixelcnn_resnet_blocks=1)
    torch.manual_seed(0)
    post = {"text": "Messi visits Paris with friends", "image": Image.new("RGB", (40, 30), (200, 30, 30))}
    for task, model_class, labels in (
        ("multimodal-ner", MuSEForTokenClassification, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
        ("multimodal-sentiment", MuSEForSequenceClassification, ["positive", "neutral", "negative"]),
    ):
        config = MuSEConfig(**sizes, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
        model = model_class(config)
        # Two posts: the backbone's batch norm needs more than one value per channel in training.
        batch = processor(text=[post["text"]] * 2, images=[post["image"]] * 2, return_tensors="pt")
        model.train()
        if task == "multimodal-ner":
            batch["labels"] = torch.where(batch["word_start_mask"].bool(), 0, -100)
        else:
            batch["labels"] = torch.tensor([0, 1])
        model(**batch).loss.backward()
        model.eval().save_pretrained(root / task)
        processor.save_pretrained(root / task)
        print(task, pipeline(task, model=str(root / task))(post))
print("plain install: import, a training step, save, and both pipelines work", file=sys.stderr)
