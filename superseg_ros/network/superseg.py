"""SuperSegmentation: one shared stride-8 encoder, four heads, one forward pass.

Input: a float RGB batch in [0, 1], shape (B, 3, H, W) with H and W multiples of 8 (the extractor
pads). ImageNet normalisation happens inside, so an exported ONNX graph takes the same input.

Output dict:
    logits        (B, 65, H/8, W/8)  detector cell logits, channel 64 = dustbin
    heatmap       (B, H, W)          interest-point probability per pixel
    descriptors   (B, D, H/8, W/8)   unit-norm descriptors, one per cell
    segmentation  (B, M, H/4, W/4)   semantic class logits (absent with semantics=False)
    offsets       (B, 2, H, W)       sub-pixel (dx, dy) in pixels: the sub-pixel head's
                                     (|.| <= subpixel_max_offset; absent with subpixel_head
                                     false), plus with subpixel_window r > 0 the heatmap's
                                     centroid in the (2r+1)^2 window (|.| <= r)

Architectures (`preset`; every other key still overrides the preset's value):
    lean     (default) ResNet-18 at width 32 with its standard strides, an FPN-style neck back to
             stride 8 for the keypoint heads, ASPP at stride 16 and decoder at stride 8 with
             depthwise-separable convolutions. About 4x fewer multiply-adds than `dilated`.
    dilated  DeepLab's dilated ResNet (stride 8 through layer4), ASPP at stride 8, decoder at
             stride 4, dense convolutions: the architecture of models/superseg.pt and of every
             checkpoint written before presets existed (their configs have no `preset` key and
             load as `dilated`, see superseg_ros.checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, merge_config, require_choice
from ..semantics import default_semantics, validate_semantics
from .encoders import ENCODERS, RESNET_LAYOUTS, as_state_dict, build_encoder, torchvision_key_report
from .heads import (CELL, DescriptorHead, DetectorHead, SemanticHead, StrideEightNeck,
                    SubpixelHead, heatmap_centroid)

HEADS = ("detector", "descriptor", "semantic", "subpixel")

DEFAULT_CONFIG = {
    "preset": "lean",             # lean | dilated: the defaults below, then PRESETS[preset]
    "encoder": "resnet18",        # resnet18 | resnet34 | resnet50 | vgg | mobilenet
    "encoder_width": None,        # base width; None = the encoder's standard (64, mobilenet 32)
    "encoder_dilation": True,     # ResNet: dilate layer3/4 (stride 8 throughout) | standard strides
    "neck_channels": 0,           # > 0: FPN-style neck to stride 8 (needs encoder_dilation false)
    "input_channels": 3,
    "head_channels": 256,         # hidden width of the detector, descriptor and sub-pixel heads
    "descriptor_dim": 256,
    "num_classes": 19,
    "aspp_channels": 256,
    "aspp_rates": [6, 12, 18],
    "aspp_stride": 8,             # 8 | 16 (16 needs the neck)
    "low_level_channels": 48,
    "decoder_channels": 256,
    "decoder_stride": 4,          # 4 (skip from the encoder's stride-4 map) | 8 (from stride 8)
    "separable": False,           # depthwise-separable 3x3 convolutions in the ASPP and decoder
    "subpixel_max_offset": 1.0,   # pixels; the sub-pixel head can move a peak at most this far
    "subpixel_window": 0,         # r > 0: offsets also hold the heatmap's centroid around each
                                  # pixel ((2r+1)^2 window), a soft-argmax of the peak
    "subpixel_head": True,        # false: no learned offset, the centroid alone refines (needs
}                                 # subpixel_window > 0); the head is then not built

# What a non-dilated ResNet and its neck need; the other encoders keep DEFAULT_CONFIG's values.
RESNET_ONLY = ("encoder_dilation", "neck_channels", "aspp_stride")

PRESETS = {
    "lean": {"encoder": "resnet18", "encoder_width": 32, "encoder_dilation": False,
             "neck_channels": 128, "head_channels": 128, "aspp_channels": 128,
             "aspp_rates": [3, 6, 9], "aspp_stride": 16, "low_level_channels": 32,
             "decoder_channels": 96, "decoder_stride": 8, "separable": True},
    "dilated": {},
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def model_config(overrides: dict | None = None) -> dict:
    """The full config: DEFAULT_CONFIG, then the preset's values, then `overrides`."""
    overrides = dict(overrides or {})
    preset = overrides.get("preset", DEFAULT_CONFIG["preset"])
    require_choice(preset, PRESETS, "model.preset")
    defaults = merge_config(DEFAULT_CONFIG, PRESETS[preset], where="model")
    if overrides.get("encoder", defaults["encoder"]) not in RESNET_LAYOUTS:
        # VGG and MobileNet end at stride 8 by construction: a preset's ResNet neck does not
        # apply to them (set explicitly, it is still an error below)
        defaults.update({k: DEFAULT_CONFIG[k] for k in RESNET_ONLY})
    conf = merge_config(defaults, overrides, where="model")
    require_choice(conf["encoder"], ENCODERS, "model.encoder")
    require_choice(conf["aspp_stride"], (8, 16), "model.aspp_stride")
    require_choice(conf["decoder_stride"], (4, 8), "model.decoder_stride")
    if not conf["encoder_dilation"]:
        if conf["encoder"] not in RESNET_LAYOUTS:
            raise ConfigError("model.encoder_dilation false needs a ResNet encoder (its stride "
                              f"16/32 stages are merged by the neck), not '{conf['encoder']}'")
        if conf["neck_channels"] < 1:
            raise ConfigError("model.encoder_dilation false needs model.neck_channels > 0 (the "
                              "neck brings the stride-32 features back to stride 8)")
    elif conf["neck_channels"] or conf["aspp_stride"] == 16:
        raise ConfigError("model.neck_channels and aspp_stride 16 need encoder_dilation false "
                          "(a dilated encoder has no stride-16 stage)")
    if conf["input_channels"] not in (1, 3):
        raise ConfigError(f"model.input_channels must be 1 or 3, got {conf['input_channels']}")
    for key in ("head_channels", "descriptor_dim", "num_classes", "aspp_channels",
                "low_level_channels", "decoder_channels"):
        if not isinstance(conf[key], int) or conf[key] < 1:
            raise ConfigError(f"model.{key} must be a positive integer, got {conf[key]!r}")
    if not float(conf["subpixel_max_offset"]) > 0:
        raise ConfigError("model.subpixel_max_offset must be > 0")
    if conf["subpixel_window"] < 0:  # merge_config has already checked that it is an int
        raise ConfigError("model.subpixel_window must be an integer >= 0 (pixels), got "
                          f"{conf['subpixel_window']!r}")
    if not conf["subpixel_head"] and not conf["subpixel_window"]:
        raise ConfigError("model.subpixel_head false needs model.subpixel_window > 0: without "
                          "the head, the heatmap's centroid is the only sub-pixel refinement")
    return conf


class SuperSegmentation(nn.Module):
    def __init__(self, config: dict | None = None, semantics: dict | None = None):
        super().__init__()
        self.config = conf = model_config(config)
        self.semantics = validate_semantics(semantics or default_semantics(), conf["num_classes"])
        # Which heads hold trained weights. A fresh network has none; checkpoints say which.
        self.trained_heads = {head: False for head in HEADS}
        self.meta: dict = {}  # free-form provenance carried by checkpoints
        self.checkpoint_path: Path | None = None  # the file load_model read it from

        self.encoder = build_encoder(conf["encoder"], conf["input_channels"],
                                     conf["encoder_width"], conf["encoder_dilation"])
        c, c_low, h = self.encoder.out_channels, self.encoder.low_level_channels, conf["head_channels"]
        c_aspp = c
        if conf["neck_channels"]:
            self.neck = StrideEightNeck(self.encoder.pyramid_channels[1:], conf["neck_channels"])
            c = c_aspp = conf["neck_channels"]
        if conf["decoder_stride"] == 8:
            c_low = c
        self.detector = DetectorHead(c, h)
        self.descriptor = DescriptorHead(c, h, conf["descriptor_dim"])
        self.semantic = SemanticHead(c_aspp, c_low, conf["num_classes"], conf["aspp_channels"],
                                     conf["aspp_rates"], conf["low_level_channels"],
                                     conf["decoder_channels"], conf["separable"],
                                     conf["decoder_stride"])
        self.subpixel = SubpixelHead(c, h, conf["subpixel_max_offset"]) \
            if conf["subpixel_head"] else None

        channels = conf["input_channels"]
        mean = torch.tensor(IMAGENET_MEAN if channels == 3 else (0.449,)).view(1, channels, 1, 1)
        std = torch.tensor(IMAGENET_STD if channels == 3 else (0.226,)).view(1, channels, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, image: torch.Tensor, semantics: bool = True) -> dict:
        h, w = image.shape[-2:]
        if h % CELL or w % CELL:
            raise ValueError(f"input height and width must be multiples of {CELL}, got {h}x{w} "
                             "(use superseg_ros.Extractor, which pads)")
        features, aspp_input, skip = self.encode((image - self.mean) / self.std)
        logits, heatmap = self.detector(features)
        offsets = self.subpixel(features) if self.subpixel is not None else 0
        if self.config["subpixel_window"]:
            offsets = offsets + heatmap_centroid(heatmap, self.config["subpixel_window"])
        out = {"logits": logits, "heatmap": heatmap, "descriptors": self.descriptor(features),
               "offsets": offsets}
        if semantics:
            out["segmentation"] = self.semantic(aspp_input, skip)
        return out

    def encode(self, x: torch.Tensor) -> tuple:
        """Normalised image -> (stride-8 features for the keypoint heads, the ASPP's input, the
        decoder's skip connection), as the config arranges them."""
        conf = self.config
        if conf["neck_channels"]:
            c4, c8, c16, c32 = self.encoder.pyramid(x)
            features, features16 = self.neck(c8, c16, c32)
            aspp_input = features16 if conf["aspp_stride"] == 16 else features
        else:
            features, c4 = self.encoder(x)
            aspp_input = features
        return features, aspp_input, features if conf["decoder_stride"] == 8 else c4

    def load_imagenet_encoder(self, source) -> dict:
        """Load a torchvision ResNet ImageNet state dict (a path or a dict) into the encoder.

        Returns {'missing': [...], 'unexpected': [...]} (torchvision's `fc.*` is unexpected and
        ignored). Shape mismatches are an error: they mean the wrong architecture or width.
        """
        name = self.config["encoder"]
        if name not in RESNET_LAYOUTS:
            raise ConfigError(f"ImageNet initialisation needs a ResNet encoder, not '{name}'")
        if not isinstance(source, dict):
            from ..checkpoint import describe_file  # local: checkpoint imports this module

            path = Path(source)
            if not path.is_file():
                raise ValueError(f"cannot read ImageNet weights from {path}: no such file")
            try:
                source = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # never relay torch's advice to unpickle code
                raise ValueError(f"cannot read ImageNet weights from {path}: it is "
                                 f"{describe_file(path, exc)}; expected a torchvision ResNet "
                                 f"state dict (.pth)") from None
        usable, missing, unexpected, mismatch = torchvision_key_report(self.encoder,
                                                                       as_state_dict(source))
        if mismatch:
            raise ValueError("ImageNet weights do not fit this encoder "
                             f"({name}, width {self.encoder.conv1.out_channels}): "
                             + "; ".join(mismatch[:5]) + (" ..." if len(mismatch) > 5 else ""))
        self.encoder.load_state_dict(usable, strict=False)
        return {"missing": missing, "unexpected": unexpected}


__all__ = ["SuperSegmentation", "DEFAULT_CONFIG", "PRESETS", "HEADS", "CELL", "model_config"]
