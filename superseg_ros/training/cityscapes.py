"""Cityscapes frames for training: image, labels (raw and remapped), calibration, odometry and
the neighbouring video frame, read from the official folder layout.

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png      (the frames)
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       (label ids 0..33)
    <root>/camera/<split>/<city>/<city>_<seq>_<frame>_camera.json               (calibration)
    <root>/vehicle/<split>/<city>/<city>_<seq>_<frame>_vehicle.json             (odometry)
    <root>/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png  (video)

`<city>_<seq>_<frame>` is the frame's stem. The official packages are camera_trainvaltest (one
JSON per annotated frame; the calibration is fixed within a 30-frame snippet, so a frame without
its own JSON uses the nearest one of its snippet, as bags.py does), vehicle_trainvaltest
(`vehicle/`) and vehicle_sequence (`vehicle_sequence/`, one JSON per video frame). Both
`<kind>/` and `<kind>_sequence/` are searched for camera and vehicle files, own folder first.

A modality whose folder (`<kind>/<split>`) is absent is simply not there (None), like gtFine for
a download without it; a file missing from a folder that exists, or any malformed file, raises
CityscapesError naming the file and what is wrong. The test split's gtFine holds only void
labels (ego vehicle, rectification border), which remap to 255 (ignore) in every mode.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np

from ..config import ConfigError, merge_config
from ..semantics import CITYSCAPES, Ontology, check_mode, remap_labels

DEFAULT_CITYSCAPES_CONFIG = {
    "label_modes": ["classes", "groups4"],  # remapped label maps returned under "labels"
    "neighbour_offset": 1,      # frames to the neighbour in leftImg8bit_sequence (+1 = next)
    "neighbour": True,          # read the neighbouring frame when leftImg8bit_sequence exists
    "frame_rate": 17.0,         # Hz of the Cityscapes video: neighbour dt = offset / frame_rate
    "require_camera": False,    # True: a frame without camera JSON is an error instead of None
    "require_vehicle": False,   # True: the same for the vehicle JSON
    "cities": [],               # restrict to these cities; empty = all
}

CAMERA_KEYS = {"extrinsic": ("baseline", "pitch", "roll", "yaw", "x", "y", "z"),
               "intrinsic": ("fx", "fy", "u0", "v0")}
VEHICLE_KEYS = ("gpsHeading", "gpsLatitude", "gpsLongitude", "outsideTemperature", "speed",
                "yawRate")
VEHICLE_REQUIRED_NUMBERS = ("speed", "yawRate")  # what ego-motion needs; GPS may be null

IMAGE_SUFFIX = "_leftImg8bit.png"
STEM = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})$")


class CityscapesError(ValueError):
    """A Cityscapes file or folder that cannot be used; the message names it and what is wrong."""


def cityscapes_config(overrides: dict | None = None) -> dict:
    """DEFAULT_CITYSCAPES_CONFIG updated with `overrides`; bad keys/values are a ConfigError."""
    conf = merge_config(DEFAULT_CITYSCAPES_CONFIG, overrides, where="cityscapes")
    try:
        conf["label_modes"] = [check_mode(mode) for mode in conf["label_modes"]]
    except ConfigError as exc:
        raise ConfigError(f"cityscapes.label_modes: {exc}") from exc
    if not isinstance(conf["neighbour_offset"], int) or conf["neighbour_offset"] == 0:
        raise ConfigError("cityscapes.neighbour_offset must be a non-zero integer number of "
                          f"frames, got {conf['neighbour_offset']!r}")
    if not conf["frame_rate"] > 0:
        raise ConfigError(f"cityscapes.frame_rate must be > 0, got {conf['frame_rate']}")
    return conf


class CityscapesFrames:
    """The frames of one split, sorted by (city, sequence, frame); `frames[i]` is the i-th stem.

    `self[i]` is a dict:
      name, city, sequence, frame   stem and its parts (sequence/frame as ints)
      image                         (H, W, 3) uint8 RGB
      label_ids                     (H, W) uint8 Cityscapes ids, or None without gtFine
      labels                        {mode: (H, W) uint8} for config label_modes ({} without gtFine)
      camera                        {"extrinsic": {...}, "intrinsic": {...}} floats, or None
      vehicle                       {gpsHeading, ..., speed (m/s), yawRate (rad/s)}, or None
      neighbour                     None without leftImg8bit_sequence (or config neighbour=False),
                                    else {name, frame, offset, dt (s), image, camera, vehicle}
    """

    dataset = "cityscapes"

    def __init__(self, root: str | Path, split: str, config: dict | None = None):
        self.config = cityscapes_config(config)
        self.root, self.split = Path(root), split
        self.images_dir = image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise CityscapesError(f"{image_dir} is not a folder: expected the Cityscapes layout "
                                  f"<root>/leftImg8bit/<split>/<city>/ "
                                  f"(splits under {self.root / 'leftImg8bit'}: "
                                  f"{', '.join(_subfolders(self.root / 'leftImg8bit')) or 'none'})")
        self._images = _list_frames(image_dir, self.config["cities"])
        if not self._images:
            raise CityscapesError(f"no *{IMAGE_SUFFIX} frames under {image_dir}/<city>/")
        self.frames = list(self._images)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def image_path(self, index: int) -> Path:
        """The leftImg8bit PNG of frame `index`."""
        return self._images[self.frames[index]]

    def folder(self, kind: str, city: str) -> Path:
        return self.root / kind / self.split / city

    @property
    def labelled(self) -> bool:
        return self.has("gtFine")

    def has(self, kind: str) -> bool:
        """Whether the modality folder `<root>/<kind>/<split>` exists."""
        return (self.root / kind / self.split).is_dir()

    def __getitem__(self, index: int) -> dict:
        name = self.frames[index]
        parts = STEM.match(name)
        city, seq, frame = parts["city"], parts["seq"], int(parts["frame"])
        image = read_image(self._images[name])
        label_ids = self._label_ids(city, name, image.shape[:2])
        labels = {} if label_ids is None else {
            mode: remap_labels(label_ids, mode) for mode in self.config["label_modes"]}
        camera = self._camera(city, seq, name)
        return {
            "name": name, "city": city, "sequence": int(seq), "frame": frame,
            "image": image, "label_ids": label_ids, "labels": labels,
            "camera": camera, "vehicle": self._vehicle(city, name),
            "neighbour": self._neighbour(city, seq, frame, camera),
        }

    # --- modalities --------------------------------------------------------------------------

    def _label_ids(self, city: str, name: str, shape) -> np.ndarray | None:
        if not self.has("gtFine"):
            return None
        path = self.folder("gtFine", city) / f"{name}_gtFine_labelIds.png"
        return read_label_ids(path, shape)

    def _camera(self, city: str, seq: str, name: str) -> dict | None:
        path = self._find_json("camera", city, name, same_snippet=f"{city}_{seq}_")
        if path is None:
            return self._absent("camera", "require_camera", city, name)
        return read_camera_json(path)

    def _vehicle(self, city: str, name: str) -> dict | None:
        path = self._find_json("vehicle", city, name)
        if path is None:
            return self._absent("vehicle", "require_vehicle", city, name)
        return read_vehicle_json(path)

    def _absent(self, kind: str, require_key: str, city: str, name: str) -> None:
        """None for a modality without files, or the error that says where it was looked for."""
        searched = [self.folder(k, city) for k in (kind, f"{kind}_sequence") if self.has(k)]
        if searched or self.config[require_key]:
            where = ", ".join(map(str, searched)) or \
                f"{self.root / kind / self.split} (no such folder)"
            raise CityscapesError(f"no {name}_{kind}.json for frame {name}; looked in {where}")
        return None

    def _find_json(self, kind: str, city: str, name: str, same_snippet: str | None = None):
        """`<kind>[_sequence]/<split>/<city>/<name>_<kind>.json`; with same_snippet, else the
        nearest frame's file of that snippet (calibration is fixed within a snippet)."""
        folders = [self.folder(k, city) for k in (kind, f"{kind}_sequence") if self.has(k)]
        for folder in folders:
            if (path := folder / f"{name}_{kind}.json").is_file():
                return path
        if same_snippet is None:
            return None
        frame = int(STEM.match(name)["frame"])
        for folder in folders:
            others = sorted(folder.glob(f"{same_snippet}*_{kind}.json"))
            if others:
                return min(others, key=lambda p: abs(int(p.name.split("_")[-2]) - frame))
        return None

    def _neighbour(self, city: str, seq: str, frame: int, camera: dict | None) -> dict | None:
        if not self.config["neighbour"] or not self.has("leftImg8bit_sequence"):
            return None
        offset = self.config["neighbour_offset"]
        name = f"{city}_{seq}_{frame + offset:06d}"
        path = self.folder("leftImg8bit_sequence", city) / f"{name}{IMAGE_SUFFIX}"
        if frame + offset < 0 or not path.is_file():
            raise CityscapesError(f"{path} does not exist: the neighbour of frame "
                                  f"{city}_{seq}_{frame:06d} at offset {offset} (snippets hold "
                                  "frames 0..29 around the annotated frame 19; lower "
                                  "neighbour_offset or set neighbour: false)")
        own_camera = self._find_json("camera", city, name)
        return {
            "name": name, "frame": frame + offset, "offset": offset,
            "dt": offset / self.config["frame_rate"],
            "image": read_image(path),
            "camera": read_camera_json(own_camera) if own_camera else camera,
            "vehicle": (read_vehicle_json(p) if (p := self._find_json("vehicle", city, name))
                        else None),
        }


# --- file readers (each error names the file) ----------------------------------------------------


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an 8-bit colour PNG."""
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgr is None or bgr.size == 0:
        raise CityscapesError(f"{path}: unreadable image (missing, truncated or not a PNG)")
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] not in (3, 4):
        raise CityscapesError(f"{path}: expected an 8-bit colour image, got dtype {bgr.dtype} "
                              f"and shape {bgr.shape}")
    return cv2.cvtColor(bgr[..., :3], cv2.COLOR_BGR2RGB)


def read_label_ids(path: Path, shape=None) -> np.ndarray:
    """(H, W) uint8 label ids from a *_gtFine_labelIds.png, checked against the image `shape`."""
    return read_label_png(path, shape, CITYSCAPES, CityscapesError,
                          missing="the gtFine folder of this split is there, so every frame "
                                  "needs its labelIds PNG",
                          other_kinds="a _color or _instanceIds PNG?",
                          outside="is this a _labelTrainIds PNG?")


def read_label_png(path: Path, shape, ontology: Ontology, error: type, missing: str,
                   other_kinds: str, outside: str) -> np.ndarray:
    """(H, W) uint8 label values of `ontology` from a single-channel 8-bit PNG, checked against
    the image `shape` (H, W, ...); every problem is an `error` naming the file, with the
    dataset's hint of what it may be instead."""
    if not path.is_file():
        raise error(f"{path} does not exist ({missing})")
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None or ids.size == 0:
        raise error(f"{path}: unreadable label PNG (truncated or not a PNG)")
    if ids.ndim != 2 or ids.dtype != np.uint8:
        raise error(f"{path}: expected a single-channel 8-bit label-id PNG, got dtype "
                    f"{ids.dtype} and shape {ids.shape} ({other_kinds})")
    if shape is not None and ids.shape != tuple(shape[:2]):
        raise error(f"{path}: label size {ids.shape[1]}x{ids.shape[0]} does not match "
                    f"the image size {shape[1]}x{shape[0]}")
    bad = ontology.values_outside(ids)
    if bad.size:
        raise error(f"{path}: values {bad[:10].tolist()} are not {ontology.name} label ids "
                    f"(0..{ontology.max_id}); {outside}")
    return ids


def read_camera_json(path: Path) -> dict:
    """{"extrinsic": {...}, "intrinsic": {...}} with every CAMERA_KEYS value a finite float."""
    data = _read_json(path)
    out = {}
    for section, keys in CAMERA_KEYS.items():
        values = data.get(section)
        if not isinstance(values, dict):
            raise CityscapesError(f"{path}: missing '{section}' object (a Cityscapes camera JSON "
                                  f"has 'extrinsic' and 'intrinsic')")
        out[section] = {key: _number(values, key, path, f"{section}.{key}") for key in keys}
    return out


def read_vehicle_json(path: Path) -> dict:
    """The vehicle JSON: all VEHICLE_KEYS present; speed and yawRate finite numbers."""
    data = _read_json(path)
    missing = [key for key in VEHICLE_KEYS if key not in data]
    if missing:
        raise CityscapesError(f"{path}: missing key(s) {', '.join(missing)} (a Cityscapes vehicle "
                              f"JSON has {', '.join(VEHICLE_KEYS)})")
    out = {key: (None if data[key] is None else _number(data, key, path, key))
           for key in VEHICLE_KEYS}
    for key in VEHICLE_REQUIRED_NUMBERS:
        _number(data, key, path, key)
    return out


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CityscapesError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CityscapesError(f"{path}: bad JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CityscapesError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _number(values: dict, key: str, path: Path, label: str) -> float:
    if key not in values:
        raise CityscapesError(f"{path}: missing key '{label}'")
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CityscapesError(f"{path}: '{label}' must be a finite number, got {value!r}")
    return float(value)


def _list_frames(image_dir: Path, cities) -> dict[str, Path]:
    """{stem: path}, sorted by (city, sequence, frame); a badly named frame is an error."""
    frames = {}
    for path in image_dir.glob(f"*/*{IMAGE_SUFFIX}"):
        stem = path.name[: -len(IMAGE_SUFFIX)]
        match = STEM.match(stem)
        if match is None or match["city"] != path.parent.name:
            raise CityscapesError(f"{path}: not a Cityscapes frame name; expected "
                                  f"{path.parent.name}_<seq:6 digits>_<frame:6 digits>"
                                  f"{IMAGE_SUFFIX}")
        if not cities or match["city"] in cities:
            frames[stem] = path
    order = sorted(frames, key=lambda s: (STEM.match(s)["city"], STEM.match(s)["seq"],
                                          STEM.match(s)["frame"]))
    return {stem: frames[stem] for stem in order}


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
