"""The vectorised exchange and CrossTransformer against a deliberately naive reference.

The reference below loops over samples, modalities and tokens, materialises the full attention map, and
implements spec section 3 literally. It shares only the parameters with the module under test.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from modeling_muse import MuSEForTokenClassification
from modeling_muse.cross_transformer import CrossTransformer
from modeling_muse.exchange import exchange_least_attended_tokens, num_tokens_to_exchange
from tiny_models import tiny_config, tiny_processor


def naive_layer_attention(layer, x, key_valid):
    """x: (L, d) one sequence; returns the attention sub-module output and the head-averaged cls row."""
    length, width = x.shape
    heads, head_dim = layer.num_heads, layer.head_dim
    qkv = x @ layer.qkv.weight.T + layer.qkv.bias
    q, k, v = qkv[:, :width], qkv[:, width : 2 * width], qkv[:, 2 * width :]
    contexts, cls_rows = [], []
    for h in range(heads):
        columns = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[:, columns] @ k[:, columns].T / math.sqrt(head_dim)
        scores = scores.masked_fill(~torch.tensor(key_valid), float("-inf"))
        attention_map = scores.softmax(dim=-1)  # the full (L, L) map, explicitly
        cls_rows.append(attention_map[0])
        contexts.append(attention_map @ v[:, columns])
    attended = torch.cat(contexts, dim=-1) @ layer.attention_output.weight.T + layer.attention_output.bias
    out = F.layer_norm(x + attended, (width,), layer.attention_norm.weight, layer.attention_norm.bias,
                       layer.attention_norm.eps)
    return out, torch.stack(cls_rows).mean(dim=0)


def naive_feed_forward(layer, x):
    hidden = torch.relu(x @ layer.intermediate.weight.T + layer.intermediate.bias)
    out = hidden @ layer.output.weight.T + layer.output.bias
    return F.layer_norm(x + out, (x.shape[-1],), layer.output_norm.weight, layer.output_norm.bias,
                        layer.output_norm.eps)


def naive_cross_transformer(module, config, text, image, text_mask):
    batch = text.shape[0]
    lengths = [text.shape[1], image.shape[1]]  # the text stream may be shorter than the image's P*P tokens
    theta = Fraction(str(config.exchange_ratio))
    streams = [
        [torch.cat([module.text_cls, text[b]]) for b in range(batch)],
        [torch.cat([module.image_cls, image[b]]) for b in range(batch)],
    ]
    valid = [
        [[bool(text_mask[b, i]) for i in range(lengths[0])] for b in range(batch)],
        [[True] * lengths[1] for _ in range(batch)],
    ]
    masks = []
    for layer_number, layer in enumerate(module.layers, start=1):
        cls_rows = [[None] * batch, [None] * batch]
        for modality in range(2):
            for b in range(batch):
                key_valid = [True] + valid[modality][b]
                streams[modality][b], cls_rows[modality][b] = naive_layer_attention(layer, streams[modality][b], key_valid)
        if layer_number in config.exchange_layers and config.exchange_ratio > 0:
            selected = [[[False] * lengths[modality] for _ in range(batch)] for modality in range(2)]
            for b in range(batch):
                means = []
                for modality in range(2):
                    tokens = [streams[modality][b][1 + i] for i in range(lengths[modality]) if valid[modality][b][i]]
                    means.append(sum(tokens) / len(tokens))
                for modality in range(2):
                    candidates = [i for i in range(lengths[modality]) if valid[modality][b][i]]
                    k = math.ceil(theta * len(candidates))
                    ranked = sorted(candidates, key=lambda i: (cls_rows[modality][b][1 + i].item(), i))
                    for i in ranked[:k]:
                        selected[modality][b][i] = True
                new_streams = []
                for modality in range(2):
                    rows = list(streams[modality][b])
                    other_mean = means[1 - modality]
                    for i in range(lengths[modality]):
                        if selected[modality][b][i]:
                            if config.exchange_mode == "residual":
                                rows[1 + i] = rows[1 + i] + other_mean
                            else:
                                rows[1 + i] = other_mean
                    new_streams.append(torch.stack(rows))
                streams[0][b], streams[1][b] = new_streams
            masks.append(selected)
        for modality in range(2):
            for b in range(batch):
                streams[modality][b] = naive_feed_forward(layer, streams[modality][b])
    return torch.stack(streams[0]), torch.stack(streams[1]), masks


def make_inputs(batch, n, width, lengths, seed=0, text_length=None):
    """Text padded to ``text_length`` (default n, the image's P*P), image of n tokens, real text lengths ``lengths``."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, text_length or n, width, generator=generator, dtype=torch.float64)
    image = torch.randn(batch, n, width, generator=generator, dtype=torch.float64)
    text_mask = torch.zeros(batch, text_length or n, dtype=torch.long)
    for b, length in enumerate(lengths):
        text_mask[b, :length] = 1
    return text, image, text_mask


@pytest.mark.parametrize(
    "ratio, mode, last_exchange_layer, lengths, text_length",
    [
        (0.25, "residual", 3, [16, 9, 3], 16),  # padded batch
        (0.25, "residual", 3, [9, 4, 7], 9),  # text padded to its longest post, shorter than the image stream
        (0.0, "residual", 3, [16, 5, 2], 16),  # theta = 0: no exchange
        (1.0, "residual", 3, [16, 7, 4], 16),  # theta = 1: every valid token
        (0.3, "residual", 3, [1, 16, 6], 16),  # a sample with one valid token
        # Replacement makes tokens identical, so a later exchange layer would rank exact ties, which either
        # implementation may break differently at the last bit; one exchange layer keeps the comparison exact.
        (0.5, "replace", 2, [11, 6, 1], 11),
    ],
)
def test_vectorised_cross_transformer_matches_naive_reference(ratio, mode, last_exchange_layer, lengths, text_length):
    config = tiny_config(
        exchange_ratio=ratio, exchange_mode=mode, exchange_end_layer=last_exchange_layer, cross_dropout=0.0
    )
    torch.manual_seed(0)
    module = CrossTransformer(config).double().eval()
    torch.nn.init.normal_(module.text_cls)
    torch.nn.init.normal_(module.image_cls)
    text, image, text_mask = make_inputs(3, config.max_text_length, config.hidden_size, lengths, text_length=text_length)

    inputs = [text.clone().requires_grad_(), image.clone().requires_grad_()]
    output = module(*inputs, text_mask, output_exchange_masks=True)
    reference_inputs = [text.clone().requires_grad_(), image.clone().requires_grad_()]
    reference_text, reference_image, reference_masks = naive_cross_transformer(
        module, config, *reference_inputs, text_mask
    )

    torch.testing.assert_close(output.text_hidden_state, reference_text, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(output.image_hidden_state, reference_image, rtol=1e-9, atol=1e-9)
    exchange_layers = list(config.exchange_layers)
    assert len(output.text_exchange_masks) == len(exchange_layers)
    if ratio == 0:
        assert not any(mask.any() for mask in output.text_exchange_masks + output.image_exchange_masks)
    else:
        for layer_index, selected in enumerate(reference_masks):
            assert output.text_exchange_masks[layer_index].tolist() == selected[0]
            assert output.image_exchange_masks[layer_index].tolist() == selected[1]
        assert not (output.text_exchange_masks[0] & ~text_mask.bool()).any(), "padding was selected"
        if ratio == 1.0:
            assert torch.equal(output.text_exchange_masks[0], text_mask.bool())

    weights = torch.randn_like(output.text_hidden_state), torch.randn_like(output.image_hidden_state)
    loss = (output.text_hidden_state * weights[0]).sum() + (output.image_hidden_state * weights[1]).sum()
    reference_loss = (reference_text * weights[0]).sum() + (reference_image * weights[1]).sum()
    parameters = list(module.parameters())
    gradients = torch.autograd.grad(loss, inputs + parameters)
    reference_gradients = torch.autograd.grad(reference_loss, reference_inputs + parameters)
    for gradient, reference_gradient in zip(gradients, reference_gradients):
        torch.testing.assert_close(gradient, reference_gradient, rtol=1e-8, atol=1e-9)


def test_selected_counts_follow_ceil_theta_n_valid():
    num_valid = torch.tensor([30, 10, 1, 0, 7, 64])
    assert num_tokens_to_exchange(0.1, num_valid).tolist() == [3, 1, 1, 0, 1, 7]
    assert num_tokens_to_exchange(0.0, num_valid).tolist() == [0] * 6
    assert num_tokens_to_exchange(1.0, num_valid).tolist() == num_valid.tolist()


def test_cls_attention_rows_are_distributions_that_ignore_padding():
    config = tiny_config(cross_dropout=0.0)
    module = CrossTransformer(config).eval()
    torch.nn.init.normal_(module.text_cls)
    torch.nn.init.normal_(module.image_cls)
    text, image, text_mask = make_inputs(2, config.max_text_length, config.hidden_size, [16, 5])
    output = module(text.float(), image.float(), text_mask, output_cls_attentions=True)
    assert len(output.text_cls_attentions) == config.num_cross_layers
    for rows in output.text_cls_attentions + output.image_cls_attentions:
        torch.testing.assert_close(rows.sum(-1), torch.ones(2))
    assert (output.text_cls_attentions[0][1, 6:] == 0).all()
    assert (output.text_cls_attentions[0][1, :6] > 0).all()


def selection(cls_rows, valid, ratio, dtype=torch.float32):
    """The exchange's selection for cls attention rows given without the cls position (the same for both streams)."""
    cls_rows = torch.as_tensor(cls_rows, dtype=dtype)
    valid = torch.as_tensor(valid, dtype=torch.bool)
    states = torch.zeros(*cls_rows.shape[:1], 1 + cls_rows.shape[1], 4, dtype=dtype)
    rows = F.pad(cls_rows, (1, 0), value=0.5)
    _, (text_selected, image_selected) = exchange_least_attended_tokens(
        [states, states], [rows, rows], [valid, valid], ratio
    )
    assert torch.equal(text_selected, image_selected)
    return text_selected


def test_tied_attention_goes_to_the_earlier_position():
    selected = selection(
        [
            [0.2, 0.1, 0.05, 0.1, 0.2, 0.1, 0.1, 0.15],  # the 0.05, then the first two of four tied 0.1s
            [0.125] * 8,  # all tied: the first three
            [0.3, 0.1, 0.3, 0.3, 0.3, 0.0, 0.0, 0.0],  # five valid, k = 2: the 0.1 and the first 0.3, never padding
            [0.2, 0.2, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2],  # a tied group of exactly k
        ],
        valid=[[True] * 8, [True] * 8, [True] * 5 + [False] * 3, [True] * 8],
        ratio=0.375,  # k = 3 of 8 valid tokens
    )
    assert [row.nonzero().flatten().tolist() for row in selected] == [[1, 2, 3], [0, 1, 2], [0, 1], [2, 3, 4]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_selection_on_heavily_tied_rows_follows_attention_then_position(ratio, dtype):
    generator = torch.Generator().manual_seed(0)
    # Three attention values only, so that most tokens tie; padding anywhere, some rows all padding.
    rows = torch.randint(0, 3, (300, 12), generator=generator).to(dtype) / 10
    valid = torch.rand(300, 12, generator=generator) < torch.rand(300, 1, generator=generator)
    selected = selection(rows, valid, ratio, dtype)
    for row, row_valid, row_selected in zip(rows.tolist(), valid.tolist(), selected.tolist()):
        candidates = [i for i in range(12) if row_valid[i]]
        k = math.ceil(Fraction(str(ratio)) * len(candidates))
        expected = sorted(sorted(candidates, key=lambda i: (row[i], i))[:k])
        assert [i for i in range(12) if row_selected[i]] == expected


def test_a_posts_outputs_do_not_depend_on_its_batch_when_the_grid_repeats_feature_cells():
    # timm's test_resnet turns 64 px into a 2 x 2 feature map, which the 4 x 4 grid repeats: the image tokens come in
    # groups of four exact copies (grid cell (r, c) copies feature cell (r // 2, c // 2)), and theta = 0.1 (k = 2 of
    # 16) takes part of a group.
    torch.manual_seed(0)
    model = MuSEForTokenClassification(tiny_config(exchange_ratio=0.1)).eval()
    torch.nn.init.normal_(model.tagger.classifier.weight, std=1.0)
    processor = tiny_processor(image_size=64)
    posts = ["Lionel Messi arrives in Paris tonight", "rain", "the mayor of London meets fans", "great game"]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in posts]
    diagnostics = dict(output_cls_attentions=True, output_exchange_masks=True)
    with torch.no_grad():
        together = model(**processor(images=images, text=posts, return_tensors="pt"), **diagnostics)

    copy_group = torch.tensor([row // 2 * 2 + column // 2 for row in range(4) for column in range(4)])
    first_layer_attention = together.image_cls_attentions[0][:, 1:]
    for group in range(4):
        members = first_layer_attention[:, copy_group == group]
        assert torch.equal(members, members[:, :1].expand_as(members)), "copies should tie exactly"
    first_exchange = together.image_exchange_masks[0]
    split_groups = 0
    for post_selected in first_exchange:
        for group in range(4):
            members = post_selected[copy_group == group]
            if 0 < members.sum() < len(members):
                split_groups += 1
                # The first exchange layer's copies still tie: the earliest of them are taken.
                assert members.tolist() == sorted(members.tolist(), reverse=True)
    assert split_groups > 0, "the test needs a tie that k cuts through"

    for index, (image, post) in enumerate(zip(images, posts)):
        with torch.no_grad():
            alone = model(**processor(images=[image], text=[post], return_tensors="pt"), **diagnostics)
        length = alone.logits.shape[1]
        for layer, (image_mask, text_mask) in enumerate(zip(alone.image_exchange_masks, alone.text_exchange_masks)):
            assert torch.equal(image_mask[0], together.image_exchange_masks[layer][index]), (index, layer)
            assert torch.equal(text_mask[0], together.text_exchange_masks[layer][index, :length]), (index, layer)
        torch.testing.assert_close(alone.logits[0], together.logits[index, :length], atol=1e-5, rtol=0)
        assert torch.equal(alone.predicted_tag_ids[0], together.predicted_tag_ids[index, :length])
