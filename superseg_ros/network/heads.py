"""The four heads on the shared stride-8 features."""

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


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pooling branch."""

    def __init__(self, cin: int, channels: int, rates):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, channels, 1)] + [conv_bn_relu(cin, channels, 3, dilation=r)
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
    """DeepLab-v3+ style: ASPP on stride-8 features, decoder with a stride-4 skip, M logits."""

    def __init__(self, cin: int, low_level_cin: int, num_classes: int, aspp_channels: int,
                 rates, low_level_channels: int, decoder_channels: int):
        super().__init__()
        self.aspp = ASPP(cin, aspp_channels, rates)
        self.reduce = conv_bn_relu(low_level_cin, low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, decoder_channels),
            conv_bn_relu(decoder_channels, decoder_channels))
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, features, low_level):
        low_level = self.reduce(low_level)
        x = F.interpolate(self.aspp(features), size=low_level.shape[-2:], mode="bilinear",
                          align_corners=False)
        return self.classifier(self.decoder(torch.cat([x, low_level], dim=1)))
