"""Shared encoders with output stride 8.

Every encoder returns `(features, low_level)`: features at stride 8 (`out_channels`) and a stride-4
map (`low_level_channels`) for the segmentation decoder's skip connection.

The ResNets use torchvision's module names (conv1, bn1, layer1.0.conv1, ..., downsample.0/1), so an
ImageNet `state_dict` saved from torchvision loads by name. Dilated (the `dilated` preset): instead
of striding, layer3 and layer4 dilate (rates 2 and 4) as in DeepLab, which keeps stride 8 with the
same weights but runs the two widest layers on 16x and 64x more positions. Not dilated (the `lean`
preset): torchvision's strides, and `pyramid()` returns every stage for a neck to merge.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


# ----------------------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # torchvision (v1.5) strides in the 3x3 conv
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_LAYOUTS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetEncoder(nn.Module):
    """torchvision ResNet without fc; `dilate`: replace_stride_with_dilation=[False, True, True]
    (output stride 8), else the standard strides (layer3 at 16, layer4 at 32)."""

    def __init__(self, name: str = "resnet18", input_channels: int = 3, width: int = 64,
                 dilate: bool = True):
        super().__init__()
        block, layers = RESNET_LAYOUTS[name]
        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(input_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2, dilate=dilate)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2, dilate=dilate)
        self.low_level_channels = width * block.expansion
        self.out_channels = width * 8 * block.expansion
        # channels of pyramid()'s maps at strides 4, 8, 16, 32
        self.pyramid_channels = tuple(width * m * block.expansion for m in (1, 2, 4, 8))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        # as torchvision: a layer's first block keeps the previous dilation, the rest dilate
        layers = [block(self.inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low_level = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(low_level)))
        return x, low_level

    def pyramid(self, x) -> tuple:
        """(stride 4, 8, 16, 32) maps of the non-dilated encoder (B, pyramid_channels[i], ...)."""
        c4 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c8 = self.layer2(c4)
        c16 = self.layer3(c8)
        return c4, c8, c16, self.layer4(c16)


# -------------------------------------------------------------------------------- SuperPoint VGG
class VGGEncoder(nn.Module):
    """SuperPoint's encoder (conv1a..conv4b, three 2x2 max-pools) with BatchNorm."""

    def __init__(self, input_channels: int = 3, width: int = 64):
        super().__init__()
        c1, c2 = width, width * 2
        self.block1 = nn.Sequential(conv_bn_relu(input_channels, c1), conv_bn_relu(c1, c1))
        self.block2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(c1, c1), conv_bn_relu(c1, c1))
        self.block3 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(c1, c2), conv_bn_relu(c2, c2))
        self.block4 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(c2, c2), conv_bn_relu(c2, c2))
        self.low_level_channels = self.out_channels = c2

    def forward(self, x):
        low_level = self.block3(self.block2(self.block1(x)))
        return self.block4(low_level), low_level


# ------------------------------------------------------------------------------- MobileNet-style
class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, dilation=1):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_relu(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu(hidden, hidden, 3, stride, dilation, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetEncoder(nn.Module):
    """MobileNetV2 layout, dilated after stride 8 (as DeepLab-v3+ MobileNet)."""

    # expand ratio, channels, repeats, stride, dilation
    SETTINGS = ((1, 16, 1, 1, 1), (6, 24, 2, 2, 1), (6, 32, 3, 2, 1), (6, 64, 4, 1, 2),
                (6, 96, 3, 1, 2), (6, 160, 3, 1, 4), (6, 320, 1, 1, 4))

    def __init__(self, input_channels: int = 3, width: int = 32):
        super().__init__()
        scale = width / 32.0

        def ch(c):  # round to a multiple of 8 as MobileNetV2 does, at least 8
            return max(8, int(c * scale + 4) // 8 * 8)

        cin = ch(32)
        self.stem = conv_bn_relu(input_channels, cin, 3, 2)
        stages = []
        for i, (t, c, n, s, d) in enumerate(self.SETTINGS):
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(cin, ch(c), s if j == 0 else 1, t, d))
                cin = ch(c)
            stages.append(nn.Sequential(*blocks))
            if i == 1:  # end of the stride-4 stage
                self.low_level_channels = cin
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin

    def forward(self, x):
        x = self.stem(x)
        low_level = None
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 1:
                low_level = x
        return x, low_level


ENCODERS = ("resnet18", "resnet34", "resnet50", "vgg", "mobilenet")
DEFAULT_WIDTH = {"resnet18": 64, "resnet34": 64, "resnet50": 64, "vgg": 64, "mobilenet": 32}


def build_encoder(name: str, input_channels: int, width: int | None,
                  dilate: bool = True) -> nn.Module:
    width = DEFAULT_WIDTH[name] if width is None else int(width)
    if name in RESNET_LAYOUTS:
        return ResNetEncoder(name, input_channels, width, dilate)
    if name == "vgg":
        return VGGEncoder(input_channels, width)
    return MobileNetEncoder(input_channels, width)


def torchvision_key_report(encoder: nn.Module, state_dict: dict) -> tuple[dict, list, list, list]:
    """Split a torchvision ResNet state dict into what fits `encoder` and what does not.

    Returns (usable, missing, unexpected, shape_mismatch).
    """
    own = encoder.state_dict()
    usable = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mismatch = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                      for k, v in state_dict.items() if k in own and own[k].shape != v.shape)
    return usable, missing, unexpected, mismatch


def as_state_dict(obj) -> dict:
    """Accept a plain state dict or the common wrappers ({'state_dict': ...}, {'model': ...})."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}
    raise ValueError("not a state dict (expected a mapping of parameter names to tensors)")
