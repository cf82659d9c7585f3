"""Stage-3 training items: a frame of a labelled street dataset (`data.dataset`: cityscapes or
camvid) with its semantic labels and keypoint pseudo-labels, and a second view made by a
geometry-aware homography, reproducible item by item.

Item `i` depends only on (seed, i) (as in data.py): which frame (a seeded permutation per pass
over the split), its random scale and crop, the homography and the photometric changes.

    view A   the frame resized by a random factor in `scale` (never below what covers `size`)
             and cropped to `size` at a random place; its labels (`label_mode`: classes or
             groups4, 255 = ignore) resized the same way (nearest, pixel-centre exact), its
             pseudo-keypoints (superseg-adapt .npz, original pixels) moved the same way.
    H        H_syn @ H_road. H_road is the road-plane homography between the frame and its
             neighbouring video frame (road_homography.cityscapes_road_homography: camera JSON,
             vehicle speed/yawRate over dt = neighbour_offset / frame_rate), built at the
             calibration's resolution (`calibration_size`, 1024x2048 for Cityscapes) and
             conjugated into the crop's pixels, H_crop = T H_cal T^-1 with T = crop o resize o
             S(calibration -> file), so the intrinsics stay consistent whatever the file size,
             resize and crop. It is the identity when the frame has no camera or vehicle JSON,
             or its neighbour is not in leftImg8bit_sequence, or `ego_motion` is off. H_syn is a
             mild random homography in the crop's pixels (`homography` keys; defaults
             road_homography.MILD_HOMOGRAPHY_CONFIG). CamVid has no calibration or odometry,
             so its H is H_syn alone.
    view B   A warped by H (black outside A; not the real neighbouring image, so the keypoint
             and descriptor targets are exact), its keypoints = H(A's), its labels = A's warped
             by H with nearest interpolation, 255 where B shows nothing of A.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import ConfigError, merge_config, require_choice
from ..homography import homography_config, scaling_matrix, warp_points
from ..semantics import IGNORE, check_mode, ontology
from .augment import photometric_augment, photometric_config
from .camvid import CamVidFrames
from .cityscapes import CityscapesError, CityscapesFrames
from .data import check_scale, keypoint_targets, label_path, scaled_crop, to_tensor, warp_view
from .road_homography import (MILD_HOMOGRAPHY_CONFIG, compose_with_synthetic,
                              cityscapes_road_homography)
from .synthetic_shapes import CELL

LABELLED_DATA_DEFAULTS = {
    "dataset": "cityscapes",      # cityscapes | camvid: the layout and label table of `root`
    "root": "",                   # Cityscapes root (leftImg8bit/, gtFine/, camera/, vehicle/ ...)
                                  # or CamVid root (train/, trainannot/, val/, valannot/)
    "split": "train",
    "validation_split": "val",    # frames for validation ("" = no validation)
    "cities": [],                 # Cityscapes: train on these cities only (empty = all)
    "label_mode": "classes",      # classes | groups4: what the semantic head learns
    "labels": "",                 # superseg-adapt labels of the split's image folder (same
                                  # relative layout, <stem>.npz), or "adapt" (pipeline)
    "label_rounds": 1,            # with labels: adapt -- label, train, relabel, train ...
    "size": [512, 1024],          # training crop (H, W), multiples of 8
    "scale": [0.5, 1.0],          # resize factor of the frame before cropping (log-uniform)
    # Cityscapes only (CamVid has no calibration or odometry):
    "calibration_size": [1024, 2048],  # (H, W) the camera JSON intrinsics are given for
    "ego_motion": True,           # road homography from camera + vehicle JSON (else identity)
    "neighbour_offset": 1,        # frames to the neighbour whose ego-motion is used
    "frame_rate": 17.0,           # Hz of the Cityscapes video
}
DATASETS = ("cityscapes", "camvid")


def labelled_data_config(data: dict | None) -> dict:
    conf = merge_config(LABELLED_DATA_DEFAULTS, data, where="data")
    require_choice(conf["dataset"], DATASETS, "data.dataset")
    try:
        conf["label_mode"] = check_mode(conf["label_mode"])
    except ConfigError as exc:
        raise ConfigError(f"data.label_mode: {exc}") from exc
    if not conf["root"]:
        layout = "leftImg8bit/ and gtFine/" if conf["dataset"] == "cityscapes" \
            else "train/, trainannot/, val/, valannot/"
        raise ConfigError(f"data.root: the {conf['dataset']} folder (with {layout}) is required "
                          "for the labelled stage")
    if conf["dataset"] == "camvid" and conf["cities"]:
        raise ConfigError("data.cities selects Cityscapes cities; CamVid has none")
    size = conf["size"]
    if len(size) != 2 or any(int(v) % CELL or int(v) < CELL for v in size):
        raise ConfigError(f"data.size must be [H, W], multiples of {CELL}, got {size}")
    check_scale(conf["scale"])
    if len(conf["calibration_size"]) != 2 or min(conf["calibration_size"]) < 1:
        raise ConfigError("data.calibration_size must be [H, W] in pixels")
    if not isinstance(conf["neighbour_offset"], int) or conf["neighbour_offset"] == 0:
        raise ConfigError("data.neighbour_offset must be a non-zero integer")
    if not conf["frame_rate"] > 0:
        raise ConfigError("data.frame_rate must be > 0")
    return conf


def warp_labels(labels: np.ndarray, H: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Label map of view B: labels_b(H x) = labels_a(x), nearest; IGNORE where B is not valid."""
    h, w = labels.shape
    out = cv2.warpPerspective(labels, np.asarray(H, np.float64), (w, h), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE)
    out[~valid] = IGNORE
    return out


class LabelledPairs(Dataset):
    """Training items of the labelled stage (see the module docstring); `frames` is the
    CityscapesFrames or CamVidFrames reader of `data.split`."""

    def __init__(self, data: dict, homography: dict, photometric: dict, channels: int,
                 seed: int, labels_dir: str | Path | None = None):
        from .adaptation import read_pseudo_labels  # only the keypoint stages need it
        self.data = labelled_data_config(data)
        self.homography = homography_config({**MILD_HOMOGRAPHY_CONFIG, **(homography or {})})
        self.photometric = photometric_config(photometric)
        self.channels, self.seed = int(channels), int(seed)
        self.height, self.width = (int(v) for v in self.data["size"])
        self.mode = self.data["label_mode"]
        self.ontology = ontology(self.data["dataset"])
        self.frames = frames_reader(self.data, self.data["split"], [self.mode],
                                    self.data["cities"])
        if not self.frames.labelled:
            raise ConfigError(f"data.root: {self.frames.root / 'gtFine' / self.frames.split} "
                              "does not exist; the labelled stage needs the gtFine labels")
        self.images_dir = self.frames.images_dir
        labels = labels_dir or self.data["labels"]
        if not labels or labels == "adapt":
            raise ConfigError("data.labels: a folder of superseg-adapt pseudo-labels of "
                              f"{self.images_dir} (or 'adapt' with superseg-train)")
        self.labels_dir = Path(labels)
        missing = [p for p in map(self.label_file, range(len(self.frames))) if not p.is_file()]
        if missing:
            raise ConfigError(f"{len(missing)} of {len(self.frames)} frames have no pseudo-labels "
                              f"in {self.labels_dir} (first: {missing[0]}); run superseg-adapt "
                              f"on {self.images_dir} --output {self.labels_dir}")
        self._read_labels = read_pseudo_labels

    def __len__(self) -> int:
        return 10**12

    def class_pixel_counts(self, n_classes: int) -> np.ndarray:
        """(n_classes,) int64 labelled pixels per class over the whole split (ignore left out)."""
        counts = np.zeros(256, np.int64)
        for k in tqdm(range(len(self.frames)), desc="class frequencies", unit="frame",
                      leave=False):
            counts += np.bincount(self.frames[k]["labels"][self.mode].ravel(), minlength=256)
        return counts[:n_classes]

    def label_file(self, k: int) -> Path:
        return label_path(self.labels_dir, self.images_dir, self.frames.image_path(k))

    def frame_for(self, index: int) -> int:
        """A seeded permutation per pass over the split."""
        n = len(self.frames)
        epoch, position = divmod(int(index), n)
        return int(np.random.default_rng((self.seed, 6, epoch)).permutation(n)[position])

    def road_homography(self, frame: dict) -> np.ndarray:
        """H_road in the calibration's pixels (identity without camera, odometry or neighbour)."""
        conf = self.data
        if not conf["ego_motion"] or frame["camera"] is None or frame["vehicle"] is None:
            return np.eye(3)
        offset = conf["neighbour_offset"]
        neighbour = (self.frames.folder("leftImg8bit_sequence", frame["city"])
                     / f"{frame['city']}_{frame['sequence']:06d}_{frame['frame'] + offset:06d}"
                       "_leftImg8bit.png")
        if not neighbour.is_file():
            return np.eye(3)
        return cityscapes_road_homography(frame["camera"], frame["vehicle"],
                                          offset / conf["frame_rate"])

    def view_a(self, frame: dict, rng: np.random.Generator):
        """(image, labels, T): the resized crop, its labels, and T = file pixels -> crop pixels."""
        image, labels, T = scaled_crop(frame["image"], (self.height, self.width),
                                       self.data["scale"], rng, frame["labels"][self.mode])
        return image, labels, T

    def item_geometry(self, index: int):
        """Everything geometric about item `index` before the photometric changes (tests)."""
        rng = np.random.default_rng((self.seed, 7, int(index)))
        k = self.frame_for(index)
        frame = self.frames[k]
        image, labels, T = self.view_a(frame, rng)
        h0, w0 = frame["image"].shape[:2]
        hc, wc = (int(v) for v in self.data["calibration_size"])
        to_file = scaling_matrix(w0 / wc, h0 / hc)
        to_crop = T @ to_file                       # calibration pixels -> crop pixels
        h_road_cal = self.road_homography(frame)
        h_road = to_crop @ h_road_cal @ np.linalg.inv(to_crop)
        H, h_syn = compose_with_synthetic(h_road / h_road[2, 2], rng, self.homography,
                                          shape=(self.height, self.width))
        pseudo = self._read_labels(self.label_file(k))
        if tuple(int(v) for v in pseudo["image_size"]) != (h0, w0):
            raise CityscapesError(f"{self.label_file(k)}: pseudo-labels were made for a "
                                  f"{tuple(pseudo['image_size'])} image, "
                                  f"{self.frames.image_path(k)} is {h0}x{w0}; re-run "
                                  "superseg-adapt")
        points = warp_points(T, pseudo["keypoints"]) if len(pseudo["keypoints"]) \
            else np.zeros((0, 2))
        ego = not np.allclose(h_road_cal, np.eye(3))
        return {"frame": frame, "image": image, "labels": labels, "points": points, "H": H,
                "H_road": h_road, "H_syn": h_syn, "T": T, "ego_motion": ego, "rng": rng}

    def __getitem__(self, index: int) -> dict:
        g = self.item_geometry(index)
        rng, H = g["rng"], g["H"]
        image_b, valid_b, points_b = warp_view(g["image"], g["points"], H)
        seg_b = warp_labels(g["labels"], H, valid_b)
        targets_a = keypoint_targets(g["points"], np.ones(valid_b.shape, bool), rng)
        targets_b = keypoint_targets(points_b, valid_b, rng)
        out = {"image_a": to_tensor(photometric_augment(g["image"], rng, self.photometric),
                                    self.channels),
               "image_b": to_tensor(photometric_augment(image_b, rng, self.photometric),
                                    self.channels),
               "H": torch.from_numpy(H), "valid_b": torch.from_numpy(valid_b),
               "segmentation_a": torch.from_numpy(g["labels"]),
               "segmentation_b": torch.from_numpy(seg_b),
               "ego_motion": torch.tensor(float(g["ego_motion"]))}
        out.update({f"{k}_a": v for k, v in targets_a.items()})
        out.update({f"{k}_b": v for k, v in targets_b.items()})
        return out


def frames_reader(data: dict, split: str, modes, cities=()):
    """The frames of `split` of `data.dataset` with these label modes: CamVidFrames, or
    CityscapesFrames (cities: empty = all) whose neighbouring image is never read (only its
    existence matters here)."""
    try:
        if data["dataset"] == "camvid":
            return CamVidFrames(data["root"], split, {"label_modes": list(modes)})
        return CityscapesFrames(data["root"], split, {
            "label_modes": list(modes), "neighbour": False, "cities": list(cities),
            "neighbour_offset": data["neighbour_offset"], "frame_rate": data["frame_rate"]})
    except CityscapesError as exc:
        raise ConfigError(f"data.root: {exc}") from exc
