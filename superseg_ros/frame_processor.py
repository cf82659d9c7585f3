"""One camera frame in, everything the node publishes out, without any ROS.

    processor = FrameProcessor(extractor, max_side=640)
    result = processor.process(rgb_image, camera)   # camera: CameraModel or None

The network may run on a downscaled copy (`max_side`, `scale`); keypoints and masks always come
back at the input image's resolution. With the pixel-centre convention, a network pixel x_n maps
to input pixel (x_n + 0.5) * W / W_n - 0.5.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from .config import ConfigError
from .extractor import Extractor


@dataclass
class FrameResult:
    keypoints: np.ndarray          # (N, 2) float32, input pixels
    scores: np.ndarray             # (N,) float32
    descriptors: np.ndarray        # (N, D) float32, unit norm
    labels: np.ndarray             # (N,) uint8 (255 = semantics off)
    groups: np.ndarray             # (N,) uint8 (255 = semantics off)
    stable: np.ndarray             # (N,) bool
    normalized: np.ndarray         # (N, 2) float32 undistorted normalised coordinates, NaN if no camera
    stability_mask: np.ndarray | None  # (H, W) bool at input resolution, None if semantics off
    group_map: np.ndarray | None       # (H, W) uint8 at input resolution
    rejected: np.ndarray               # (R, 2) float32 peaks the stability filter removed
    network_size: tuple[int, int]      # (height, width) the network ran at
    seconds: float                     # wall time of process()


class FrameProcessor:
    def __init__(self, extractor: Extractor, max_side: int = 0, scale: float = 1.0):
        if max_side < 0:
            raise ConfigError(f"max_side must be >= 0 (0 = no limit), got {max_side}")
        if not 0 < scale <= 1:
            raise ConfigError(f"scale must be in (0, 1], got {scale}")
        self.extractor, self.max_side, self.scale = extractor, int(max_side), float(scale)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        factor = self.scale
        if self.max_side and max(height, width) * factor > self.max_side:
            factor = self.max_side / max(height, width)
        return max(8, round(height * factor)), max(8, round(width * factor))

    def process(self, image: np.ndarray, camera=None) -> FrameResult:
        """`image`: RGB uint8 (H, W, 3) or grey (H, W). `camera`: has normalized_coordinates()."""
        start = time.perf_counter()
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"image is empty ({width}x{height})")
        if camera is not None:
            camera.check_image_size(width, height)
        net_h, net_w = self.network_size(height, width)
        resized = image if (net_h, net_w) == (height, width) else \
            cv2.resize(image, (net_w, net_h), interpolation=cv2.INTER_AREA)
        out = self.extractor(resized).unbatch()[0]

        keypoints = self.to_input(out["keypoints"], (net_h, net_w), (height, width))
        rejected = self.to_input(out.get("rejected_keypoints", np.zeros((0, 2), np.float32)),
                                 (net_h, net_w), (height, width))
        normalized = np.full_like(keypoints, np.nan)
        if camera is not None and len(keypoints):
            normalized = camera.normalized_coordinates(keypoints).astype(np.float32)

        mask = groups = None
        if "stability_mask" in out:
            mask, groups = out["stability_mask"], out["group_map"]
            if (net_h, net_w) != (height, width):
                mask = cv2.resize(mask.astype(np.uint8), (width, height),
                                  interpolation=cv2.INTER_NEAREST).astype(bool)
                groups = cv2.resize(groups, (width, height), interpolation=cv2.INTER_NEAREST)
        return FrameResult(keypoints, out["scores"], out["descriptors"], out["labels"],
                           out["groups"], out["stable"], normalized, mask, groups, rejected,
                           (net_h, net_w), time.perf_counter() - start)

    @staticmethod
    def to_input(xy: np.ndarray, network_size, input_size) -> np.ndarray:
        """Network pixels -> input pixels, pixel centres mapping onto pixel centres."""
        if tuple(network_size) == tuple(input_size):
            return xy
        (net_h, net_w), (height, width) = network_size, input_size
        xy = (xy + 0.5) * np.array([width / net_w, height / net_h], np.float32) - 0.5
        return np.clip(xy, 0, [width - 1, height - 1]).astype(np.float32)
