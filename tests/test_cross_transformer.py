"""The CrossTransformer layer's attention (modeling_muse/cross_transformer.py): on CPUs in training it runs the
attention formula itself, with MuSE's dropout masks, instead of scaled_dot_product_attention."""

from __future__ import annotations

import torch

from configuration_muse import MuSEConfig
from modeling_muse.cross_transformer import CrossTransformerLayer
from modeling_muse.dropout import dropout


def test_training_attention_on_cpu_is_scaled_dot_product_attention_s_formula():
    torch.manual_seed(0)
    layer = CrossTransformerLayer(MuSEConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64))
    # Small enough that no element is dropped (p rounds to 0 in 32 bits) and the scale is 1 in float32, so the
    # training formula must give what the inference kernel gives.
    layer.dropout_p = 1e-12
    hidden_states = torch.randn(3, 6, 32)
    key_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    trained, trained_cls = layer.train().attend(hidden_states, key_mask, return_cls_attention=True)
    inferred, inferred_cls = layer.eval().attend(hidden_states, key_mask, return_cls_attention=True)
    torch.testing.assert_close(trained, inferred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trained_cls, inferred_cls)


def test_training_attention_drops_the_attention_weights_with_muse_s_masks():
    """With dropout on, the attention weights and then the output projection are dropped with MuSE's masks."""
    torch.manual_seed(0)
    layer = CrossTransformerLayer(MuSEConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64))
    layer.dropout_p = 0.5
    hidden_states = torch.randn(2, 5, 32)
    key_mask = torch.ones(2, 5, dtype=torch.bool)
    query, key, value = layer.qkv(hidden_states).view(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)
    layer.train()
    torch.manual_seed(1)
    trained, _ = layer.attend(hidden_states, key_mask, return_cls_attention=False)
    # Re-draw the same masks in the same order: attention weights first, then the output projection's.
    torch.manual_seed(1)
    weights = torch.softmax(query @ key.transpose(-1, -2) / 8**0.5, dim=-1)
    context = (dropout(weights, 0.5, True) @ value).transpose(1, 2).reshape(2, 5, 32)
    expected = layer.attention_norm(hidden_states + dropout(layer.attention_output(context), 0.5, True))
    torch.testing.assert_close(trained, expected)
