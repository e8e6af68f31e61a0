"""The two encoders (modeling_muse/text_encoder.py, image_encoder.py): what they change in their backbones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, BertConfig

from modeling_muse import MuSEConfig
from modeling_muse.image_encoder import ImageEncoder
from modeling_muse.text_encoder import TextEncoder


def test_the_text_encoder_is_the_module_transformers_builds():
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    encoder = TextEncoder(config, 32)
    built = AutoModel.from_config(config, add_pooling_layer=False)
    assert [type(module) for module in encoder.backbone.modules()] == [type(module) for module in built.modules()]
    assert all(type(module).__module__.startswith(("torch.", "transformers.")) for module in encoder.backbone.modules())
    assert sorted({module.p for module in encoder.modules() if isinstance(module, nn.Dropout)}) == [0.2, 0.3]


def test_the_image_encoder_runs_its_backbone_channels_last_and_keeps_the_token_order():
    torch.manual_seed(0)
    config = MuSEConfig(text_config=BertConfig(hidden_size=16, num_attention_heads=2), vision_model_name="test_resnet",
                        image_grid_size=4, max_text_length=16, num_attention_heads=2)
    encoder = ImageEncoder(config).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    layouts = []
    first_convolution = next(module for module in encoder.backbone.modules() if isinstance(module, nn.Conv2d))
    hook = first_convolution.register_forward_pre_hook(
        lambda _module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    tokens = encoder(pixel_values)
    hook.remove()
    assert layouts == [True]
    # Token k is grid cell (k // P, k % P) of the pooled feature map, computed here in the default layout.
    features = encoder.backbone.forward_features(pixel_values.contiguous())
    grid = F.adaptive_avg_pool2d(features, 4)
    expected = encoder.projection(grid.permute(0, 2, 3, 1).reshape(2, 16, -1))
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-5)
