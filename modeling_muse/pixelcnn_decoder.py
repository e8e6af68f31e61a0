"""Text-to-image embedding regularizer of MuSE (the "ImageDecoder" of paper eq. 5, loss L_ti).

MuSE regularizes the text embeddings by asking a conditional image model to generate the post's
image from them: I_hat = ImageDecoder(T_n) (paper eq. 5), where T_n are the noised text tokens
(eq. 3), pooled by the caller into one condition vector. The paper uses PixelCNN++ (Salimans et
al., 2017) on a 32x32 copy of the image; its loss L_ti, the discretized logistic mixture negative
log-likelihood, enters the total objective with weight beta (paper eq. 14).

The network follows PixelCNN++:

* two streams of shifted convolutions instead of masked ones: the "u" stream sees every pixel in
  the rows strictly above, the "ul" stream the pixels above and to the left; together the output
  at (i, j) sees only pixels before (i, j) in raster order, without the blind spot of the original
  PixelCNN, and none of (i, j)'s own sub-pixels (the dependence between R, G and B of one pixel
  lives in the mixture, through its autoregressive channel coefficients);
* gated resnet blocks with concat_elu, dropout and weight-normalised convolutions;
* a U-Net-like pass: three stages at 32, 16 and 8 pixels on the way down (strided shifted
  convolutions), three stages on the way back up (strided shifted transposed convolutions), with
  a skip connection from every up-pass block into the matching down-pass block;
* conditioning as in conditional PixelCNN (van den Oord et al., 2016): a linear projection of the
  condition vector is added to the gate pre-activations of every gated resnet block.

Any image side divisible by 4 works (the two strided stages halve it twice); MuSE uses 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm
from transformers.modeling_layers import GradientCheckpointingLayer


# Below this bin probability the difference of two logistic CDFs loses all its float32 digits;
# the log-likelihood then falls back to density-at-bin-centre times bin width (PixelCNN++).
_MIN_BIN_PROBABILITY = 1e-5
# PixelCNN++ floors the log-scales so that a component cannot put all its mass on one bin and
# make the loss (and its gradient) blow up.
_MIN_LOG_SCALE = -7.0
# The stride-2 stages halve the image side twice.
_SIZE_MULTIPLE = 4


@dataclass
class PixelCNNDecoderOutput:
    """Result of :class:`PixelCNNPlusPlusDecoder`.

    Attributes:
        loss: the text-to-image loss L_ti (paper eq. 5 and 14): the negative log-likelihood of each image
            in nats, summed over its C*H*W sub-pixels and averaged over the batch (the PixelCNN++ image
            likelihood; this scale is the one the paper's small weight beta = 1e-4 suits).
        bits_per_dim: ``loss / (C*H*W * ln 2)``, detached: the usual PixelCNN++ figure, for logging.
        params: (B, num_mixture_params, H, W) discretized logistic mixture parameters, laid out as
            described in :func:`discretized_mix_logistic_nll`.
    """

    loss: Tensor
    bits_per_dim: Tensor
    params: Tensor


def num_mixture_params(num_mixtures: int, image_channels: int = 3) -> int:
    """Channels of the mixture parameter map: per mixture one logit, a mean and a log-scale per
    channel, and one autoregressive coefficient per ordered pair of channels (10 per mixture for RGB)."""
    return num_mixtures * (1 + 2 * image_channels + image_channels * (image_channels - 1) // 2)


def _unpack_mixture_params(params: Tensor, image_channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split a parameter map into logits (B, M, H, W), means and log-scales (B, C, M, H, W) and
    tanh-squashed channel coefficients (B, C(C-1)/2, M, H, W)."""
    batch, total, height, width = params.shape
    per_mixture = num_mixture_params(1, image_channels)
    if total % per_mixture != 0:
        raise ValueError(
            f"a mixture over {image_channels} channels needs a multiple of {per_mixture} parameter "
            f"channels, got {total}"
        )
    num_mixtures = total // per_mixture
    num_pairs = image_channels * (image_channels - 1) // 2
    logits, means, log_scales, coeffs = params.split(
        [num_mixtures, image_channels * num_mixtures, image_channels * num_mixtures, num_pairs * num_mixtures],
        dim=1,
    )
    means = means.reshape(batch, image_channels, num_mixtures, height, width)
    log_scales = log_scales.reshape(batch, image_channels, num_mixtures, height, width).clamp(min=_MIN_LOG_SCALE)
    coeffs = torch.tanh(coeffs.reshape(batch, num_pairs, num_mixtures, height, width))
    return logits, means, log_scales, coeffs


def _autoregressive_means(means: Tensor, coeffs: Tensor, channel_values: Tensor) -> Tensor:
    """Shift each channel's means by the coefficient-weighted values of the channels before it.

    ``channel_values`` broadcasts against ``means`` (B, C, M, H, W); pairs (c, c') with c' < c are
    ordered (1, 0), (2, 0), (2, 1), ... as in PixelCNN++.
    """
    shifted = [means[:, 0]]
    pair = 0
    for channel in range(1, means.size(1)):
        mean = means[:, channel]
        for previous in range(channel):
            mean = mean + coeffs[:, pair] * channel_values[:, previous]
            pair += 1
        shifted.append(mean)
    return torch.stack(shifted, dim=1)


def discretized_mix_logistic_nll(images: Tensor, params: Tensor, num_bits: int = 8) -> Tensor:
    """Negative log-likelihood of images under a discretized logistic mixture (PixelCNN++, sec. 2.1-2.2).

    Every pixel is modelled by a mixture of M components; within a component the channels are
    discretized logistics whose means depend linearly on the preceding channels of the same pixel
    (PixelCNN++ sec. 2.2), so the mixture is joint over the channels of a pixel.

    Args:
        images: (B, C, H, W) values (k / (2**num_bits - 1)) * 2 - 1 for integers k, i.e. in [-1, 1].
        params: (B, M * (1 + 2C + C(C-1)/2), H, W), channels laid out as
            ``[M logits | C*M means | C*M log-scales | C(C-1)/2*M coefficients]``, each block
            channel-major (index ``c * M + m``); coefficients pass through tanh, log-scales are
            floored at -7.
        num_bits: bit depth of the data; the bins have width 2 / (2**num_bits - 1).

    Returns:
        (B, H, W) negative log-likelihood of every pixel, in nats, summed over its C sub-pixels.
        Divide the mean by C for the per-sub-pixel value, and by ln 2 for bits per dimension.

    The lowest value uses the CDF mass of (-inf, -1 + half bin], the highest that of
    [1 - half bin, inf); a bin whose probability underflows (below 1e-5) uses the density at the
    bin centre times the bin width, which stays finite and keeps useful gradients.
    """
    same_pixels = images.shape[0] == params.shape[0] and images.shape[2:] == params.shape[2:]
    if images.dim() != 4 or params.dim() != 4 or not same_pixels:
        raise ValueError(
            "images (B, C, H, W) and params (B, P, H, W) must agree, "
            f"got {tuple(images.shape)} and {tuple(params.shape)}"
        )
    logits, means, log_scales, coeffs = _unpack_mixture_params(params, images.size(1))
    half_bin = 1.0 / (2**num_bits - 1)

    x = images.unsqueeze(2)
    centered = x - _autoregressive_means(means, coeffs, x)
    inv_scale = torch.exp(-log_scales)
    plus_in = inv_scale * (centered + half_bin)
    min_in = inv_scale * (centered - half_bin)
    mid_in = inv_scale * centered

    log_cdf_plus = F.logsigmoid(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    bin_probability = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
    # The clamp only keeps the unselected branch finite: torch.where still backpropagates a zero
    # through it, and 0 * inf would be NaN.
    log_bin = torch.where(
        bin_probability > _MIN_BIN_PROBABILITY,
        torch.log(bin_probability.clamp(min=1e-12)),
        log_pdf_mid + math.log(2.0 * half_bin),
    )
    log_probs = torch.where(
        x < -1.0 + half_bin,
        log_cdf_plus,
        torch.where(x > 1.0 - half_bin, log_one_minus_cdf_min, log_bin),
    )
    log_joint = log_probs.sum(dim=1) + F.log_softmax(logits, dim=1)
    return -torch.logsumexp(log_joint, dim=1)


def _quantize(values: Tensor, num_bits: int) -> Tensor:
    levels = 2**num_bits - 1
    return torch.round((values + 1.0) * (levels / 2.0)) * (2.0 / levels) - 1.0


def sample_from_discretized_mix_logistic(
    params: Tensor,
    generator: torch.Generator | None = None,
    image_channels: int = 3,
    num_bits: int = 8,
) -> Tensor:
    """Draw one image from a discretized logistic mixture parameter map (PixelCNN++).

    Picks a component per pixel (Gumbel-max), samples the channels in order from that component's
    logistics, each mean shifted by the already sampled channels, and rounds every value to the
    ``num_bits`` grid before the next channel reads it: the model was trained on grid values.

    Args:
        params: (B, P, H, W) parameters laid out as in :func:`discretized_mix_logistic_nll`.
        generator: source of all the randomness, for reproducible samples.
        image_channels: C, the number of channels the parameters describe.
        num_bits: bit depth of the output grid.

    Returns:
        (B, C, H, W) values on the grid (k / (2**num_bits - 1)) * 2 - 1, k integer, in [-1, 1].
    """
    logits, means, log_scales, coeffs = _unpack_mixture_params(params, image_channels)
    tiny = torch.finfo(params.dtype).tiny

    uniform = torch.rand(logits.shape, generator=generator, device=params.device, dtype=params.dtype)
    exponential = -torch.log(uniform.clamp(min=tiny))
    gumbel = -torch.log(exponential.clamp(min=tiny))
    component = (logits + gumbel).argmax(dim=1, keepdim=True)

    def pick(per_component: Tensor) -> Tensor:
        index = component.unsqueeze(1).expand(-1, per_component.size(1), -1, -1, -1)
        return per_component.gather(2, index).squeeze(2)

    means, log_scales, coeffs = pick(means), pick(log_scales), pick(coeffs)
    uniform = torch.rand(means.shape, generator=generator, device=params.device, dtype=params.dtype)
    uniform = uniform.clamp(1e-5, 1.0 - 1e-5)
    noise = torch.exp(log_scales) * (torch.log(uniform) - torch.log1p(-uniform))

    channels = []
    pair = 0
    for channel in range(image_channels):
        value = means[:, channel] + noise[:, channel]
        for previous in range(channel):
            value = value + coeffs[:, pair] * channels[previous]
            pair += 1
        channels.append(_quantize(value.clamp(-1.0, 1.0), num_bits))
    return torch.stack(channels, dim=1)


def _concat_elu(x: Tensor) -> Tensor:
    # ELU of both x and -x keeps the information of negative pre-activations (PixelCNN++). In place on the fresh
    # concatenation (whose backward does not read it): one full-size tensor less per call.
    return F.elu(torch.cat([x, -x], dim=1), inplace=True)


def _down_shift(x: Tensor) -> Tensor:
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def _right_shift(x: Tensor) -> Tensor:
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv2d(nn.Module):
    """Convolution whose output at row i only reads input rows <= i (any column nearby).

    The kernel (default 2x3) is placed so that its last row sits on the output row and its
    columns are centred: padding goes on the top, left and right, never on the bottom.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (2, 3), stride: int = 1
    ) -> None:
        super().__init__()
        rows, cols = kernel_size
        self.padding = ((cols - 1) // 2, (cols - 1) // 2, rows - 1, 0)
        self.conv = weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.padding))


class DownRightShiftedConv2d(nn.Module):
    """Convolution whose output at (i, j) only reads inputs at rows <= i and columns <= j."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (2, 2), stride: int = 1
    ) -> None:
        super().__init__()
        rows, cols = kernel_size
        self.padding = (cols - 1, 0, rows - 1, 0)
        self.conv = weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.padding))


class DownShiftedConvTranspose2d(nn.Module):
    """Stride-2 upsampling (2x3 kernel) whose output row o only reads input row o // 2.

    Kept columns are centred; rows beyond 2H (which would read ahead) are cut.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        # dim=1: a transposed convolution's weight is (in, out, kh, kw); normalise per output channel.
        self.deconv = weight_norm(nn.ConvTranspose2d(channels, channels, (2, 3), stride=2), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        return self.deconv(x)[:, :, : 2 * height, 1 : 1 + 2 * width]


class DownRightShiftedConvTranspose2d(nn.Module):
    """Stride-2 upsampling (2x2 kernel) whose output (o, p) only reads input (o // 2, p // 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.deconv = weight_norm(nn.ConvTranspose2d(channels, channels, (2, 2), stride=2), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.deconv(x)


class GatedResnet(GradientCheckpointingLayer):
    """PixelCNN++ gated resnet block, conditioned as in conditional PixelCNN.

    x + a * sigmoid(b), where [a, b] = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(concat_elu(skip)))))
    + W h, and W h is the projection of the condition vector h.

    A `GradientCheckpointingLayer`, so that MuSE's ``gradient_checkpointing_enable`` checkpoints the decoder block
    by block: its full-resolution feature maps are the largest activations of a training step. The callers pass
    every tensor positionally, which reentrant checkpointing needs for their gradients.
    """

    def __init__(
        self,
        num_filters: int,
        conv_type: type[DownShiftedConv2d] | type[DownRightShiftedConv2d],
        condition_dim: int,
        dropout: float,
        skip_channels: int = 0,
    ) -> None:
        super().__init__()
        self.conv_in = conv_type(2 * num_filters, num_filters)
        self.skip = (
            weight_norm(nn.Conv2d(2 * skip_channels, num_filters, kernel_size=1)) if skip_channels else None
        )
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv_type(2 * num_filters, 2 * num_filters)
        # No bias: conv_out already has one.
        self.condition_proj = nn.Linear(condition_dim, 2 * num_filters, bias=False)

    def forward(self, x: Tensor, condition: Tensor, skip: Tensor | None = None) -> Tensor:
        # The additions go in place into the convolutions' outputs, which their backward does not read.
        hidden = self.conv_in(_concat_elu(x))
        if self.skip is not None:
            hidden += self.skip(_concat_elu(skip))
        hidden = self.conv_out(self.dropout(_concat_elu(hidden)))
        hidden += self.condition_proj(condition)[:, :, None, None]
        value, gate = hidden.chunk(2, dim=1)
        return torch.addcmul(x, value, torch.sigmoid(gate))


class PixelCNNPlusPlusDecoder(nn.Module):
    """Conditional PixelCNN++ used as MuSE's text-to-image regularizer ImageDecoder (paper eq. 5).

    Args:
        condition_dim: width of the condition vector (pooled from the noised text tokens T_n).
        num_filters: channels of both streams (80 in the paper's reference setting).
        num_resnet_blocks: gated resnet blocks per up-pass stage (5); the down pass has this many
            at the lowest resolution and one more at the other two, to consume the strided outputs.
        num_mixtures: logistic mixture components per pixel (10).
        dropout: dropout inside the gated resnet blocks.
        image_channels: channels of the modelled image (3).
    """

    def __init__(
        self,
        condition_dim: int,
        num_filters: int = 80,
        num_resnet_blocks: int = 5,
        num_mixtures: int = 10,
        dropout: float = 0.5,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        self.condition_dim = condition_dim
        self.image_channels = image_channels
        self.num_mixtures = num_mixtures
        nf = num_filters

        def stage(
            conv_type: type[DownShiftedConv2d] | type[DownRightShiftedConv2d], count: int, skip_channels: int
        ) -> nn.ModuleList:
            return nn.ModuleList(
                GatedResnet(nf, conv_type, condition_dim, dropout, skip_channels) for _ in range(count)
            )

        # The extra input channel is all ones, so that the zero padding of the shifted
        # convolutions can be told apart from black pixels at the borders.
        in_channels = image_channels + 1
        self.u_init = DownShiftedConv2d(in_channels, nf, (2, 3))
        self.ul_init_above = DownShiftedConv2d(in_channels, nf, (1, 3))
        self.ul_init_left = DownRightShiftedConv2d(in_channels, nf, (2, 1))

        self.up_u = nn.ModuleList(stage(DownShiftedConv2d, num_resnet_blocks, 0) for _ in range(3))
        self.up_ul = nn.ModuleList(stage(DownRightShiftedConv2d, num_resnet_blocks, nf) for _ in range(3))
        self.downsize_u = nn.ModuleList(DownShiftedConv2d(nf, nf, (2, 3), stride=2) for _ in range(2))
        self.downsize_ul = nn.ModuleList(DownRightShiftedConv2d(nf, nf, (2, 2), stride=2) for _ in range(2))

        down_counts = [num_resnet_blocks, num_resnet_blocks + 1, num_resnet_blocks + 1]
        self.down_u = nn.ModuleList(stage(DownShiftedConv2d, count, nf) for count in down_counts)
        self.down_ul = nn.ModuleList(stage(DownRightShiftedConv2d, count, 2 * nf) for count in down_counts)
        self.upsize_u = nn.ModuleList(DownShiftedConvTranspose2d(nf) for _ in range(2))
        self.upsize_ul = nn.ModuleList(DownRightShiftedConvTranspose2d(nf) for _ in range(2))

        self.output = weight_norm(nn.Conv2d(nf, num_mixture_params(num_mixtures, image_channels), kernel_size=1))

    def mixture_parameters(self, images: Tensor, condition: Tensor) -> Tensor:
        """Mixture parameters (B, P, H, W) of every pixel given the pixels before it in raster order."""
        if images.dim() != 4 or images.size(1) != self.image_channels:
            raise ValueError(f"images must be (B, {self.image_channels}, H, W), got {tuple(images.shape)}")
        if images.size(2) % _SIZE_MULTIPLE or images.size(3) % _SIZE_MULTIPLE:
            raise ValueError(
                f"image height and width must be multiples of {_SIZE_MULTIPLE}, got {tuple(images.shape[2:])}"
            )
        if condition.shape != (images.size(0), self.condition_dim):
            raise ValueError(
                f"condition must be ({images.size(0)}, {self.condition_dim}), got {tuple(condition.shape)}"
            )

        x = torch.cat([images, images.new_ones(images.size(0), 1, *images.shape[2:])], dim=1)
        # Shifting the first layers' outputs makes them strictly causal: nothing downstream can
        # then read the current pixel.
        u_skips = [_down_shift(self.u_init(x))]
        ul_skips = [_down_shift(self.ul_init_above(x)) + _right_shift(self.ul_init_left(x))]

        for level in range(3):
            u, ul = u_skips[-1], ul_skips[-1]
            for u_block, ul_block in zip(self.up_u[level], self.up_ul[level]):
                u = u_block(u, condition)
                ul = ul_block(ul, condition, u)
                u_skips.append(u)
                ul_skips.append(ul)
            if level < 2:
                u_skips.append(self.downsize_u[level](u))
                ul_skips.append(self.downsize_ul[level](ul))

        u, ul = u_skips.pop(), ul_skips.pop()
        for level in range(3):
            for u_block, ul_block in zip(self.down_u[level], self.down_ul[level]):
                u = u_block(u, condition, u_skips.pop())
                ul = ul_block(ul, condition, torch.cat([u, ul_skips.pop()], dim=1))
            if level < 2:
                u = self.upsize_u[level](u)
                ul = self.upsize_ul[level](ul)

        return self.output(F.elu(ul))

    def forward(self, images: Tensor, condition: Tensor) -> PixelCNNDecoderOutput:
        """Text-to-image loss L_ti (paper eq. 5): NLL of the 32x32 image given the text condition.

        Args:
            images: (B, C, H, W) in [-1, 1] on the 8-bit grid ((k / 255) * 2 - 1).
            condition: (B, condition_dim), pooled from the noised text tokens T_n.
        """
        params = self.mixture_parameters(images, condition)
        # In float32 even under autocast: the bin probabilities are differences of nearby CDF values, which bf16's
        # 8 significant bits cannot resolve.
        loss = discretized_mix_logistic_nll(images.float(), params.float()).sum(dim=(1, 2)).mean()
        bits_per_dim = loss.detach() / (images[0].numel() * math.log(2.0))
        return PixelCNNDecoderOutput(loss=loss, bits_per_dim=bits_per_dim, params=params)

    @torch.no_grad()
    def sample(self, condition: Tensor, image_size: int = 32, generator: torch.Generator | None = None) -> Tensor:
        """Generate one image per condition vector, pixel by pixel in raster order.

        Runs with dropout off. Thanks to causality the network only needs the rows up to the
        current one (rounded up to a multiple of 4), which roughly halves the cost.

        Args:
            condition: (B, condition_dim).
            image_size: side of the square images, a multiple of 4.
            generator: source of all the randomness, for reproducible samples.

        Returns:
            (B, C, image_size, image_size) on the 8-bit grid in [-1, 1].
        """
        if image_size % _SIZE_MULTIPLE:
            raise ValueError(f"image_size must be a multiple of {_SIZE_MULTIPLE}, got {image_size}")
        was_training = self.training
        self.eval()
        canvas = condition.new_zeros(condition.size(0), self.image_channels, image_size, image_size)
        try:
            # Weight normalisation would otherwise recompute every weight for each of the H*W passes.
            with parametrize.cached():
                for row in range(image_size):
                    visible_rows = min(image_size, (row // _SIZE_MULTIPLE + 1) * _SIZE_MULTIPLE)
                    for col in range(image_size):
                        params = self.mixture_parameters(canvas[:, :, :visible_rows], condition)
                        pixel = sample_from_discretized_mix_logistic(
                            params[:, :, row : row + 1, col : col + 1],
                            generator=generator,
                            image_channels=self.image_channels,
                        )
                        canvas[:, :, row, col] = pixel[:, :, 0, 0]
        finally:
            self.train(was_training)
        return canvas
