"""The four heads on the shared stride-8 features, and the neck that makes those features from a
non-dilated encoder's pyramid (the `lean` preset)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import conv_bn_relu

CELL = 8  # encoder output stride: one cell covers 8x8 pixels


class DetectorHead(nn.Module):
    """SuperPoint detector: 65 logits per cell (64 positions + dustbin) -> full-resolution heatmap."""

    def __init__(self, cin: int, channels: int):
        super().__init__()
        self.body = conv_bn_relu(cin, channels)
        self.out = nn.Conv2d(channels, CELL * CELL + 1, 1)

    def forward(self, features):
        logits = self.out(self.body(features))
        # channel k of a cell is pixel (k // 8, k % 8) of that cell, i.e. depth-to-space
        heatmap = F.pixel_shuffle(logits.softmax(1)[:, :-1], CELL)[:, 0]
        return logits, heatmap


class DescriptorHead(nn.Module):
    """Semi-dense descriptors, one L2-normalised D-vector per 8x8 cell."""

    def __init__(self, cin: int, channels: int, dim: int):
        super().__init__()
        self.body = conv_bn_relu(cin, channels)
        self.out = nn.Conv2d(channels, dim, 1)

    def forward(self, features):
        return F.normalize(self.out(self.body(features)), p=2, dim=1)


class SubpixelHead(nn.Module):
    """A bounded (dx, dy) offset for every pixel, predicted per cell and laid out depth-to-space.

    Post-processing reads it only at NMS peaks; tanh keeps the move within `max_offset` pixels.
    """

    def __init__(self, cin: int, channels: int, max_offset: float):
        super().__init__()
        self.max_offset = float(max_offset)
        self.body = conv_bn_relu(cin, channels)
        self.out = nn.Conv2d(channels, 2 * CELL * CELL, 1)

    def forward(self, features):
        return torch.tanh(F.pixel_shuffle(self.out(self.body(features)), CELL)) * self.max_offset


def heatmap_centroid(heatmap: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) heatmap -> (B, 2, H, W): for every pixel, the heatmap-weighted mean (dx, dy) of
    the pixels of its (2r+1)^2 window (zero outside the image), in px. At an NMS peak it is the
    soft-argmax of the detector's own peak; it is differentiable, so a loss on refined positions
    also trains the detector's localisation. Three fixed-kernel convolutions (exports to ONNX)."""
    d = torch.arange(-radius, radius + 1, dtype=heatmap.dtype, device=heatmap.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    kernels = torch.stack([torch.ones_like(dx), dx, dy])[:, None]   # (3, 1, k, k)
    sums = F.conv2d(heatmap[:, None], kernels, padding=radius)     # (B, 3, H, W)
    return sums[:, 1:] / sums[:, :1].clamp(min=1e-6)


def separable_conv_bn_relu(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    """DeepLab-v3+'s depthwise-separable 3x3: a depthwise (atrous) 3x3 then a pointwise 1x1, each
    with BatchNorm and ReLU; about 9x fewer multiply-adds than a dense 3x3 at equal widths."""
    return nn.Sequential(conv_bn_relu(cin, cin, 3, dilation=dilation, groups=cin),
                         conv_bn_relu(cin, cout, 1))


def conv3x3(cin: int, cout: int, dilation: int = 1, separable: bool = False) -> nn.Sequential:
    return separable_conv_bn_relu(cin, cout, dilation) if separable else \
        conv_bn_relu(cin, cout, 3, dilation=dilation)


class StrideEightNeck(nn.Module):
    """FPN-style top-down merge of a non-dilated encoder's strides 8, 16 and 32 into stride-8
    features (for the keypoint heads and the decoder) and stride-16 features (for the ASPP).

    Shapes: c8 (B, C8, H/8, W/8), c16 (B, C16, H/16, ...), c32 (B, C32, H/32, ...) ->
    (B, channels, H/8, W/8), (B, channels, ceil(H/16), ceil(W/16)).
    """

    def __init__(self, in_channels: tuple[int, int, int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList([conv_bn_relu(c, channels, 1) for c in in_channels])
        self.smooth8 = separable_conv_bn_relu(channels, channels)
        self.smooth16 = separable_conv_bn_relu(channels, channels)

    def forward(self, c8, c16, c32):
        p32 = self.lateral[2](c32)
        p16 = self.lateral[1](c16) + _resize(p32, c16)
        p8 = self.lateral[0](c8) + _resize(p16, c8)
        return self.smooth8(p8), self.smooth16(p16)


def _resize(x, like):
    """Bilinear to `like`'s size (odd sizes: a stride-16 map is ceil(H/16) high, not H/16)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pooling branch."""

    def __init__(self, cin: int, channels: int, rates, separable: bool = False):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, channels, 1)] + [conv3x3(cin, channels, r, separable)
                                                for r in rates])
        # no BatchNorm on the pooled 1x1 map: it would fail on a training batch of one image
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, channels, 1),
                                     nn.ReLU(inplace=True))
        self.project = conv_bn_relu(channels * (len(rates) + 2), channels, 1)

    def forward(self, x):
        pooled = F.interpolate(self.pooling(x), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class SemanticHead(nn.Module):
    """DeepLab-v3+ style: ASPP on the encoder's features, a decoder joined by a skip connection,
    M logits, returned at stride 4 whatever the decoder's stride (`decoder_stride` 8 is upsampled
    x2 at the end: 19 channels instead of the decoder's width).

    The `dilated` preset: ASPP on stride-8 features, decoder at stride 4, dense 3x3 convolutions.
    The `lean` preset: ASPP at stride 16, decoder at stride 8, depthwise-separable convolutions.
    """

    def __init__(self, cin: int, low_level_cin: int, num_classes: int, aspp_channels: int,
                 rates, low_level_channels: int, decoder_channels: int,
                 separable: bool = False, decoder_stride: int = 4):
        super().__init__()
        self.upsample = decoder_stride // 4  # to stride 4
        self.aspp = ASPP(cin, aspp_channels, rates, separable)
        self.reduce = conv_bn_relu(low_level_cin, low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv3x3(aspp_channels + low_level_channels, decoder_channels, separable=separable),
            conv3x3(decoder_channels, decoder_channels, separable=separable))
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, features, low_level):
        low_level = self.reduce(low_level)
        x = _resize(self.aspp(features), low_level)
        logits = self.classifier(self.decoder(torch.cat([x, low_level], dim=1)))
        if self.upsample > 1:
            logits = F.interpolate(logits, scale_factor=self.upsample, mode="bilinear",
                                   align_corners=False)
        return logits
