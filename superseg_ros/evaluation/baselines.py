"""Methods under evaluation: one interface for OpenCV SIFT/ORB and superseg_ros models.

A method is anything with `extract(image_rgb, max_keypoints) -> dict`:

    keypoints    (N, 2) float32 x, y, pixel-centre convention (DEVELOPERS.md)
    scores       (N,) float32, higher = better
    descriptors  (N, D) float32 (matched with L2) or (N, B) uint8 packed bits (Hamming)
    binary       bool, True for packed-bit descriptors

Wrap any such callable in `Method(name, extract, info)` to add it to an evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from ..extractor import Extractor


@dataclass
class Method:
    name: str
    extract_fn: Callable[[np.ndarray, int], dict]
    info: dict = field(default_factory=dict)  # what it is, for the config record

    def extract(self, image_rgb: np.ndarray, max_keypoints: int) -> dict:
        return check_features(self.extract_fn(image_rgb, max_keypoints), self.name)


class PairExtraction:
    """Every method's features on every readable pair of a dataset (`run` yields them pair by
    pair), the extraction time per method and image, and the pairs that could not be read (an
    unreadable image costs its pair, not the run)."""

    def __init__(self, methods: list[Method]):
        self.methods = methods
        self.seconds = {m.name: [] for m in methods}
        self.failures: list[str] = []

    def run(self, dataset, max_keypoints: int, desc: str):
        """Yields (index, pair, [(method, features of A, features of B)])."""
        for index in tqdm(range(len(dataset)), desc=desc, unit="pair", disable=len(dataset) < 2):
            try:
                pair = dataset[index]
            except ValueError as exc:
                self.failures.append(str(exc))
                continue
            features = []
            for method in self.methods:
                t0 = time.perf_counter()
                feat_a = method.extract(pair.image_a, max_keypoints)
                feat_b = method.extract(pair.image_b, max_keypoints)
                self.seconds[method.name].append((time.perf_counter() - t0) / 2)
                features.append((method, feat_a, feat_b))
            yield index, pair, features

    def ms_per_image(self, name: str) -> float:
        seconds = self.seconds[name]
        return 1000 * float(np.mean(seconds)) if seconds else float("nan")


def check_features(out: dict, name: str) -> dict:
    """Validate a method's output (a bad plug-in fails here with its name, not deep in a metric)."""
    missing = {"keypoints", "descriptors"} - set(out)
    if missing:
        raise ValueError(f"method {name}: output lacks {', '.join(sorted(missing))}")
    kp = np.asarray(out["keypoints"], np.float32).reshape(-1, 2)
    desc = np.asarray(out["descriptors"])
    binary = bool(out.get("binary", False))
    if len(desc) != len(kp):
        raise ValueError(f"method {name}: {len(kp)} keypoints but {len(desc)} descriptors")
    if binary and desc.dtype != np.uint8:
        raise ValueError(f"method {name}: binary descriptors must be packed uint8")
    desc = desc.reshape(len(kp), -1) if len(kp) else desc.reshape(0, max(1, desc.shape[-1]))
    scores = np.asarray(out.get("scores", np.ones(len(kp))), np.float32)
    return {"keypoints": kp, "scores": scores,
            "descriptors": desc if binary else desc.astype(np.float32), "binary": binary}


def top_k(out: dict, k: int) -> dict:
    """The k best keypoints by score (all when k <= 0 or fewer)."""
    if k <= 0 or len(out["scores"]) <= k:
        return out
    keep = np.argsort(-np.asarray(out["scores"]), kind="stable")[:k]
    return {key: (value[keep] if isinstance(value, np.ndarray) else value)
            for key, value in out.items()}


# --- OpenCV --------------------------------------------------------------------------------------


def _gray(image_rgb: np.ndarray) -> np.ndarray:
    return image_rgb if image_rgb.ndim == 2 else cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)


def _from_cv(kps, desc, xy: np.ndarray, binary: bool, max_keypoints: int) -> dict:
    n = len(kps)
    out = {"keypoints": xy.astype(np.float32).reshape(n, 2),
           "scores": np.array([k.response for k in kps], np.float32),
           "descriptors": desc if desc is not None else
           np.zeros((0, 32 if binary else 128), np.uint8 if binary else np.float32),
           "binary": binary}
    return top_k(out, max_keypoints)


def make_sift(fix_coordinates: bool = True) -> Method:
    """OpenCV SIFT (default parameters, nfeatures = the keypoint budget), L2 matching.

    OpenCV detects on a 2x upsampled base image (pixel x sits at 2x + 0.5 there) and halves the
    coordinates, so its keypoints are 0.25 px right/down of the feature; `fix_coordinates`
    subtracts that (measured on sub-pixel Gaussian blobs: +0.25 at every octave).
    """
    def extract(image_rgb, max_keypoints):
        sift = cv2.SIFT_create(nfeatures=max(0, max_keypoints))
        kps, desc = sift.detectAndCompute(_gray(image_rgb), None)
        xy = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        if fix_coordinates:
            xy -= 0.25
        return _from_cv(kps, desc, xy, False, max_keypoints)

    return Method("sift", extract, {"kind": "OpenCV SIFT", "opencv": cv2.__version__,
                                    "coordinates": "-0.25 px fix" if fix_coordinates else "raw"})


def make_orb(fix_coordinates: bool = True) -> Method:
    """OpenCV ORB (default parameters, nfeatures = the keypoint budget), Hamming matching.

    ORB scales pyramid-level coordinates by s = scaleFactor^level, while cv2.resize's pixel
    centres map as x = (u + 0.5) s - 0.5; `fix_coordinates` adds the missing 0.5 (s - 1), which
    is 1.3 px at the coarsest default level.
    """
    def extract(image_rgb, max_keypoints):
        orb = cv2.ORB_create(nfeatures=max(1, max_keypoints))
        kps, desc = orb.detectAndCompute(_gray(image_rgb), None)
        xy = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        if fix_coordinates and len(kps):
            scale = orb.getScaleFactor() ** np.array([k.octave for k in kps], np.float64)
            xy += 0.5 * (scale[:, None] - 1)
        return _from_cv(kps, desc, xy, True, max_keypoints)

    return Method("orb", extract, {"kind": "OpenCV ORB", "opencv": cv2.__version__,
                                   "coordinates": "pyramid fix" if fix_coordinates else "raw"})


BASELINES = {"sift": make_sift, "orb": make_orb}


# --- superseg_ros models -------------------------------------------------------------------------


def make_superseg(model, description: str, *, name: str = "superseg", max_keypoints: int = 1000,
                  subpixel: bool = True, semantic_filter: str = "auto", device="cpu",
                  extractor_config: dict | None = None) -> Method:
    """A superseg_ros model through the real inference path (`Extractor`), with the ablation
    switches: sub-pixel refinement on/off, semantic filter auto/on/off."""
    conf = dict(extractor_config or {}, max_keypoints=int(max_keypoints), subpixel=bool(subpixel),
                semantic_filter=semantic_filter)
    extractor = Extractor(model, conf, device=device)

    def extract(image_rgb, k):
        f = extractor(image_rgb).unbatch()[0]
        return top_k({"keypoints": f["keypoints"], "scores": f["scores"],
                      "descriptors": f["descriptors"], "binary": False}, k)

    info = {"kind": "superseg_ros", "model": description, "subpixel": bool(subpixel),
            "extractor": dict(extractor.config),
            "semantic_filter": "on" if extractor.semantic_active else "off",
            "device": str(extractor.device)}
    if extractor.semantic_note:
        info["note"] = extractor.semantic_note
    return Method(name, extract, info)


ABLATIONS = ("subpixel", "semantic")


def model_methods(model, description: str, ablations=(), semantic_filter: str = "auto",
                  **kwargs) -> tuple[list[Method], list[str]]:
    """The model as configured (`semantic_filter` auto/on/off), plus one variant per ablation
    switch; and notes on skipped ones.

    subpixel: the same model with keypoints left on the NMS grid.
    semantic: the same model with the semantic filter switched the other way: without it when
              it is on, with it when it was turned off by choice (only if the semantic head was
              trained; an untrained head would filter by noise).
    """
    base = make_superseg(model, description, semantic_filter=semantic_filter, **kwargs)
    methods, notes = [base], []
    if "subpixel" in ablations:
        methods.append(make_superseg(model, description, name="superseg-no-subpixel",
                                     semantic_filter=semantic_filter,
                                     **{**kwargs, "subpixel": False}))
    if "semantic" in ablations:
        if base.info["semantic_filter"] == "on":
            methods.append(make_superseg(model, description, name="superseg-no-semantic",
                                         **{**kwargs, "semantic_filter": "off"}))
        elif semantic_filter == "off" and model.trained_heads["semantic"]:
            methods.append(make_superseg(model, description, name="superseg-with-semantic",
                                         **{**kwargs, "semantic_filter": "on"}))
        else:
            notes.append("semantic ablation skipped: the model's semantic filter is off "
                         "(semantic head untrained), so with and without are the same run")
    return methods, notes
