"""Photometric augmentation, per image, in numpy: SuperPoint's list plus the appearance changes
of real image pairs (HPatches' illumination sequences, defocus, white balance).

Every operation leaves keypoint positions where they are: brightness, contrast, additive Gaussian
and speckle noise, a smooth multiplicative shade, a centred motion-blur kernel (symmetric, so an
edge is blurred but not moved on average), a gamma curve (a non-linear illumination change), a
Gaussian defocus blur and per-channel gains (colour cast). Ops are applied in random order, each
with `probability`; the result depends only on the image, the config and the generator's state, so
a seeded generator gives the same image every time. Images are uint8 (H, W) or (H, W, C); the
result has the same shape and dtype.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..config import ConfigError, merge_config

DEFAULT_CONFIG = {
    "enabled": True,
    "probability": 0.5,               # chance that each op is applied
    "brightness": 50.0,               # added level uniform in [-b, b] (grey levels)
    "contrast": [0.5, 1.5],           # factor about the image mean
    "gaussian_noise": [0.0, 10.0],    # std range, grey levels
    "speckle": [0.0, 0.0035],         # fraction of pixels set to 0 or 255
    "shade": [-0.5, 0.8],             # smooth multiplicative shade: 1 + s * field, s in range
    "shade_kernel": [100, 150],       # px, size of the shade's blobs
    "motion_blur": 7,                 # max kernel size (odd); 0 disables
    "gamma": [0.5, 2.0],              # x = 255 (x / 255)^g, g log-uniform (illumination curve)
    "gaussian_blur": [0.0, 1.5],      # defocus: sigma range in px; 0 leaves the image
    "colour": 0.15,                   # per-channel gain uniform in [1 - c, 1 + c] (RGB only)
}

OPS = ("brightness", "contrast", "gaussian_noise", "speckle", "shade", "motion_blur", "gamma",
       "gaussian_blur", "colour")


def photometric_config(overrides: dict | None = None) -> dict:
    conf = merge_config(DEFAULT_CONFIG, overrides, where="photometric")
    lo, hi = (float(v) for v in conf["gamma"])
    if not 0 < lo <= hi:
        raise ConfigError(f"photometric.gamma must be [lo, hi] with 0 < lo <= hi, got "
                          f"{conf['gamma']}")
    return conf


def _brightness(x, rng, conf):
    return x + rng.uniform(-conf["brightness"], conf["brightness"])


def _contrast(x, rng, conf):
    mean = x.mean()
    return (x - mean) * rng.uniform(*conf["contrast"]) + mean


def _gaussian_noise(x, rng, conf):
    return x + rng.standard_normal(x.shape).astype(np.float32) * rng.uniform(
        *conf["gaussian_noise"])


def _speckle(x, rng, conf):
    fraction = rng.uniform(*conf["speckle"])
    hit = rng.random(x.shape[:2]) < fraction
    x = x.copy()
    x[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0.0, 255.0)[:, None] \
        if x.ndim == 3 else np.where(rng.random(int(hit.sum())) < 0.5, 0.0, 255.0)
    return x


def _shade(x, rng, conf):
    h, w = x.shape[:2]
    size = rng.uniform(*conf["shade_kernel"])
    coarse = rng.standard_normal((max(2, int(h / size) + 2), max(2, int(w / size) + 2)))
    field = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    field /= np.abs(field).max() + 1e-6
    shade = 1.0 + rng.uniform(*conf["shade"]) * field
    return x * (shade[..., None] if x.ndim == 3 else shade)


def _motion_blur(x, rng, conf):
    max_size = int(conf["motion_blur"])
    if max_size < 3:
        return x
    size = int(rng.integers(1, (max_size - 1) // 2 + 1)) * 2 + 1
    kernel = np.zeros((size, size), np.float32)
    kernel[size // 2] = 1.0  # a horizontal line through the centre, then rotated
    angle = rng.uniform(0, 180)
    rot = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (size, size))
    kernel /= kernel.sum()
    return cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT)


def _gamma(x, rng, conf):
    lo, hi = conf["gamma"]
    g = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return 255.0 * (np.clip(x, 0, 255) / 255.0) ** g


def _gaussian_blur(x, rng, conf):
    sigma = rng.uniform(*conf["gaussian_blur"])
    if sigma < 0.1:
        return x
    return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


def _colour(x, rng, conf):
    c = float(conf["colour"])
    if x.ndim != 3 or c <= 0:
        return x
    return x * rng.uniform(1 - c, 1 + c, x.shape[2]).astype(np.float32)


_APPLY = {"brightness": _brightness, "contrast": _contrast, "gaussian_noise": _gaussian_noise,
          "speckle": _speckle, "shade": _shade, "motion_blur": _motion_blur, "gamma": _gamma,
          "gaussian_blur": _gaussian_blur, "colour": _colour}


def photometric_augment(image: np.ndarray, rng: np.random.Generator, conf: dict) -> np.ndarray:
    """One random photometric change of `image` (uint8); `conf` from photometric_config()."""
    if not conf["enabled"]:
        return image
    x = image.astype(np.float32)
    for index in rng.permutation(len(OPS)):
        if rng.random() < conf["probability"]:
            x = _APPLY[OPS[index]](x, rng, conf)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
