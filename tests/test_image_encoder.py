"""Image towers (modeling_muse/image_encoder.py): timm CNNs and ViTs, timm folders, transformers vision models.

Every tower is tiny, random and saved to a temporary folder the way its library saves it (with its image processor),
then built into MuSE through `from_text_vision_pretrained`, trained a step, saved and reloaded through the Auto classes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from timm.models import save_for_hf
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    ConvNextConfig,
    ConvNextImageProcessor,
    ConvNextModel,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
    SwinConfig,
    SwinModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

import modeling_muse  # noqa: F401
from modeling_muse import MuSEConfig, MuSEForSequenceClassification, MuSEForTokenClassification, MuSEProcessor
from modeling_muse.image_encoder import ImageEncoder, resolve_vision_tower
from tiny_models import MINILM_DIR, tiny_config

_VIT_LIKE = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=37)
_SQUARE_32 = {"height": 32, "width": 32}
# name -> (tower, its image processor, how many tokens come before its patch tokens)
TRANSFORMERS_TOWERS = {
    "vit": (lambda: ViTModel(ViTConfig(**_VIT_LIKE)), lambda: ViTImageProcessor(size=_SQUARE_32), 1),
    "clip_vision": (
        lambda: CLIPVisionModel(CLIPVisionConfig(**_VIT_LIKE)),
        lambda: CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=_SQUARE_32),
        1,
    ),
    "siglip_vision": (
        lambda: SiglipVisionModel(SiglipVisionConfig(**_VIT_LIKE)), lambda: SiglipImageProcessor(size=_SQUARE_32), 0
    ),
    "convnext": (
        lambda: ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)),
        lambda: ConvNextImageProcessor(size={"shortest_edge": 32}),
        0,
    ),
    "dinov2_with_registers": (
        lambda: Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**_VIT_LIKE, num_register_tokens=4)),
        lambda: BitImageProcessor(size={"shortest_edge": 32}, crop_size=_SQUARE_32),
        5,
    ),
    "swin": (
        lambda: SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                     window_size=2)),
        lambda: ViTImageProcessor(size=_SQUARE_32),
        0,
    ),
}
TINY_MUSE = dict(max_text_length=16, image_grid_size=4, num_cross_layers=2, num_attention_heads=4,
                 exchange_start_layer=1, exchange_end_layer=2, caption_decoder_dim=16, pixelcnn_filters=8,
                 pixelcnn_resnet_blocks=1)
LABELS = {0: "O", 1: "B-PER", 2: "I-PER"}
WORDS, TAGS = ["Kevin", "Durant", "plays", "tonight"], [1, 2, 0, 0]


def _save_transformers_tower(name: str, folder: Path) -> Path:
    make_model, make_processor, _ = TRANSFORMERS_TOWERS[name]
    torch.manual_seed(0)
    make_model().save_pretrained(folder)
    make_processor().save_pretrained(folder)
    return folder


def _save_timm_vit(folder: Path) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8)
    save_for_hf(model, folder, model_args={"img_size": 32, "patch_size": 8})
    return folder


def _train_step_save_and_reload(tower: str, output_dir: Path, pretrained: bool = True) -> None:
    """Build MuSE for NER around ``tower``, train a step, save it, reload it with the Auto classes: same emissions."""
    model = MuSEForTokenClassification.from_text_vision_pretrained(
        str(MINILM_DIR), tower, pretrained_vision=pretrained, id2label=LABELS, **TINY_MUSE
    )
    processor = MuSEProcessor.from_text_vision_pretrained(str(MINILM_DIR), tower, max_length=16, label_names=None)
    picture = Image.new("RGB", (50, 40), (200, 30, 30))
    batch = processor(text=[WORDS, WORDS[:2]], images=[picture, picture], word_labels=[TAGS, TAGS[:2]],
                      return_tensors="pt")
    model.train()
    model(**batch).loss.backward()
    gradients = [p.grad for p in model.muse.image_encoder.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in gradients), "no gradient reached the image tower"
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.eval()
    with torch.no_grad():
        emissions = model(**batch).logits
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    reloaded = AutoModelForTokenClassification.from_pretrained(output_dir).eval()
    reloaded_processor = AutoProcessor.from_pretrained(output_dir)
    again = reloaded_processor(text=[WORDS, WORDS[:2]], images=[picture, picture], word_labels=[TAGS, TAGS[:2]],
                               return_tensors="pt")
    torch.testing.assert_close(again["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**again).logits, emissions)
    saved = (output_dir / "config.json").read_text()
    assert str(output_dir.parent) not in saved, "the saved config names a local folder"


@pytest.mark.parametrize("name", sorted(TRANSFORMERS_TOWERS))
def test_a_transformers_vision_tower_trains_saves_and_reloads(name, tmp_path):
    tower = _save_transformers_tower(name, tmp_path / name)
    _train_step_save_and_reload(str(tower), tmp_path / "muse")
    config = json.loads((tmp_path / "muse" / "config.json").read_text())
    assert config["vision_config"]["model_type"] == json.loads((tower / "config.json").read_text())["model_type"]
    # The tower's own preprocessing travels with the MuSE processor.
    processor = AutoProcessor.from_pretrained(tmp_path / "muse")
    assert type(processor.image_processor).__name__ == type(TRANSFORMERS_TOWERS[name][1]()).__name__


@pytest.mark.parametrize("name", sorted(TRANSFORMERS_TOWERS))
def test_pretrained_tower_weights_are_loaded_and_prefix_tokens_dropped(name, tmp_path):
    tower = _save_transformers_tower(name, tmp_path / name)
    model = MuSEForSequenceClassification.from_text_vision_pretrained(str(MINILM_DIR), str(tower), num_labels=3,
                                                                      **TINY_MUSE)
    encoder = model.muse.image_encoder
    saved = type(encoder.backbone).from_pretrained(tower).state_dict()
    for key, value in encoder.backbone.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)
    assert encoder.prefix_tokens == TRANSFORMERS_TOWERS[name][2]
    feature_map = encoder.feature_map(torch.randn(2, 3, 32, 32))
    assert feature_map.dim() == 4 and feature_map.shape[0] == 2


@pytest.mark.parametrize("name", ["clip_vision", "siglip_vision", "vit"])
def test_the_placeholder_picture_is_normalised_as_the_tower_s_processor_normalises(name, tmp_path):
    """A post without a picture reads the grey placeholder as the processor would have prepared it: with the tower's
    own mean and std (CLIP's and SigLIP's differ from ImageNet's), also after saving and reloading the model."""
    from modeling_muse.image_input import placeholder_image

    folder = _save_transformers_tower(name, tmp_path / name)
    processor = TRANSFORMERS_TOWERS[name][1]()
    expected = processor(images=placeholder_image(), return_tensors="pt")["pixel_values"][0, :, 0, 0]
    model = MuSEForSequenceClassification.from_text_vision_pretrained(str(MINILM_DIR), str(folder), num_labels=3,
                                                                      **TINY_MUSE)
    model.save_pretrained(tmp_path / "muse")
    for built in (model, MuSEForSequenceClassification.from_pretrained(tmp_path / "muse")):
        placeholder = built.muse.image_encoder.placeholder_pixel_values(1, torch.device("cpu"), torch.float32)
        torch.testing.assert_close(placeholder[0, :, 0, 0], expected, atol=1e-2, rtol=0)


def test_the_vision_half_of_a_clip_checkpoint_is_the_tower(tmp_path):
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "intermediate_size": 37},
                                vision_config=_VIT_LIKE, projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=_SQUARE_32).save_pretrained(tmp_path / "clip")
    tower = resolve_vision_tower(str(tmp_path / "clip"))
    assert tower.library == "transformers" and tower.vision_config.model_type == "clip_vision_model"
    model = MuSEForSequenceClassification.from_text_vision_pretrained(str(MINILM_DIR), str(tmp_path / "clip"),
                                                                      num_labels=3, **TINY_MUSE)
    loaded = model.muse.image_encoder.backbone.state_dict()
    expected = clip.vision_model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, msg=key)


def test_a_timm_vit_folder_trains_saves_and_reloads(tmp_path):
    folder = _save_timm_vit(tmp_path / "timm-vit")
    tower = resolve_vision_tower(str(folder))
    assert (tower.library, tower.timm_architecture) == ("timm", "vit_tiny_patch16_224")
    assert tower.timm_model_args == {"img_size": [32, 32], "patch_size": 8, "in_chans": 3}
    _train_step_save_and_reload(str(folder), tmp_path / "muse")
    config = json.loads((tmp_path / "muse" / "config.json").read_text())
    assert config["vision_timm_architecture"] == "vit_tiny_patch16_224" and config["vision_model_name_or_path"] == ""


def test_a_timm_vit_by_name_lays_its_patch_tokens_on_their_grid(tmp_path):
    config = tiny_config(vision_model_name="vit_tiny_patch16_224", vision_model_kwargs={"img_size": 32,
                                                                                         "patch_size": 8})
    encoder = ImageEncoder(config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    tokens = encoder.backbone.forward_features(pixel_values)
    assert tokens.shape[1] == 1 + 16 and encoder.prefix_tokens == 1
    grid = encoder.feature_map(pixel_values)
    # Patch token k (after the cls token) is grid cell (k // 4, k % 4).
    torch.testing.assert_close(grid[:, :, 2, 3], tokens[:, 1 + 2 * 4 + 3])
    _train_step_save_and_reload("vit_tiny_patch16_224", tmp_path / "muse", pretrained=False)


def test_the_timm_processor_follows_the_tower_s_pretrained_configuration():
    processor = MuSEProcessor.from_text_vision_pretrained(str(MINILM_DIR), "vit_tiny_patch16_224")
    image_processor = processor.image_processor
    # timm: crop_pct 0.9 of 224, bicubic, mean/std 0.5.
    assert image_processor.size["shortest_edge"] == 248 and image_processor.crop_size["height"] == 224
    assert list(image_processor.image_mean) == [0.5, 0.5, 0.5] and image_processor.resample == 3
    pixel_values = processor(images=[Image.new("RGB", (300, 200), (10, 200, 30))])["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)
    # A side in pixels keeps the paper's square resize with the tower's normalisation.
    square = MuSEProcessor.from_text_vision_pretrained(str(MINILM_DIR), "vit_tiny_patch16_224", image_size=96)
    assert square.image_processor.size["height"] == 96 and list(square.image_processor.image_std) == [0.5] * 3


def test_checkpoints_that_name_the_tower_vision_model_name_still_load(tmp_path):
    model = MuSEForSequenceClassification(tiny_config(labels=["a", "b"])).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["vision_model_name"] = config.pop("vision_model_name_or_path")
    config_file.write_text(json.dumps(config))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config.vision_model_name_or_path == "test_resnet"
    assert MuSEConfig(vision_model_name="resnet18").vision_model_name_or_path == "resnet18"


def test_an_unknown_tower_is_named_with_the_forms_it_can_take():
    with pytest.raises(ValueError, match="'no_such_timm_model' is neither a timm model name") as raised:
        resolve_vision_tower("no_such_timm_model")
    assert "hf-hub:" in str(raised.value) and "folder" in str(raised.value)


def test_a_folder_without_configuration_is_refused(tmp_path):
    with pytest.raises(ValueError, match="without a config.json"):
        resolve_vision_tower(str(tmp_path))


def test_a_transformers_tower_cannot_freeze_timm_stages(tmp_path):
    tower = _save_transformers_tower("vit", tmp_path / "vit")
    with pytest.raises(Exception, match="vision_trainable_stages"):
        MuSEForSequenceClassification.from_text_vision_pretrained(str(MINILM_DIR), str(tower), num_labels=2,
                                                                  vision_trainable_stages=1, **TINY_MUSE)


def test_a_grid_finer_than_the_feature_map_warns_once_with_the_image_size_that_avoids_it(caplog):
    # timm's test_resnet has stride 32: 64 px give a 2 x 2 feature map, which a 4 x 4 grid repeats; 128 px give 4 x 4.
    torch.manual_seed(0)
    encoder = ImageEncoder(tiny_config()).eval()
    with caplog.at_level(logging.WARNING, logger="modeling_muse.image_encoder"), torch.no_grad():
        encoder(torch.randn(2, 3, 64, 64))
        encoder(torch.randn(1, 3, 64, 64))
    messages = [record.getMessage() for record in caplog.records if "image_grid_size" in record.getMessage()]
    assert len(messages) == 1, messages
    assert "image_grid_size=4" in messages[0] and "2x2 feature map" in messages[0]
    assert "at least 128x128 pixels" in messages[0] and "image_size" in messages[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling_muse.image_encoder"), torch.no_grad():
        ImageEncoder(tiny_config()).eval()(torch.randn(1, 3, 128, 128))
    assert not [record for record in caplog.records if "image_grid_size" in record.getMessage()]
