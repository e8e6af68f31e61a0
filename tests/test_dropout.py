"""MuSE's dropout (modeling_muse/dropout.py): torch's semantics, with the CPU mask drawn from 32-bit random integers
(NumPy's PCG64) instead of bernoulli_, and used by the CrossTransformer, both decoders and the text encoder."""

from __future__ import annotations

import pytest
import torch

from configuration_muse import MuSEConfig
from modeling_muse.caption_decoder import CaptionDecoder
from modeling_muse.cross_transformer import CrossTransformerLayer
from modeling_muse.dropout import Dropout, dropout, dropout_mask
from modeling_muse.pixelcnn_decoder import PixelCNNPlusPlusDecoder
from operator_recording import RecordOperators


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keeps_each_element_with_probability_one_minus_p_and_scales_it(p):
    torch.manual_seed(0)
    inputs = torch.rand(1000, 1000) + 1.0  # no zeros, so a zero output is a dropped element
    outputs = dropout(inputs, p, training=True)
    kept = outputs != 0
    # 1e6 Bernoulli draws: the kept share's standard deviation is below 5e-4.
    assert abs(kept.float().mean().item() - (1 - p)) < 3e-3
    torch.testing.assert_close(outputs[kept], inputs[kept] / (1 - p))


def test_neighbouring_elements_are_dropped_independently():
    """Each 64-bit draw feeds two neighbouring elements: their masks must still be independent."""
    torch.manual_seed(0)
    keep = dropout_mask(torch.Size([500_000, 2]), 0.5) != 0
    both = (keep[:, 0] & keep[:, 1]).float().mean().item()
    neither = (~keep[:, 0] & ~keep[:, 1]).float().mean().item()
    # 5e5 pairs: each share's standard deviation is about 6e-4.
    assert abs(both - 0.25) < 3e-3 and abs(neither - 0.25) < 3e-3


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_mask_of_odd_size_has_the_asked_shape_dtype_and_values(shape, dtype):
    torch.manual_seed(0)
    mask = dropout_mask(torch.Size(shape), 0.2, dtype)
    assert mask.shape == shape and mask.dtype == dtype
    assert set(mask.unique().tolist()) <= {0.0, torch.tensor(1 / 0.8, dtype=dtype).item()}


def test_gradient_flows_through_kept_elements_only():
    torch.manual_seed(0)
    inputs = (torch.rand(64, 128) + 1.0).requires_grad_()
    weights = torch.randn(64, 128)
    outputs = dropout(inputs, 0.3, training=True)
    (outputs * weights).sum().backward()
    torch.testing.assert_close(inputs.grad, weights * (outputs != 0) / 0.7)


def test_masks_follow_the_seed():
    inputs = torch.ones(256, 256)
    torch.manual_seed(7)
    first = dropout(inputs, 0.5, training=True)
    torch.manual_seed(7)
    again = dropout(inputs, 0.5, training=True)
    other = dropout(inputs, 0.5, training=True)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_identity_in_eval_and_at_zero_and_all_dropped_at_one():
    inputs = torch.randn(8, 8)
    assert dropout(inputs, 0.5, training=False) is inputs
    assert dropout(inputs, 0.0, training=True) is inputs
    assert torch.equal(dropout(inputs, 1.0, training=True), torch.zeros_like(inputs))
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(inputs, 1.5, training=True)


def test_module_is_a_torch_dropout_without_state():
    module = Dropout(0.25)
    assert isinstance(module, torch.nn.Dropout) and module.p == 0.25
    assert module.state_dict() == {}
    module.eval()
    inputs = torch.randn(4, 4)
    assert module(inputs) is inputs


def _ops_in_training(module: torch.nn.Module, run) -> set[str]:
    """The operators ``run()`` dispatches with ``module`` in training mode."""
    module.train()
    with RecordOperators() as recorder:
        run()
    return recorder.names


def test_muse_s_own_layers_draw_no_bernoulli_masks_on_cpu(drawn_dropout_masks):
    """The cost this module removes: neither the CrossTransformer (attention weights, attention output,
    feed-forward) nor the decoders call bernoulli_ in training on a CPU."""
    torch.manual_seed(0)
    caption = CaptionDecoder(16, vocab_size=50, decoder_dim=8, attention_dim=8, embedding_dim=8)
    pixelcnn = PixelCNNPlusPlusDecoder(16, num_filters=8, num_resnet_blocks=1, num_mixtures=2)
    layer = CrossTransformerLayer(MuSEConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32))
    runs = {
        "caption decoder": (
            caption,
            lambda: caption(torch.randn(2, 4, 16), torch.randint(0, 50, (2, 6)), torch.ones(2, 6, dtype=torch.long)),
        ),
        "PixelCNN++": (pixelcnn, lambda: pixelcnn(torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 16))),
        "CrossTransformer": (
            layer,
            lambda: layer.feed_forward(layer.attend(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool), False)[0]),
        ),
    }
    for name, (module, run) in runs.items():
        drawn_dropout_masks.clear()
        names = _ops_in_training(module, run)
        assert drawn_dropout_masks and "bernoulli_" not in names, name
