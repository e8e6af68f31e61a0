"""The CrossTransformer layer (modeling_muse/cross_transformer.py): plain PyTorch, with torch's dropout."""

from __future__ import annotations

import torch
from torch import nn

from configuration_muse import MuSEConfig
from modeling_muse.cross_transformer import CrossTransformerLayer


def _layer(dropout: float) -> CrossTransformerLayer:
    torch.manual_seed(0)
    return CrossTransformerLayer(MuSEConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                            cross_dropout=dropout))


def test_the_layer_is_made_of_torch_modules():
    assert all(type(module).__module__.startswith("torch.") for module in _layer(0.1).children())
    assert isinstance(_layer(0.1).dropout, nn.Dropout) and _layer(0.1).dropout.p == 0.1


def test_without_dropout_training_and_inference_agree_and_cls_attention_ignores_dropout():
    hidden_states = torch.randn(3, 6, 32)
    key_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    layer = _layer(0.0)
    trained, trained_cls, _ = layer.train().attend(hidden_states, key_mask, return_cls_attention=True)
    inferred, inferred_cls, _ = layer.eval().attend(hidden_states, key_mask, return_cls_attention=True)
    torch.testing.assert_close(trained, inferred)
    torch.testing.assert_close(trained_cls, inferred_cls)
    # The cls row that selects the exchanged tokens comes before any dropout: the same with dropout on.
    dropped = _layer(0.5).train()
    _, dropped_cls, _ = dropped.attend(hidden_states, key_mask, return_cls_attention=True)
    torch.testing.assert_close(dropped_cls, dropped.eval().attend(hidden_states, key_mask, True)[1])
    assert torch.all(dropped_cls[~key_mask] == 0)


def test_training_with_dropout_drops_and_inference_does_not():
    layer = _layer(0.5)
    hidden_states = torch.randn(2, 5, 32)
    key_mask = torch.ones(2, 5, dtype=torch.bool)
    first = layer.train().feed_forward(layer.attend(hidden_states, key_mask, False)[0])
    second = layer.feed_forward(layer.attend(hidden_states, key_mask, False)[0])
    assert not torch.allclose(first, second)
    layer.eval()
    torch.testing.assert_close(layer.feed_forward(layer.attend(hidden_states, key_mask, False)[0]),
                               layer.feed_forward(layer.attend(hidden_states, key_mask, False)[0]))
