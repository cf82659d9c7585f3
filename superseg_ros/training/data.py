"""Training batches for the keypoint stages, reproducible item by item.

Item `i` of a dataset depends only on (seed, i): its random homography, photometric changes and,
for image folders, which image it shows (a seeded permutation per pass over the folder). Training
step s reads items s*B .. s*B + B - 1, so a resumed run sees exactly the batches an uninterrupted
run would have seen, with no sampler state to save.

    ShapesDataset   stage 1 (MagicPoint): synthetic shapes, exact corners, homographic + photometric
                    augmentation -> image, cell labels, sub-pixel targets, valid cells
    PairDataset     stage 2 (joint): an image with pseudo-labels and its warp by a random H ->
                    both views with their labels, the homography and B's valid region

Images are float (C, H, W) in [0, 1]; C is the model's input channels (grey is replicated to 3).
Keypoint targets follow `synthetic_shapes.corner_heatmap` (65-way cell labels, offsets in px).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..config import ConfigError, merge_config
from ..homography import (homography_config, sample_homography, scaling_matrix, valid_mask,
                          warp_image, warp_points)
from .augment import photometric_augment, photometric_config
from .synthetic_shapes import CELL, SyntheticShapes, corner_heatmap

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp"}


class IndexRange(Sampler):
    """Items first .. stop - 1 in order (the dataset does the shuffling, seeded per item)."""

    def __init__(self, first: int, stop: int):
        self.first, self.stop = int(first), int(stop)

    def __iter__(self):
        return iter(range(self.first, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.first)


class StepItems(Sampler):
    """The items one process reads for optimiser steps first_step .. stop_step - 1, in order.

    Step s covers G = batch * world * accumulate items, s*G .. s*G + G - 1; micro-batch a of
    process `rank` reads s*G + (a*world + rank)*batch + 0 .. batch - 1 (distributed.step_items).
    With one process and no accumulation this is IndexRange(first_step*batch, stop_step*batch).
    """

    def __init__(self, first_step: int, stop_step: int, batch: int, world: int = 1,
                 rank: int = 0, accumulate: int = 1):
        self.first, self.stop = int(first_step), int(stop_step)
        self.batch, self.world, self.rank = int(batch), int(world), int(rank)
        self.accumulate = int(accumulate)

    def __iter__(self):
        per_step = self.batch * self.world * self.accumulate
        for step in range(self.first, self.stop):
            for micro in range(self.accumulate):
                first = step * per_step + (micro * self.world + self.rank) * self.batch
                yield from range(first, first + self.batch)

    def __len__(self) -> int:
        return max(0, self.stop - self.first) * self.accumulate * self.batch


# --- shared steps --------------------------------------------------------------------------------


def keypoint_targets(points: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> dict:
    """Cell labels, sub-pixel offsets and valid cells for keypoints (N, 2) in an image whose
    content is `valid` (H, W). Points on invalid pixels are dropped; a cell counts only when all
    its pixels are valid (SuperPoint), so the warped border never teaches "no corner here"."""
    h, w = valid.shape
    points = np.asarray(points, np.float64).reshape(-1, 2)
    pixel = np.floor(points + 0.5).astype(np.int64)
    inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < w) & (pixel[:, 1] >= 0) & (pixel[:, 1] < h)
    points, pixel = points[inside], pixel[inside]
    points = points[valid[pixel[:, 1], pixel[:, 0]]]
    labels, offsets = corner_heatmap(points, h, w, rng)
    cells = valid.reshape(h // CELL, CELL, w // CELL, CELL).all(axis=(1, 3))
    return {"labels": torch.from_numpy(labels), "offsets": torch.from_numpy(offsets),
            "valid_cells": torch.from_numpy(cells)}


def check_scale(scale, optional: bool = False) -> None:
    """A ConfigError unless `scale` is [lo, hi] with 0 < lo <= hi (or None when `optional`)."""
    if scale is None and optional:
        return
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2
            and 0 < float(scale[0]) <= float(scale[1])):
        raise ConfigError(f"data.scale must be [lo, hi] with 0 < lo <= hi"
                          f"{', or null' if optional else ''}, got {scale}")


def scaled_crop(image: np.ndarray, size, scale, rng: np.random.Generator,
                extra: np.ndarray | None = None):
    """(image crop, extra crop, T): `image` resized by a log-uniform factor in `scale` (never below
    the factor that covers `size` = (H, W); scale None = exactly that factor, no random draw),
    cropped to `size` at a random place. `extra` (an (H, W) label map) follows with nearest
    neighbour. T (3x3) maps file pixels to crop pixels (pixel-centre convention)."""
    height, width = (int(v) for v in size)
    h0, w0 = image.shape[:2]
    cover = max(height / h0, width / w0)
    if scale is None:
        s = cover
    else:
        lo, hi = (max(float(v), cover) for v in scale)
        s = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
    h1, w1 = max(height, round(h0 * s)), max(width, round(w0 * s))
    if (h1, w1) != (h0, w0):
        image = cv2.resize(image, (w1, h1), interpolation=cv2.INTER_AREA if s < 1
                           else cv2.INTER_LINEAR)
        if extra is not None:
            extra = cv2.resize(extra, (w1, h1), interpolation=cv2.INTER_NEAREST_EXACT)
    top = int(rng.integers(0, h1 - height + 1))
    left = int(rng.integers(0, w1 - width + 1))
    window = (slice(top, top + height), slice(left, left + width))
    return (np.ascontiguousarray(image[window]),
            None if extra is None else np.ascontiguousarray(extra[window]),
            crop_transform(left, top, w1 / w0, h1 / h0))


def crop_transform(left: int, top: int, sx: float, sy: float) -> np.ndarray:
    """Pixels of a frame -> pixels of its crop at (left, top) after resizing by (sx, sy)."""
    crop = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]], np.float64)
    return crop @ scaling_matrix(sx, sy)


def warp_view(image: np.ndarray, points: np.ndarray, H: np.ndarray):
    """Image B = image warped by H (black outside A, as SuperPoint), its valid pixels, and the
    points moved by H."""
    h, w = image.shape[:2]
    warped = warp_image(image, H, border=cv2.BORDER_CONSTANT)
    valid = valid_mask(H, (h, w), (h, w))
    return warped, valid, warp_points(H, points) if len(points) else points.reshape(0, 2)


def to_tensor(image: np.ndarray, channels: int) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) RGB -> float (channels, H, W) in [0, 1]."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] != channels:
        image = (cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None] if channels == 1
                 else np.repeat(image, 3, axis=2))
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0


# --- stage 1: synthetic shapes -------------------------------------------------------------------

SHAPES_DATA_DEFAULTS = {
    "shapes": {},                 # synthetic_shapes config (size, primitives, ...)
    "homographic_probability": 0.8,   # chance an item is warped (else shown as rendered)
}


class ShapesDataset(Dataset):
    """Synthetic shapes with exact corners, warped and photometrically changed, as targets."""

    def __init__(self, data: dict, homography: dict, photometric: dict, channels: int,
                 seed: int, length: int = 10**12):
        self.data = merge_config(SHAPES_DATA_DEFAULTS, data, where="data")
        self.shapes = SyntheticShapes(self.data["shapes"], seed=seed)
        self.homography = homography_config(homography)
        self.photometric = photometric_config(photometric)
        self.channels, self.seed, self.length = int(channels), int(seed), int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        item = self.shapes.sample(int(index))
        rng = np.random.default_rng((self.seed, 1, int(index)))
        image, corners = item.image, item.corners
        valid = np.ones(image.shape, bool)
        if rng.random() < self.data["homographic_probability"]:
            H = sample_homography(rng, *image.shape, **self.homography)
            image, valid, corners = warp_view(image, corners, H)
        image = photometric_augment(image, rng, self.photometric)
        return {"image": to_tensor(image, self.channels), **keypoint_targets(corners, valid, rng)}


# --- stage 2: warped pairs of real images with pseudo-labels -------------------------------------

PAIR_DATA_DEFAULTS = {
    "images": "",                 # folder of images (recursive; COCO's train2014/ or any folder)
    "labels": "",                 # folder of superseg-adapt pseudo-labels, or "adapt" (pipeline)
    "label_rounds": 1,            # with labels: adapt -- label, train, relabel, train ...
    "exclude": [],                # file names (stems) never used, e.g. held out for evaluation
    "size": [240, 320],           # training crop (H, W); images are scaled to cover it first
    "scale": None,                # [lo, hi]: resize factor of the file before cropping
                                  # (log-uniform, never below covering `size`); None = cover
    "validation_images": "",      # folder for validation pairs ("" = no validation)
    "validation_pairs": 16,
}


def list_images(folder, exclude=()) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"data.images: {folder} is not a folder")
    skip = set(exclude)
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                    and p.is_file() and p.stem not in skip and p.name not in skip)
    if not images:
        raise ConfigError(f"data.images: no images under {folder}")
    return images


def label_path(labels_dir: Path, images_dir: Path, image: Path) -> Path:
    """Where superseg-adapt writes the pseudo-labels of `image`."""
    return Path(labels_dir) / image.relative_to(images_dir).with_suffix(".npz")


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class PairDataset(Dataset):
    """Image A (a `size` crop) with its pseudo-labels, and B = A warped by a random H_ab."""

    def __init__(self, data: dict, homography: dict, photometric: dict, channels: int,
                 seed: int, labels_dir: str | Path | None = None):
        from .adaptation import read_pseudo_labels  # only this stage needs it
        self.data = merge_config(PAIR_DATA_DEFAULTS, data, where="data")
        self.images_dir = Path(self.data["images"])
        self.images = list_images(self.images_dir, self.data["exclude"])
        self.labels_dir = Path(labels_dir or self.data["labels"])
        self.homography = homography_config(homography)
        self.photometric = photometric_config(photometric)
        self.channels, self.seed = int(channels), int(seed)
        self.height, self.width = self.data["size"]
        if self.height % CELL or self.width % CELL:
            raise ConfigError(f"data.size must be multiples of {CELL}, got {self.data['size']}")
        check_scale(self.data["scale"], optional=True)
        missing = [p for p in self.images if not label_path(self.labels_dir, self.images_dir,
                                                             p).is_file()]
        if missing:
            raise ConfigError(f"{len(missing)} of {len(self.images)} images have no pseudo-labels "
                              f"in {self.labels_dir} (first: {missing[0]}); run superseg-adapt")
        self._read_labels = read_pseudo_labels

    def __len__(self) -> int:
        return 10**12

    def image_for(self, index: int) -> Path:
        """A seeded permutation per pass over the folder."""
        n = len(self.images)
        epoch, position = divmod(int(index), n)
        order = np.random.default_rng((self.seed, 2, epoch)).permutation(n)
        return self.images[order[position]]

    def load(self, path: Path, rng: np.random.Generator):
        """The image scaled (aspect kept; `scale`, at least covering `size`) and cropped at a
        random place, with its labels moved the same way."""
        image = read_rgb(path)
        labels = self._read_labels(label_path(self.labels_dir, self.images_dir, path))
        h0, w0 = image.shape[:2]
        if tuple(int(v) for v in labels["image_size"]) != (h0, w0):
            raise ValueError(f"{path}: pseudo-labels were made for a "
                             f"{tuple(labels['image_size'])} image, the file is {h0}x{w0}; "
                             "re-run superseg-adapt")
        image, _, to_crop = scaled_crop(image, (self.height, self.width), self.data["scale"], rng)
        points = warp_points(to_crop, labels["keypoints"]) if len(labels["keypoints"]) \
            else np.zeros((0, 2))
        return image, points

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, 3, int(index)))
        image_a, points_a = self.load(self.image_for(index), rng)
        H = sample_homography(rng, self.height, self.width, **self.homography)
        image_b, valid_b, points_b = warp_view(image_a, points_a, H)
        valid_a = np.ones(valid_b.shape, bool)
        targets_a = keypoint_targets(points_a, valid_a, rng)
        targets_b = keypoint_targets(points_b, valid_b, rng)
        out = {"image_a": to_tensor(photometric_augment(image_a, rng, self.photometric),
                                    self.channels),
               "image_b": to_tensor(photometric_augment(image_b, rng, self.photometric),
                                    self.channels),
               "H": torch.from_numpy(H), "valid_b": torch.from_numpy(valid_b)}
        out.update({f"{k}_a": v for k, v in targets_a.items()})
        out.update({f"{k}_b": v for k, v in targets_b.items()})
        return out
