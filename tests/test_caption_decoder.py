"""Tests of the image-captioning regularizer (L_it, paper eq. 6): Show, Attend and Tell decoder."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import overfitting_losses

from modeling_muse.caption_decoder import CaptionDecoder

FEATURE_DIM = 8
VOCAB = 13
NUM_REGIONS = 4


def make_decoder(seed: int = 0, **kwargs) -> CaptionDecoder:
    torch.manual_seed(seed)
    options = dict(decoder_dim=16, attention_dim=12, embedding_dim=10, dropout=0.0)
    options.update(kwargs)
    return CaptionDecoder(FEATURE_DIM, VOCAB, **options).eval()


def make_batch(lengths: list[int], total_length: int, seed: int = 1, num_regions: int = NUM_REGIONS):
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    features = torch.randn(batch, num_regions, FEATURE_DIM, generator=generator)
    ids = torch.randint(1, VOCAB, (batch, total_length), generator=generator)
    mask = torch.zeros(batch, total_length, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = ids * mask  # padding id 0, as BERT's [PAD]
    return features, ids, mask


def step_by_step_loss(decoder: CaptionDecoder, features, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's loss and attention weights written out here from Show, Attend and Tell: attention, gate and
    ``nn.LSTMCell`` step by step, every operation differentiated by autograd."""
    attention = decoder.attention
    keep_mask = mask.bool()
    step_mask = keep_mask[:, :-1] & keep_mask[:, 1:]
    mean_features = features.mean(dim=1)
    h, c = decoder.init_h(mean_features), decoder.init_c(mean_features)
    projected = attention.feature_proj(features)
    embeddings = decoder.embedding(ids[:, :-1])
    hiddens, alphas = [], []
    for t in range(ids.size(1) - 1):
        scores = attention.score(torch.relu(projected + attention.hidden_proj(h).unsqueeze(1))).squeeze(-1)
        alpha = scores.softmax(dim=-1)
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)
        gate = torch.sigmoid(decoder.f_beta(h))
        h_next, c_next = decoder.lstm(torch.cat([embeddings[:, t], gate * context], dim=-1), (h, c))
        keep = keep_mask[:, t].unsqueeze(-1)
        h, c = torch.where(keep, h_next, h), torch.where(keep, c_next, c)
        hiddens.append(h)
        alphas.append(alpha)
    hidden_states = torch.stack(hiddens, dim=1)
    token_nll = F.cross_entropy(decoder.fc(hidden_states[step_mask]), ids[:, 1:][step_mask], reduction="sum")
    has_steps = step_mask.any(dim=1).to(token_nll.dtype)
    weights = torch.stack(alphas, dim=1) * step_mask.unsqueeze(-1)
    penalty = ((1.0 - weights.sum(dim=1)).pow(2).sum(dim=-1) * has_steps).sum() / has_steps.sum()
    return token_nll / has_steps.sum() + decoder.attention_penalty_weight * penalty, weights


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_decoder_is_show_attend_and_tell_step_by_step(dtype, tolerance):
    # Right padding, left padding, a gap inside a post and a post without any real step.
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1],
                         [1, 1, 0, 1, 1, 0, 1], [1, 0, 0, 0, 0, 0, 0]])
    decoder = make_decoder(attention_penalty_weight=0.7).to(dtype)
    features = torch.randn(5, NUM_REGIONS, FEATURE_DIM, generator=torch.Generator().manual_seed(3), dtype=dtype)
    ids = torch.randint(1, VOCAB, mask.shape, generator=torch.Generator().manual_seed(4)) * mask
    results = []
    for compute in (lambda f: decoder(f, ids, mask), lambda f: step_by_step_loss(decoder, f, ids, mask)):
        decoder.zero_grad()
        leaf = features.clone().requires_grad_(True)
        output = compute(leaf)
        loss, weights = output if isinstance(output, tuple) else (output.loss, output.attention_weights)
        loss.backward()
        gradients = {name: parameter.grad.clone() for name, parameter in decoder.named_parameters()}
        results.append((loss.detach(), weights.detach(), leaf.grad, gradients))
    (decoded_loss, decoded_weights, decoded_grad, decoded_params), (loss, weights, grad, params) = results
    torch.testing.assert_close(decoded_loss, loss, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(decoded_weights, weights, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(decoded_grad, grad, rtol=tolerance, atol=tolerance)
    assert decoded_params.keys() == params.keys()
    for name in params:
        torch.testing.assert_close(decoded_params[name], params[name], rtol=tolerance, atol=tolerance, msg=name)


def test_appending_padding_does_not_change_loss():
    decoder = make_decoder()
    features, ids, mask = make_batch([7, 4, 2], total_length=7)
    reference = decoder(features, ids, mask)

    # Extra padded positions, filled with arbitrary ids to show that padding ids are never read.
    extra = torch.randint(1, VOCAB, (3, 5))
    padded = decoder(features, torch.cat([ids, extra], dim=1), torch.cat([mask, torch.zeros_like(extra)], dim=1))
    for name in ("loss", "token_loss", "attention_penalty"):
        torch.testing.assert_close(getattr(padded, name), getattr(reference, name), rtol=1e-6, atol=1e-6)

    # An extra sample that is all padding has no real step and must not count either.
    extra_features = torch.cat([features, torch.randn(1, NUM_REGIONS, FEATURE_DIM)])
    extra_ids = torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)])
    extra_mask = torch.cat([mask, torch.zeros(1, 7, dtype=torch.long)])
    with_empty_sample = decoder(extra_features, extra_ids, extra_mask)
    torch.testing.assert_close(with_empty_sample.loss, reference.loss, rtol=1e-6, atol=1e-6)


def test_left_padding_gives_the_same_loss_as_right_padding():
    decoder = make_decoder()
    features, ids, mask = make_batch([6, 3], total_length=6)
    right = decoder(features, ids, mask)

    left_ids = torch.zeros_like(ids)
    left_mask = torch.zeros_like(mask)
    for row in range(2):
        length = int(mask[row].sum())
        left_ids[row, 6 - length :] = ids[row, :length]
        left_mask[row, 6 - length :] = 1
    left = decoder(features, left_ids, left_mask)
    torch.testing.assert_close(left.loss, right.loss, rtol=1e-6, atol=1e-6)


def test_batched_loss_equals_per_sample_computation():
    decoder = make_decoder(attention_penalty_weight=0.7)
    lengths = [6, 3, 5]
    features, ids, mask = make_batch(lengths, total_length=6)
    batched = decoder(features, ids, mask)

    token_sum, token_count, penalties = 0.0, 0, []
    for row, length in enumerate(lengths):
        alone = decoder(features[row : row + 1], ids[row : row + 1, :length], mask[row : row + 1, :length])
        token_sum += alone.token_loss.item()
        token_count += 1
        penalties.append(alone.attention_penalty.item())
    assert batched.token_loss.item() == pytest.approx(token_sum / token_count, rel=1e-5)
    assert batched.attention_penalty.item() == pytest.approx(sum(penalties) / len(penalties), rel=1e-5)


def test_token_loss_is_the_caption_nll_over_real_targets():
    decoder = make_decoder()
    features, ids, mask = make_batch([5, 3], total_length=5)
    out = decoder(features, ids, mask, return_logits=True)
    assert out.logits.shape == (2, 4, VOCAB)

    caption_nll = [0.0, 0.0]
    for row in range(2):
        for step in range(4):
            if mask[row, step] and mask[row, step + 1]:
                caption_nll[row] += F.cross_entropy(out.logits[row, step], ids[row, step + 1]).item()
    # Per caption: summed over its real targets; over the batch: averaged over captions.
    assert out.token_loss.item() == pytest.approx(sum(caption_nll) / 2, rel=1e-5)
    assert decoder(features, ids, mask).logits is None


def test_attention_penalty_sums_attention_over_real_steps_only():
    # With a single image region every attention weight is 1, so sum_t alpha_t is the number of
    # real steps of the sample and the penalty is known in closed form.
    decoder = make_decoder(attention_penalty_weight=0.5)
    lengths = [6, 4, 2]
    features, ids, mask = make_batch(lengths, total_length=6, num_regions=1)
    out = decoder(features, ids, mask)
    expected = 0.5 * sum((1 - (length - 1)) ** 2 for length in lengths) / len(lengths)
    assert out.attention_penalty.item() == pytest.approx(expected, rel=1e-6)
    assert torch.all(out.attention_weights[2, 1:] == 0)
    torch.testing.assert_close(out.loss, out.token_loss + out.attention_penalty)


def test_loss_is_finite_and_decreases_when_overfitting_a_tiny_batch():
    decoder = make_decoder().train()
    features, ids, mask = make_batch([6, 5, 3], total_length=6)
    losses = overfitting_losses(lambda: decoder(features, ids, mask).loss, decoder.parameters(), steps=40)
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_reaches_image_features():
    decoder = make_decoder()
    features, ids, mask = make_batch([5, 3], total_length=5)
    features.requires_grad_(True)
    decoder(features, ids, mask).loss.backward()
    assert features.grad is not None
    assert torch.isfinite(features.grad).all()
    assert features.grad.abs().sum(dim=(1, 2)).min() > 0


def test_rejects_mismatched_inputs():
    decoder = make_decoder()
    features, ids, mask = make_batch([3], total_length=3)
    with pytest.raises(ValueError):
        decoder(features, ids, mask[:, :2])
    with pytest.raises(ValueError):
        decoder(features[..., :4], ids, mask)


def test_a_muse_model_starts_its_caption_decoder_from_small_uniform_weights():
    """MuSE's generic initialisation (normal, std 0.02) must not replace the decoder's own (uniform +-0.1)."""
    from tiny_models import tiny_config

    from modeling_muse import MuSEForTokenClassification

    torch.manual_seed(0)
    model = MuSEForTokenClassification(tiny_config(caption_loss_weight=1e-4, caption_decoder_dim=64))
    (decoder,) = [module for module in model.modules() if isinstance(module, CaptionDecoder)]
    for weight in (decoder.fc.weight, decoder.embedding.weight):
        # Uniform on [-0.1, 0.1]: std 0.1 / sqrt(3) = 0.0577, every value within the bounds.
        assert abs(weight.std().item() - 0.1 / 3**0.5) < 0.002 and weight.abs().max().item() <= 0.1
    assert torch.count_nonzero(decoder.fc.bias) == 0
