"""Sharding follows the model (issue 21): `_no_split_modules` names MuSE's blocks and the configured encoders' layers,
and accelerate's FSDP configuration wraps by it, whatever the text encoder."""

import os
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from transformers import BertConfig, DebertaV2Config, DistilBertConfig, RobertaConfig, ViTConfig

from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification, MuSEModel
from modeling_muse.cross_transformer import CrossTransformerLayer
from tiny_models import SENTIMENT_LABELS, tiny_config

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"
_SMALL = dict(vocab_size=30522, num_attention_heads=2, max_position_embeddings=64)
# text configuration -> the class name of its encoder's repeated layer
TEXT_ENCODERS = {
    "bert": (BertConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=37, **_SMALL), "BertLayer"),
    "roberta": (RobertaConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=37, **_SMALL), "RobertaLayer"),
    # DistilBERT and DeBERTa-v2 leave `_no_split_modules` empty: their layers are found as GradientCheckpointingLayers.
    "distilbert": (DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=37, vocab_size=30522,
                                    max_position_embeddings=64), "TransformerBlock"),
    "deberta-v2": (DebertaV2Config(hidden_size=32, num_hidden_layers=1, intermediate_size=37, **_SMALL),
                   "DebertaV2Layer"),
}


def _module_classes(model: torch.nn.Module) -> set[str]:
    return {type(module).__name__ for module in model.modules()}


@pytest.mark.parametrize("name", list(TEXT_ENCODERS))
@pytest.mark.parametrize("model_class", [MuSEModel, MuSEForTokenClassification, MuSEForSequenceClassification])
def test_no_split_modules_follow_the_configured_text_encoder(name, model_class):
    text_config, layer_class = TEXT_ENCODERS[name]
    labels = SENTIMENT_LABELS if model_class is MuSEForSequenceClassification else None
    config = tiny_config(labels, text_config=text_config) if labels else tiny_config(text_config=text_config)
    model = model_class(config)
    assert {"CrossTransformerLayer", layer_class} <= set(model._no_split_modules)
    # The text layers of the other encoders are not claimed.
    others = {other for key, (_, other) in TEXT_ENCODERS.items() if key != name}
    assert not others & set(model._no_split_modules)
    # Every class listed that the model builds is one of its modules (the decoders only when configured).
    present = set(model._no_split_modules) & _module_classes(model)
    assert {"CrossTransformerLayer", layer_class} <= present


def test_no_split_modules_name_the_decoders_and_a_transformers_vision_tower_s_layer():
    config = tiny_config(
        vision_model_name="",
        vision_config=ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=37),
        caption_loss_weight=0.5, generation_loss_weight=0.5, caption_decoder_dim=16, pixelcnn_filters=8,
        pixelcnn_resnet_blocks=1,
    )
    model = MuSEForTokenClassification(config)
    expected = {"CrossTransformerLayer", "BertLayer", "ViTLayer", "CaptionDecoder", "PixelCNNPlusPlusDecoder"}
    assert expected <= set(model._no_split_modules) & _module_classes(model)


def test_the_fsdp_configuration_names_no_layer_class():
    settings = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    assert settings["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in settings["fsdp_config"]


def _launch_environment(config_file: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file <config_file>` gives its processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", ["roberta", "deberta-v2"])
def test_accelerate_s_fsdp_wraps_the_ct_layers_and_the_text_encoder_s_layers(name):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    environment = _launch_environment(CONFIGS / "fsdp.yaml")
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in environment
    text_config, layer_class = TEXT_ENCODERS[name]
    model = MuSEForTokenClassification(tiny_config(text_config=text_config))
    with mock.patch.dict(os.environ, {k: v for k, v in environment.items() if k.startswith(("FSDP_", "ACCELERATE_"))}):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = {type(module).__name__ for module in model.modules() if policy(module)}
    assert {"CrossTransformerLayer", layer_class} <= wrapped <= set(model._no_split_modules)
    assert sum(isinstance(module, CrossTransformerLayer) and policy(module) for module in model.modules()) == 3


def test_the_deepspeed_configurations_differ_in_their_stage_only():
    zero2 = yaml.safe_load((CONFIGS / "deepspeed_zero2.yaml").read_text())
    zero3 = yaml.safe_load((CONFIGS / "deepspeed_zero3.yaml").read_text())
    assert (zero2["deepspeed_config"]["zero_stage"], zero3["deepspeed_config"]["zero_stage"]) == (2, 3)
    # The saved model of a ZeRO-3 run is gathered into full weights (accelerator.get_state_dict refuses otherwise).
    assert zero3["deepspeed_config"]["zero3_save_16bit_model"] is True
    assert zero3["deepspeed_config"]["gradient_clipping"] == zero2["deepspeed_config"]["gradient_clipping"] == 0.0
    for key in ("distributed_type", "num_machines", "mixed_precision"):
        assert zero3[key] == zero2[key]
