"""Tests of the text-to-image regularizer (L_ti, paper eq. 5): conditional PixelCNN++ and its loss."""

import math

import pytest
import torch
from tiny_models import overfitting_losses

from modeling_muse.pixelcnn_decoder import (
    PixelCNNPlusPlusDecoder,
    discretized_mix_logistic_nll,
    sample_from_discretized_mix_logistic,
)

CONDITION_DIM = 4


def make_decoder(seed: int = 0, **kwargs) -> PixelCNNPlusPlusDecoder:
    torch.manual_seed(seed)
    options = dict(num_filters=8, num_resnet_blocks=1, num_mixtures=2, dropout=0.0)
    options.update(kwargs)
    return PixelCNNPlusPlusDecoder(CONDITION_DIM, **options)


def random_images(batch: int, size: int, seed: int = 1, channels: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, size, size), generator=generator).float() / 255 * 2 - 1


def to_levels(images: torch.Tensor) -> torch.Tensor:
    return (images + 1) * 127.5


# ----- discretized logistic mixture likelihood -------------------------------------------------


def logistic_cdf(value: float, mean: float, scale: float) -> float:
    return 1.0 / (1.0 + math.exp(-(value - mean) / scale))


def hand_nll(levels, logits, means, log_scales, raw_coeffs) -> float:
    """-log p of one RGB pixel (integer levels 0..255) under the mixture, straight from the
    definition in PixelCNN++ (sec. 2.1-2.2)."""
    x = [k / 255 * 2 - 1 for k in levels]
    normaliser = sum(math.exp(logit) for logit in logits)
    likelihood = 0.0
    for m in range(len(logits)):
        a, b, c = (math.tanh(raw_coeffs[p][m]) for p in range(3))
        centres = [means[0][m], means[1][m] + a * x[0], means[2][m] + b * x[0] + c * x[1]]
        component = math.exp(logits[m]) / normaliser
        for channel in range(3):
            scale = math.exp(log_scales[channel][m])
            upper = logistic_cdf(x[channel] + 1 / 255, centres[channel], scale)
            lower = logistic_cdf(x[channel] - 1 / 255, centres[channel], scale)
            if levels[channel] == 0:
                component *= upper
            elif levels[channel] == 255:
                component *= 1.0 - lower
            else:
                component *= upper - lower
        likelihood += component
    return -math.log(likelihood)


@pytest.mark.parametrize("num_mixtures", [1, 2])
def test_nll_matches_direct_computation_including_edge_values(num_mixtures):
    generator = torch.Generator().manual_seed(3)
    pixel_levels = [(0, 128, 255), (255, 0, 37), (200, 255, 0), (12, 90, 171)]
    images = torch.tensor(pixel_levels, dtype=torch.float64).T.reshape(1, 3, 1, 4) / 255 * 2 - 1

    logits = torch.randn(num_mixtures, 4, generator=generator, dtype=torch.float64)
    means = torch.rand(3, num_mixtures, 4, generator=generator, dtype=torch.float64) * 1.6 - 0.8
    log_scales = torch.rand(3, num_mixtures, 4, generator=generator, dtype=torch.float64) * 0.7 - 1.2
    raw_coeffs = torch.randn(3, num_mixtures, 4, generator=generator, dtype=torch.float64)
    params = torch.cat(
        [logits, means.reshape(-1, 4), log_scales.reshape(-1, 4), raw_coeffs.reshape(-1, 4)]
    ).reshape(1, 10 * num_mixtures, 1, 4)

    nll = discretized_mix_logistic_nll(images, params)
    assert nll.shape == (1, 1, 4)
    for pixel, levels in enumerate(pixel_levels):
        expected = hand_nll(
            levels,
            logits[:, pixel].tolist(),
            means[:, :, pixel].tolist(),
            log_scales[:, :, pixel].tolist(),
            raw_coeffs[:, :, pixel].tolist(),
        )
        assert nll[0, 0, pixel].item() == pytest.approx(expected, rel=1e-9)


def test_nll_probabilities_of_all_256_levels_sum_to_one():
    # Only true if 0 and 255 take the CDF tails: the bins then tile the whole real line.
    generator = torch.Generator().manual_seed(4)
    levels = torch.arange(256, dtype=torch.float64)
    images = (levels / 255 * 2 - 1).reshape(1, 1, 1, 256)
    logits = torch.randn(3, 1, generator=generator)
    means = torch.rand(3, 1, generator=generator) - 0.5
    log_scales = -torch.rand(3, 1, generator=generator)
    one_pixel = torch.cat([logits, means, log_scales]).to(torch.float64)
    params = one_pixel.expand(9, 256).reshape(1, 9, 1, 256)
    probabilities = torch.exp(-discretized_mix_logistic_nll(images, params))
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-9)


def test_nll_uses_the_density_for_vanishing_bin_probabilities():
    # A sharp component far from the observed value: the CDF difference underflows to 0, so the
    # log-likelihood must come from the density at the bin centre times the bin width.
    x = 191 / 255 * 2 - 1
    mean, log_scale = -0.9, -6.5
    images = torch.tensor([[[[x]]]], dtype=torch.float32)
    params = torch.tensor([[[[0.0]], [[mean]], [[log_scale]]]], dtype=torch.float32, requires_grad=True)
    nll = discretized_mix_logistic_nll(images, params)

    scale = math.exp(log_scale)
    z = (x - mean) / scale
    log_density = -z - math.log(scale) - 2 * math.log1p(math.exp(-z))
    assert nll.item() == pytest.approx(-(log_density + math.log(2 / 255)), rel=1e-5)
    nll.sum().backward()
    assert torch.isfinite(params.grad).all()
    assert params.grad[0, 1].abs().item() > 0


# ----- the network ------------------------------------------------------------------------------


def test_outputs_are_causal_in_raster_order():
    size = 8
    decoder = make_decoder(num_mixtures=2).double().eval()
    images = random_images(1, size).double().requires_grad_(True)
    condition = torch.randn(1, CONDITION_DIM, dtype=torch.float64)

    for row in range(size):
        for col in range(size):
            images.grad = None
            decoder.mixture_parameters(images, condition)[:, :, row, col].sum().backward()
            depends = images.grad[0].abs().sum(dim=0) != 0
            future = torch.ones(size, size, dtype=torch.bool).flatten()
            future[: row * size + col] = False
            # Nothing at or after (row, col), in any channel, may influence the parameters.
            assert not depends.flatten()[future].any(), f"pixel {(row, col)} sees the future"
            # ... while the neighbours that it needs most are seen, including the up-right one
            # (the blind spot of the original PixelCNN that the two streams remove).
            if col > 0:
                assert depends[row, col - 1]
            if row > 0:
                assert depends[row - 1, col]
                assert depends[row - 1, min(col + 1, size - 1)]


def test_cropping_bottom_rows_leaves_upper_outputs_unchanged():
    # The sampler relies on this to run the network on the rows up to the current one only.
    decoder = make_decoder().eval()
    images = random_images(2, 8)
    condition = torch.randn(2, CONDITION_DIM)
    with torch.no_grad():
        full = decoder.mixture_parameters(images, condition)
        top = decoder.mixture_parameters(images[:, :, :4], condition)
    torch.testing.assert_close(top, full[:, :, :4], rtol=1e-5, atol=1e-5)


def test_loss_is_the_image_nll_and_bits_per_dim_its_per_sub_pixel_value():
    decoder = make_decoder()
    images = random_images(2, 8)
    out = decoder(images, torch.randn(2, CONDITION_DIM))
    assert out.params.shape == (2, 20, 8, 8)
    per_pixel = discretized_mix_logistic_nll(images, out.params)
    torch.testing.assert_close(out.loss, (per_pixel[0].sum() + per_pixel[1].sum()) / 2)
    assert out.bits_per_dim.item() == pytest.approx(out.loss.item() / (3 * 8 * 8 * math.log(2)), rel=1e-6)
    assert not out.bits_per_dim.requires_grad


def test_default_size_has_ten_params_per_mixture():
    decoder = PixelCNNPlusPlusDecoder(CONDITION_DIM, num_filters=4, num_resnet_blocks=1)
    out = decoder(random_images(1, 32), torch.randn(1, CONDITION_DIM))
    assert out.params.shape == (1, 100, 32, 32)


def test_loss_is_finite_and_decreases_when_overfitting_a_tiny_batch():
    decoder = make_decoder()
    images = random_images(2, 8)
    condition = torch.randn(2, CONDITION_DIM)
    losses = overfitting_losses(lambda: decoder(images, condition).loss, decoder.parameters(), steps=60)
    assert losses[-1] < 0.8 * losses[0]


def test_gradient_reaches_condition():
    decoder = make_decoder(dropout=0.5)
    condition = torch.randn(2, CONDITION_DIM, requires_grad=True)
    decoder(random_images(2, 8), condition).loss.backward()
    assert torch.isfinite(condition.grad).all()
    assert condition.grad.abs().sum(dim=1).min() > 0


def test_rejects_sizes_that_the_strided_stages_cannot_halve_twice():
    decoder = make_decoder()
    with pytest.raises(ValueError):
        decoder(random_images(1, 6), torch.randn(1, CONDITION_DIM))
    with pytest.raises(ValueError):
        decoder.sample(torch.randn(1, CONDITION_DIM), image_size=10)


# ----- sampling ---------------------------------------------------------------------------------


def test_mixture_sampler_follows_dominant_component_and_channel_coefficients():
    # Two components, the first certain and razor-sharp: R = its mean, G = 0.5 * R, B = -0.25 * G.
    params = torch.zeros(1, 20, 1, 1)
    params[0, 0], params[0, 1] = 30.0, -30.0  # logits
    params[0, 2] = 0.5  # mean of R in component 0 (means block: channel-major, c * M + m)
    params[0, 8:14] = -7.0  # log-scales
    params[0, 14] = math.atanh(0.5)  # G <- R coefficient of component 0
    params[0, 18] = math.atanh(-0.25)  # B <- G coefficient of component 0
    sample = sample_from_discretized_mix_logistic(params, generator=torch.Generator().manual_seed(0))
    red = round(1.5 * 127.5) / 127.5 - 1
    green = round((0.5 * red + 1) * 127.5) / 127.5 - 1
    blue = round((-0.25 * green + 1) * 127.5) / 127.5 - 1
    torch.testing.assert_close(sample.flatten(), torch.tensor([red, green, blue]), rtol=0, atol=1e-6)


def test_mixture_sampler_draws_from_the_distribution_the_nll_scores():
    # One grey-level pixel, three components (one near the top edge so that level 255 has mass):
    # the histogram of many draws must match exp(-NLL) over the 256 levels.
    generator = torch.Generator().manual_seed(6)
    one_pixel = torch.tensor([[0.3], [-0.5], [0.2], [-0.6], [0.1], [0.95], [-1.2], [-2.0], [-1.6]])
    draws = 200_000
    samples = sample_from_discretized_mix_logistic(
        one_pixel.expand(9, draws).reshape(1, 9, 1, draws), generator=generator, image_channels=1
    )
    empirical = torch.bincount(to_levels(samples).round().long().flatten(), minlength=256).double() / draws

    grid = (torch.arange(256, dtype=torch.float64) / 255 * 2 - 1).reshape(1, 1, 1, 256)
    params = one_pixel.double().expand(9, 256).reshape(1, 9, 1, 256)
    probabilities = torch.exp(-discretized_mix_logistic_nll(grid, params)).flatten()
    assert probabilities[255] > 0.01
    total_variation = 0.5 * (empirical - probabilities).abs().sum().item()
    assert total_variation < 0.025


def test_sample_shape_range_grid_determinism_and_condition_dependence():
    decoder = make_decoder(num_mixtures=3)
    decoder.train()
    conditions = 3.0 * torch.randn(2, CONDITION_DIM, generator=torch.Generator().manual_seed(5))

    first = decoder.sample(conditions, image_size=8, generator=torch.Generator().manual_seed(7))
    assert decoder.training, "sampling must restore the training mode"
    assert first.shape == (2, 3, 8, 8)
    assert first.min() >= -1 and first.max() <= 1
    levels = to_levels(first)
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)

    again = decoder.sample(conditions, image_size=8, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(again, first, rtol=0, atol=0)

    # The same noise with the two conditions swapped: each image follows its condition.
    swapped = decoder.sample(conditions.flip(0), image_size=8, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(swapped, first)
    assert not torch.equal(first[0], first[1])
