"""ROS 2 bags without rosbag2: frame sources → Image/CameraInfo bags, reading, recording summaries.

Plain logic on top of `rosbags` (pure Python): no rclpy here, so bags can be made and checked on
machines without ROS. Bags are rosbag2 metadata version 9 (mcap or sqlite3), which `ros2 bag play`
and `ros2 bag info` read.

Timestamps: frame i gets header.stamp = start + i/rate and the same bag receive time, and
Image and CameraInfo of one frame share it exactly (what an exact-time synchroniser needs). The
bag's metadata custom_data maps each stamp to the frame's source file (bag_frame_names).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .homography import scaling_matrix

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp"}
STORAGES = ("mcap", "sqlite3")
ENCODINGS = ("rgb8", "bgr8", "mono8")
IMAGE_TYPE = "sensor_msgs/msg/Image"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
KEYPOINTS_TYPE = "superseg_msgs/msg/Keypoints"
DEFAULT_FOLDER_RATE = 10.0
CITYSCAPES_RATE = 17.0  # leftImg8bit_sequence snippets are recorded at 17 Hz
# <city>_<seq>_<frame>_leftImg8bit.png
CITYSCAPES_NAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")
# What a plain image folder may carry, first found wins: ROS camera_calibration YAML, 3x3 text K.
FOLDER_CALIBRATION_FILES = ("camera_info.yaml", "camera.yaml", "calibration.yaml", "cam.txt",
                            "K.txt")
# KITTI raw timestamps.txt: "2011-09-26 13:02:25.964389445" (nanosecond fraction).
KITTI_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?$")
# TUM-style file names: Unix time in seconds, e.g. 1341847980.722988.png.
UNIX_TIME_NAME = re.compile(r"^\d+(\.\d+)?$")
# Seconds since the epoch a file name must fall in (1973..2286): frame indices like 000123 are
# numbers too, but not times.
UNIX_TIME_RANGE = (1e8, 1e10)
# bag metadata custom_data key: JSON {"<header stamp ns>": "<source file name>"}.
FRAME_NAMES_KEY = "superseg_ros.frame_names"
# The repository's own interface package, for recording when no ament index provides it.
LOCAL_MSG_ROOT = Path(__file__).resolve().parents[1]


class BagError(Exception):
    """Bad input a user can fix (the message says what); CLIs exit 2 on it."""


# --------------------------------------------------------------------------- calibration

@dataclass(frozen=True)
class Calibration:
    """Pinhole intrinsics for CameraInfo; width/height None = take them from the images."""

    k: np.ndarray                       # 3x3
    width: int | None = None
    height: int | None = None
    distortion_model: str = "plumb_bob"
    d: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    source: str = ""

    def for_size(self, width: int, height: int) -> Calibration:
        """This calibration for images of width x height (scaled if it was made for another size).

        Scaling keeps the repository's pixel convention ((0, 0) = centre of the top-left pixel):
        c' = (c + 0.5) * s - 0.5. Distortion coefficients are resolution-independent. Every
        calibration a bag gets passes through here, so this is where it is checked.
        """
        if self.width is None or self.height is None:
            calib = Calibration(self.k, width, height, self.distortion_model, self.d, self.source)
        elif (self.width, self.height) == (width, height):
            calib = self
        else:
            k = scaling_matrix(width / self.width, height / self.height) @ self.k
            calib = Calibration(k, width, height, self.distortion_model, self.d, self.source)
        calib.check()
        return calib

    def check(self) -> None:
        """Refuse a K that cannot belong to images of self.width x self.height: non-finite
        entries, fx or fy <= 0, or a principal point outside the image (pixel (0, 0) is the
        centre of the top-left pixel, so the image spans -0.5 .. width - 0.5)."""
        k = np.asarray(self.k, dtype=np.float64)
        w, h = self.width, self.height
        where = f"calibration from {self.source or 'an unnamed source'}"
        if not np.all(np.isfinite(k)):
            raise BagError(f"{where} has non-finite entries in K {k.reshape(-1).tolist()}; "
                           f"fix the calibration")
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
        if not (fx > 0 and fy > 0):
            raise BagError(f"{where}: focal lengths must be positive, got fx={fx:g}, fy={fy:g}")
        if not (-0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5):
            raise BagError(
                f"{where}: principal point cx={cx:g}, cy={cy:g} is outside the {w}x{h} image "
                f"(needs -0.5 <= cx <= {w - 0.5:g} and -0.5 <= cy <= {h - 0.5:g}); the "
                f"intrinsics are probably for another resolution: give them for {w}x{h} images "
                f"(c' = (c + 0.5) * new/old - 0.5), or use a ROS calibration YAML with the "
                f"image_width/image_height it was made for")


def intrinsics(fx: float, fy: float | None, cx: float, cy: float) -> Calibration:
    """--fx/--fy/--cx/--cy; checked against the image size in Calibration.for_size."""
    fy = fx if fy is None else fy
    k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return Calibration(k, source="--fx/--fy/--cx/--cy")


def read_cityscapes_camera(path: Path) -> Calibration:
    """Cityscapes camera JSON: {"intrinsic": {fx, fy, u0, v0}, "extrinsic": {...}}; images are
    rectified, so no distortion."""
    try:
        intr = json.loads(Path(path).read_text())["intrinsic"]
        k = np.array([[float(intr["fx"]), 0.0, float(intr["u0"])],
                      [0.0, float(intr["fy"]), float(intr["v0"])], [0.0, 0.0, 1.0]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BagError(f"{path} is not a Cityscapes camera JSON with intrinsic fx, fy, u0, v0 "
                       f"({exc.__class__.__name__}: {exc})") from None
    return Calibration(k, source=str(path))


def read_camera_yaml(path: Path) -> Calibration:
    """ROS camera_calibration YAML (image_width, image_height, camera_matrix.data, ...)."""
    import yaml  # only needed for this format

    try:
        doc = yaml.safe_load(Path(path).read_text())
        k = np.asarray(doc["camera_matrix"]["data"], dtype=np.float64).reshape(3, 3)
        d = tuple(float(v) for v in (doc.get("distortion_coefficients") or {}).get("data", []))
        model = doc.get("distortion_model") or "plumb_bob"
        width, height = int(doc["image_width"]), int(doc["image_height"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise BagError(f"{path} is not a ROS camera_calibration YAML with image_width, "
                       f"image_height and a 3x3 camera_matrix.data "
                       f"({exc.__class__.__name__}: {exc})") from None
    if model == "plumb_bob" and not d:
        d = (0.0,) * 5
    return Calibration(k, width, height, model, d, str(path))


def read_k_text(path: Path) -> Calibration:
    """A plain-text 3x3 K (KITTI-style cam.txt); image size taken from the frames."""
    try:
        k = np.loadtxt(path, dtype=np.float64).reshape(3, 3)
    except (OSError, ValueError) as exc:
        raise BagError(f"{path}: expected a 3x3 camera matrix as text ({exc})") from None
    return Calibration(k, source=str(path))


def load_calibration(path: str | os.PathLike) -> Calibration:
    """--camera-info FILE: .yaml/.yml (ROS), .json (Cityscapes camera) or a 3x3 text K."""
    path = Path(path)
    if not path.is_file():
        raise BagError(f"camera info file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return read_camera_yaml(path)
    if suffix == ".json":
        return read_cityscapes_camera(path)
    return read_k_text(path)


# --------------------------------------------------------------------------- frame sources

class Frame(NamedTuple):
    image: np.ndarray                   # BGR uint8 (H, W, 3), as OpenCV reads it
    calibration: Calibration | None     # for this frame's image size, None = no CameraInfo
    name: str                           # file name or "frame 12" (messages, bag_frame_names)


class SkippedFile(NamedTuple):
    """An input file that could not be read; sources yield it in the frame's place."""

    name: str                           # the path as given (e.g. frames/003.png)
    reason: str


class UnreadableImage(BagError):
    """read_image's error; `reason` says why without the path (for 'skipped PATH: reason')."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read {path}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class FrameSource:
    """Frames from a folder, a Cityscapes sequence folder or a video, with their calibration."""

    kind: str
    path: Path
    default_rate: float                 # the source's own rate, --rate or a default (notes)
    count: int | None                   # None when a video does not say
    # (image, name, calibration) per frame, or a SkippedFile for a file that could not be read
    read: Callable[[], Iterator[tuple[np.ndarray, str, Calibration | None] | SkippedFile]]
    notes: list[str] = field(default_factory=list)  # where rate and intrinsics came from, ...

    def frames(self, max_frames: int | None = None, resize: tuple[int, int] | None = None,
               strict: bool = False) -> Iterator[Frame | SkippedFile]:
        """Frames as BGR uint8, optionally resized; calibration scaled to the output size.

        An unreadable file comes out as a SkippedFile (one bad file must not cost the others),
        or with `strict` raises a BagError. `max_frames` counts frames, not skipped files.
        """
        if max_frames is not None and max_frames < 1:
            return
        size, count = None, 0
        for item in self.read():
            if isinstance(item, SkippedFile):
                if strict:
                    raise BagError(f"cannot read {item.name}: {item.reason} (--strict; without "
                                   f"it unreadable files are skipped)")
                yield item
                continue
            image, name, calib = item
            size = size or image.shape[:2]
            yield _fit_frame(image, name, calib, size, resize)
            count += 1
            if count == max_frames:  # before reading another: reads no frame too many
                return

    def total(self, max_frames: int | None) -> int | None:
        if self.count is None:
            return max_frames
        return self.count if max_frames is None else min(self.count, max_frames)


def _fit_frame(image: np.ndarray, name: str, calib: Calibration | None,
               first_size: tuple[int, int], resize: tuple[int, int] | None) -> Frame:
    """One frame checked against the first one's size and its calibration, then resized."""
    if image.shape[:2] != first_size:  # one CameraInfo size per bag
        raise BagError(f"{name} is {image.shape[1]}x{image.shape[0]} but the first "
                       f"frame is {first_size[1]}x{first_size[0]}; use --resize WxH")
    if calib is not None and calib.width is not None and \
            (calib.width, calib.height) != (image.shape[1], image.shape[0]):
        raise BagError(f"calibration {calib.source} is for {calib.width}x{calib.height} "
                       f"but {name} is {image.shape[1]}x{image.shape[0]}")
    if calib is not None:  # fill in the image size when the calibration has none
        calib = calib.for_size(image.shape[1], image.shape[0])
    if resize is not None and (image.shape[1], image.shape[0]) != resize:
        image = cv2.resize(image, resize, interpolation=cv2.INTER_AREA)
        calib = None if calib is None else calib.for_size(*resize)
    return Frame(image, calib, name)


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise UnreadableImage(path, _unreadable_reason(path))
    return image


def _unreadable_reason(path: Path) -> str:
    """Why OpenCV returned nothing (it does not say)."""
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as exc:
        return f"cannot open it ({exc.strerror})"
    return "empty file" if empty else "not an image, a damaged one, or an unsupported format"


def _folder_reader(files: Sequence[Path], calib_of: Callable[[Path], Calibration | None]):
    def read():
        for f in files:
            try:
                image = read_image(f)
            except UnreadableImage as exc:
                yield SkippedFile(str(f), exc.reason)
                continue
            yield image, f.name, calib_of(f)
    return read


# --------------------------------------------------------------------------- folder rate, K

def folder_calibration(folder: Path) -> tuple[Calibration | None, str]:
    """The first calibration file of FOLDER_CALIBRATION_FILES in the folder, and a note."""
    path = next((folder / n for n in FOLDER_CALIBRATION_FILES if (folder / n).is_file()), None)
    if path is None:
        return None, (f"no calibration file in {folder} ({', '.join(FOLDER_CALIBRATION_FILES)}): "
                      f"no CameraInfo; pass --camera-info or --fx/--cx/--cy")
    return load_calibration(path), f"intrinsics from {path.name}"


def _seconds(line: str) -> float:
    value = float(line)
    if not np.isfinite(value):
        raise ValueError(line)
    return value


def _kitti_timestamp(line: str) -> float:
    m = KITTI_TIMESTAMP.match(line)
    if m is None:
        raise ValueError(line)
    whole = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return whole.timestamp() + int((m[2] or "0").ljust(9, "0")) / 1e9


# name, line parser, what a line must be (for the error)
TIMES_FILES = (("times.txt", _seconds, "a time in seconds"),
               ("timestamps.txt", _kitti_timestamp, "YYYY-MM-DD HH:MM:SS.fffffffff"))


def read_times(path: Path, parse: Callable[[str], float], expected: str) -> list[float]:
    """One time (seconds) per non-blank line."""
    times = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BagError(f"cannot read frame times from {path} ({exc}); fix it or pass --rate") \
            from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            times.append(parse(line.strip()))
        except ValueError:
            raise BagError(f"{path} line {number}: expected {expected}, got {line.strip()!r}; "
                           f"fix the file or pass --rate") from None
    return times


def file_name_times(files: Sequence[Path]) -> list[float] | None:
    """Times from TUM-style names (Unix seconds), or None unless every name is one."""
    if not all(UNIX_TIME_NAME.match(f.stem) for f in files):
        return None
    times = [float(f.stem) for f in files]
    lo, hi = UNIX_TIME_RANGE
    return times if all(lo <= t < hi for t in times) else None


def rate_from_times(times: Sequence[float], origin: str, n_images: int
                    ) -> tuple[float, list[str]]:
    """1 / median of the positive differences (robust to a dropped frame or a repeated time)."""
    steps = np.diff(np.asarray(times, dtype=np.float64))
    steps = steps[steps > 0]
    if steps.size == 0:
        return DEFAULT_FOLDER_RATE, [f"{origin} has no two increasing frame times: using "
                                     f"{DEFAULT_FOLDER_RATE:g} Hz; pass --rate"]
    rate = 1.0 / float(np.median(steps))
    notes = [f"rate {rate:.4g} Hz from {origin}"]
    if len(times) != n_images:
        notes.append(f"{origin} has {len(times)} times for {n_images} images; the rate is "
                     f"from their median spacing anyway (check that it belongs to these images)")
    return rate, notes


def folder_rate(folder: Path, files: Sequence[Path]) -> tuple[float, list[str]]:
    """The frame rate an image folder's times give, and notes saying where it came from."""
    for name, parse, expected in TIMES_FILES:
        if (folder / name).is_file():
            return rate_from_times(read_times(folder / name, parse, expected), name, len(files))
    times = file_name_times(files)
    if times is not None:
        return rate_from_times(times, "the image file names", len(files))
    return DEFAULT_FOLDER_RATE, [f"no frame times in {folder} (times.txt, timestamps.txt or "
                                 f"timestamped file names): using {DEFAULT_FOLDER_RATE:g} Hz; "
                                 f"pass --rate"]


def cityscapes_camera_dir(folder: Path) -> Path | None:
    """leftImg8bit_sequence/<split>/<city> -> camera/<split>/<city> (None if not that layout)."""
    parts = folder.resolve().parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("leftImg8bit_sequence", "leftImg8bit"):
            return Path(*parts[:i], "camera", *parts[i + 1:])
    return None


def cityscapes_camera_file(camera_dir: Path, city: str, seq: str, frame: str) -> Path | None:
    """The frame's own camera JSON, else the nearest frame's of the same snippet: the real
    dataset ships one per <city>_<seq> snippet (frame 000019), not one per frame."""
    exact = camera_dir / f"{city}_{seq}_{frame}_camera.json"
    if exact.is_file():
        return exact
    same_seq = sorted(camera_dir.glob(f"{city}_{seq}_*_camera.json"))
    if not same_seq:
        return None
    return min(same_seq, key=lambda p: abs(int(p.name.split("_")[-2]) - int(frame)))


def open_image_folder(folder: Path, files: Sequence[Path], calibration: Calibration | None,
                      no_camera_info: bool, rate: float | None) -> FrameSource:
    """A plain image folder: rate and intrinsics from the files it carries, unless given."""
    notes = []
    if rate is None:
        rate, rate_notes = folder_rate(folder, files)
        notes += rate_notes
    if calibration is None and not no_camera_info:
        calibration, calib_note = folder_calibration(folder)
        notes.append(calib_note)
    return FrameSource("image folder", folder, rate, len(files),
                       _folder_reader(files, lambda _: calibration), notes)


def open_folder(folder: Path, calibration: Calibration | None, no_camera_info: bool,
                sequence: str | None, rate: float | None = None) -> FrameSource:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BagError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    matches = [CITYSCAPES_NAME.match(p.name) for p in files]
    if not all(matches):
        if sequence is not None:
            raise BagError(f"--sequence applies to Cityscapes folders; {folder} is not one")
        return open_image_folder(folder, files, calibration, no_camera_info, rate)

    seqs = sorted({m["seq"] for m in matches})
    if sequence is not None:
        if sequence not in seqs:
            raise BagError(f"--sequence {sequence} not in {folder} (has {', '.join(seqs)})")
        keep = [i for i, m in enumerate(matches) if m["seq"] == sequence]
        files, matches = [files[i] for i in keep], [matches[i] for i in keep]
    notes = []
    if len({m["seq"] for m in matches}) > 1:
        notes.append(f"{len(seqs)} Cityscapes snippets in one bag: the motion jumps between them "
                     f"(pick one with --sequence)")
    if calibration is not None or no_camera_info:
        return FrameSource("Cityscapes sequence", folder, CITYSCAPES_RATE, len(files),
                           _folder_reader(files, lambda _: calibration), notes)

    # Resolve every frame's camera JSON now, so a missing one fails before anything is written.
    camera_dir = cityscapes_camera_dir(folder)
    calibs: dict[Path, Calibration] = {}
    per_frame: dict[Path, Calibration] = {}
    for f, m in zip(files, matches):
        json_path = None if camera_dir is None else \
            cityscapes_camera_file(camera_dir, m["city"], m["seq"], m["frame"])
        if json_path is None:
            expected = (camera_dir or Path("camera/<split>/<city>")) / \
                f"{m['city']}_{m['seq']}_{m['frame']}_camera.json"
            raise BagError(f"no Cityscapes camera JSON for {f.name}: expected {expected} (or one "
                           f"of {m['city']}_{m['seq']}_*); pass --camera-info, --fx/--cx/--cy "
                           f"or --no-camera-info")
        if json_path not in calibs:
            calibs[json_path] = read_cityscapes_camera(json_path)
        per_frame[f] = calibs[json_path]
    return FrameSource("Cityscapes sequence", folder, CITYSCAPES_RATE, len(files),
                       _folder_reader(files, per_frame.__getitem__), notes)


def open_video(path: Path, calibration: Calibration | None) -> FrameSource:
    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened() and cap.read()[0]
    fps = cap.get(cv2.CAP_PROP_FPS) if ok else 0.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
    cap.release()
    if not ok:
        raise BagError(f"cannot read video {path}: OpenCV could not decode a frame "
                       f"(convert it, e.g. to MJPG .avi or H.264 .mp4, or extract the frames)")
    notes = []
    if not (np.isfinite(fps) and fps > 0):
        notes.append(f"{path.name} reports no frame rate; using {DEFAULT_FOLDER_RATE} Hz")
        fps = DEFAULT_FOLDER_RATE

    def read():
        cap = cv2.VideoCapture(str(path))
        try:
            i = 0
            while True:
                ok, image = cap.read()
                if not ok:
                    return
                yield image, f"frame {i}", calibration
                i += 1
        finally:
            cap.release()

    return FrameSource("video", path, float(fps), count if count > 0 else None, read, notes)


def open_source(path: str | os.PathLike, calibration: Calibration | None = None,
                no_camera_info: bool = False, sequence: str | None = None,
                rate: float | None = None) -> FrameSource:
    """An image folder, a Cityscapes leftImg8bit_sequence/<split>/<city> folder, one image or a
    video. `calibration` overrides what the source carries; `no_camera_info` drops it. `rate`
    (--rate) overrides an image folder's frame times, which are then not read."""
    path = Path(path)
    if no_camera_info:
        calibration = None
    if path.is_dir():
        return open_folder(path, calibration, no_camera_info, sequence, rate)
    if not path.exists():
        raise BagError(f"input {path} does not exist")
    if sequence is not None:
        raise BagError("--sequence applies to Cityscapes folders only")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FrameSource("image", path, DEFAULT_FOLDER_RATE, 1,
                           _folder_reader([path], lambda _: calibration))
    return open_video(path, calibration)


# --------------------------------------------------------------------------- typestore

def typestore(extra_types: Iterable[str] = ()):
    """A Kilted typestore (the distribution the wheels here are); `extra_types` (e.g.
    superseg_msgs/msg/Keypoints) are registered from their .msg files with their dependencies."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    register_types(store, extra_types)
    return store


def find_msg_file(msgtype: str) -> Path | None:
    """<pkg>/msg/<Name>.msg from the ament index (AMENT_PREFIX_PATH), else this repository."""
    pkg, _, name = msgtype.split("/")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates = [Path(p) / "share" / pkg / "msg" / f"{name}.msg" for p in prefixes]
    candidates.append(LOCAL_MSG_ROOT / pkg / "msg" / f"{name}.msg")
    return next((c for c in candidates if c.is_file()), None)


def _referenced_types(node) -> Iterator[str]:
    """Message type names inside a rosbags field description (nested tuples)."""
    if isinstance(node, str):
        if re.fullmatch(r"\w+/msg/\w+", node):
            yield node
    elif isinstance(node, (tuple, list)):
        for item in node:
            yield from _referenced_types(item)


def register_types(store, msgtypes: Iterable[str]) -> None:
    from rosbags.typesys import get_types_from_msg

    pending = [t for t in msgtypes if t not in store.fielddefs]
    found: dict = {}
    while pending:
        msgtype = pending.pop()
        if msgtype in found or msgtype in store.fielddefs:
            continue
        path = find_msg_file(msgtype)
        if path is None:
            raise BagError(f"no .msg definition for {msgtype}: source the workspace that "
                           f"provides it (install/setup.bash)")
        types = get_types_from_msg(path.read_text(), msgtype)
        found.update(types)
        pending.extend(_referenced_types(types[msgtype][1]))
    if found:
        store.register(found)


def has_header(store, msgtype: str) -> bool:
    """True when the message starts with std_msgs/Header (its stamp is then at CDR offset 4)."""
    fields = store.fielddefs.get(msgtype, ([], []))[1]
    return bool(fields) and fields[0][0] == "header" and \
        fields[0][1][1:] == ("std_msgs/msg/Header",)


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """header.stamp of a CDR message whose first field is std_msgs/Header, without decoding it:
    4-byte encapsulation (byte 1 odd = little endian), then int32 sec, uint32 nanosec."""
    order = "<" if raw[1] & 1 else ">"
    sec, nsec = struct.unpack_from(order + "iI", raw, 4)
    return sec * 1_000_000_000 + nsec


def with_header_stamp(raw: bytes | memoryview, stamp_ns: int) -> bytes:
    """A copy of `raw` with header.stamp replaced (same layout as header_stamp_ns)."""
    out = bytearray(raw)
    order = "<" if out[1] & 1 else ">"
    struct.pack_into(order + "iI", out, 4, *divmod(int(stamp_ns), 1_000_000_000))
    return bytes(out)


def message_class(msgtype: str):
    """The generated Python class of 'pkg/msg/Name' (needs the package on sys.path)."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"cannot import {msgtype} ({exc}); source the workspace that provides "
                       f"{pkg} (install/setup.bash)") from None


# --------------------------------------------------------------------------- writing

def reliable_qos(depth: int = 10):
    """The offered QoS written into the bag (reliable, volatile, keep-last), which ros2 bag play
    then uses for its publishers."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE, QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


def check_output(out_path: Path, force: bool) -> None:
    """Refuse to overwrite; with force, only ever replace a bag (or an empty folder)."""
    if not out_path.exists() and not out_path.is_symlink():
        return
    if not force:
        raise BagError(f"{out_path} exists; choose another --output or pass --force")
    is_bag = out_path.is_dir() and (out_path / "metadata.yaml").is_file()
    if not (is_bag or (out_path.is_dir() and not any(out_path.iterdir()))):
        raise BagError(f"{out_path} exists and is not a bag; refusing to replace it even with "
                       f"--force")


class BagWriter:
    """A rosbags Writer into a temp folder next to the target, renamed into place on close:
    an interrupted run never leaves a half bag under the requested name."""

    def __init__(self, out_path: str | os.PathLike, storage: str = "mcap", force: bool = False,
                 store=None):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
        self.out_path = Path(out_path)
        self.force = force
        check_output(self.out_path, force)
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = store if store is not None else typestore()
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_path.name}.", suffix=".partial",
                                          dir=self.out_path.parent))
        # The storage file is named after the bag folder, so the folder inside the temp dir
        # already carries the final name.
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(self._tmp / self.out_path.name, version=9, storage_plugin=plugin)
        self.writer.open()
        self.connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def add_topic(self, topic: str, msgtype: str, qos=None) -> None:
        register_types(self.store, [msgtype])
        self.connections[topic] = self.writer.add_connection(
            topic, msgtype, typestore=self.store,
            offered_qos_profiles=[qos] if qos is not None else [])
        self.counts[topic] = 0

    def write_raw(self, topic: str, t_ns: int, raw: bytes | memoryview) -> None:
        self.writer.write(self.connections[topic], int(t_ns), raw)
        self.counts[topic] += 1

    def write(self, topic: str, t_ns: int, msg) -> None:
        self.write_raw(topic, t_ns, self.store.serialize_cdr(msg, msg.__msgtype__))

    def set_custom_data(self, key: str, value: str) -> None:
        """A string in metadata.yaml custom_data (written on close)."""
        self.writer.set_custom_data(key, value)

    def close(self) -> Path:
        self.writer.close()
        check_output(self.out_path, self.force)  # it may have appeared while we wrote
        old = None
        if self.out_path.exists():
            old = self._tmp / ".replaced"
            os.replace(self.out_path, old)
        os.replace(self._tmp / self.out_path.name, self.out_path)
        shutil.rmtree(self._tmp, ignore_errors=True)
        return self.out_path

    def abort(self) -> None:
        try:
            self.writer.abort()
        except Exception:  # noqa: BLE001 - cleaning up after a failure already being raised
            pass
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def image_message(store, image_bgr: np.ndarray, encoding: str, header):
    Image = store.types[IMAGE_TYPE]
    if encoding == "rgb8":
        data = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    elif encoding == "bgr8":
        data = image_bgr
    elif encoding == "mono8":
        data = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    else:
        raise BagError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
    h, w = data.shape[:2]
    channels = 1 if data.ndim == 2 else data.shape[2]
    return Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                 step=w * channels, data=np.ascontiguousarray(data).reshape(-1))


def camera_info_message(store, calib: Calibration, header):
    CameraInfo = store.types[INFO_TYPE]
    RegionOfInterest = store.types["sensor_msgs/msg/RegionOfInterest"]
    k = np.asarray(calib.k, dtype=np.float64)
    p = np.zeros((3, 4))
    p[:, :3] = k  # monocular: P = [K | 0]
    return CameraInfo(
        header=header, height=calib.height, width=calib.width,
        distortion_model=calib.distortion_model, d=np.asarray(calib.d, dtype=np.float64),
        k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0,
        roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


@dataclass
class BagReport:
    path: Path
    frames: int
    camera_info: int
    duration_s: float
    size_bytes: int
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) not in the bag


def bag_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _no_frames_message(skipped: Sequence[tuple[str, str]]) -> str:
    if not skipped:
        return "no frames to write"
    name, reason = skipped[0]
    if len(skipped) == 1:
        return f"no readable frame: {name}: {reason}"
    return (f"no readable frame: all {len(skipped)} input files are unreadable (the first, "
            f"{name}: {reason}); check that the input holds images")


def write_bag(frames: Iterable[Frame | SkippedFile], out_path: str | os.PathLike, rate_hz: float,
              storage: str = "mcap", image_topic: str = "/camera/image_raw",
              info_topic: str = "/camera/camera_info", frame_id: str = "camera",
              encoding: str = "rgb8", start_stamp: int | None = None, force: bool = False,
              total: int | None = None, progress: bool = True) -> BagReport:
    """Write frames as sensor_msgs/Image (+ CameraInfo for frames that have a calibration).

    Frame i (of those written) is stamped start_stamp + round(i * 1e9 / rate_hz) ns (default
    start: now), in header.stamp and as the bag receive time of both messages. SkippedFiles are
    listed in the report; each frame's name is stored under FRAME_NAMES_KEY.
    """
    from tqdm import tqdm

    if not rate_hz > 0:
        raise BagError(f"rate must be positive, got {rate_hz}")
    if encoding not in ENCODINGS:
        raise BagError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
    start_stamp = time.time_ns() if start_stamp is None else int(start_stamp)
    started = time.perf_counter()
    with BagWriter(out_path, storage, force) as bag:
        store = bag.store
        Header = store.types["std_msgs/msg/Header"]
        Time = store.types["builtin_interfaces/msg/Time"]
        bag.add_topic(image_topic, IMAGE_TYPE, reliable_qos())
        names: dict[str, str] = {}  # header stamp ns -> frame name
        skipped: list[tuple[str, str]] = []
        for item in tqdm(frames, total=total, unit="frame", desc="bag", disable=not progress):
            if isinstance(item, SkippedFile):
                skipped.append((item.name, item.reason))
                continue
            t_ns = start_stamp + round(len(names) * 1e9 / rate_hz)  # len: frames so far
            sec, nsec = divmod(t_ns, 1_000_000_000)
            header = Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=frame_id)
            bag.write(image_topic, t_ns, image_message(store, item.image, encoding, header))
            if item.calibration is not None:
                if info_topic not in bag.connections:
                    bag.add_topic(info_topic, INFO_TYPE, reliable_qos())
                bag.write(info_topic, t_ns, camera_info_message(store, item.calibration, header))
            names[str(t_ns)] = item.name
        if not names:
            raise BagError(_no_frames_message(skipped))
        bag.set_custom_data(FRAME_NAMES_KEY, json.dumps(names))
        n, n_info = len(names), bag.counts.get(info_topic, 0)
    out = Path(out_path)
    return BagReport(out, n, n_info, (n - 1) / rate_hz, bag_size(out),
                     time.perf_counter() - started, skipped)


# --------------------------------------------------------------------------- reading

def corrupt_bag_errors() -> tuple[type[BaseException], ...]:
    """What rosbags and the libraries below it raise on damaged bag bytes (truncated or flipped
    mcap chunks, a broken sqlite3 file, bad metadata.yaml, undecodable CDR)."""
    import sqlite3

    from rosbags.rosbag2 import ReaderError
    from rosbags.serde import SerdeError
    return (ReaderError, SerdeError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, OverflowError, struct.error, sqlite3.Error, EOFError)


MCAP_MAGIC = b"\x89MCAP0\r\n"
MCAP_CHUNK, MCAP_FOOTER = 0x06, 0x02
MAX_MCAP_CHUNK = 1 << 32  # uncompressed bytes; rosbag2 writes chunks of a few MiB


def check_mcap_records(path: Path) -> None:
    """Walk an mcap file's top-level records (opcode u8, length u64, content) and refuse one
    that declares more bytes than the file holds, a chunk that would inflate past
    MAX_MCAP_CHUNK, or a footer pointing between records: rosbags would allocate what such
    a record declares before reading it."""
    size = path.stat().st_size
    starts = {0}
    with open(path, "rb") as f:
        if f.read(8) != MCAP_MAGIC:
            raise BagError(f"{path}: not an mcap file (bad magic bytes)")
        at = 8
        while at + 9 <= size:
            opcode, length = struct.unpack("<BQ", f.read(9))
            if length > size - at - 9:
                raise BagError(f"{path}: damaged mcap: the record at byte {at} declares "
                               f"{length} bytes, more than the {size - at - 9} left")
            starts.add(at)
            if opcode == MCAP_CHUNK and length >= 24:
                uncompressed = struct.unpack("<QQQ", f.read(24))[2]
                if uncompressed > MAX_MCAP_CHUNK:
                    raise BagError(f"{path}: damaged mcap: the chunk at byte {at} declares "
                                   f"{uncompressed} uncompressed bytes")
            if opcode == MCAP_FOOTER and length >= 16:
                f.seek(at + 9)
                summary, summary_offsets = struct.unpack("<QQ", f.read(16))
                if summary not in starts or summary_offsets not in starts:
                    raise BagError(f"{path}: damaged mcap: the footer points to bytes "
                                   f"{summary} and {summary_offsets}, not to records")
                return
            at += 9 + length
            f.seek(at)
    raise BagError(f"{path}: damaged mcap: no footer (truncated at {size} bytes?)")


def open_reader(path: str | os.PathLike):
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    for mcap in (path.glob("*.mcap") if path.is_dir() else [path] if path.suffix == ".mcap"
                 else []):
        check_mcap_records(mcap)
    try:
        reader = Reader(path)
        reader.open()
    except corrupt_bag_errors() as exc:
        raise BagError(f"{path} is not a readable ROS 2 bag ({exc})") from None
    return reader


def bag_frame_names(path: str | os.PathLike) -> dict[int, str]:
    """{header stamp ns: source file name} as superseg-make-bag stored it ({} for other bags),
    to match outputs (same stamp) back to the input files."""
    reader = open_reader(path)
    try:
        custom = reader.storage.metadata.custom or {}  # the Reader has no public accessor
    finally:
        reader.close()
    text = custom.get(FRAME_NAMES_KEY)
    if text is None:
        return {}
    try:
        return {int(stamp): str(name) for stamp, name in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise BagError(f"{path}: metadata custom_data {FRAME_NAMES_KEY} is not a JSON object "
                       f"of header stamp ns -> file name ({exc})") from None


def bag_topics(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """{topic: (msgtype, message count)}."""
    reader = open_reader(path)
    try:
        return {t: (info.msgtype, info.msgcount) for t, info in reader.topics.items()}
    finally:
        reader.close()


def iter_bag(path: str | os.PathLike, topics: Iterable[str] | None = None,
             deserialize: bool = False, start_ns: int | None = None
             ) -> Iterator[tuple[str, int, object, str]]:
    """(topic, receive time ns, raw CDR bytes or a rosbags message, msgtype) in time order.

    `start_ns` skips messages received before it. Custom types are registered from their .msg
    files when `deserialize` is set.
    """
    reader = open_reader(path)
    try:
        wanted = set(topics) if topics else None
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        store = typestore({c.msgtype for c in conns}) if deserialize else None
        messages = reader.messages(conns, start=start_ns)
        while True:
            try:
                conn, t_ns, raw = next(messages)
                data = store.deserialize_cdr(raw, conn.msgtype) if deserialize else raw
            except StopIteration:
                return
            except corrupt_bag_errors() as exc:
                raise BagError(f"{path}: damaged bag data ({type(exc).__name__}: {exc}); the "
                               "messages before it were read") from None
            yield conn.topic, t_ns, data, conn.msgtype
    finally:
        reader.close()


# --------------------------------------------------------------------------- summaries

def _stats(values: Sequence[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    return {"mean": round(float(a.mean()), 3), "min": round(float(a.min()), 3),
            "max": round(float(a.max()), 3)}


def _percentiles(values: Sequence[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)} | \
        {"max": round(float(a.max()), 3)}


# Receive time - header stamp beyond which the stamps cannot be a live pipeline's: a replayed bag
# keeps the stamps of when it was made (seconds to years ago).
LIVE_STAMP_LIMIT_MS = 10_000.0
DIAGNOSTICS_TYPE = "diagnostic_msgs/msg/DiagnosticArray"
FILTER_OFF = 255  # group_id of every keypoint when the semantic filter did not run


def summarize_bag(path: str | os.PathLike) -> dict:
    """Per topic: count, rate, and for header-carrying messages the latency receive time −
    header.stamp (ms), reported only when the stamps are live; for superseg_msgs/Keypoints also
    keypoints per frame and the share flagged unstable ("filter off" when no filter ran). When
    the bag holds a superseg node's /diagnostics, its own latency (input received -> outputs
    published), which does not depend on the stamps. Works on any bag whose receive times are
    when a recorder got the message.
    """
    topics: dict[str, dict] = {}
    times: dict[str, list[int]] = {}
    latency: dict[str, list[float]] = {}
    kp_counts: dict[str, list[int]] = {}
    kp_unstable: dict[str, int] = {}
    kp_filtered: dict[str, bool] = {}
    node_latency: dict[str, dict] = {}
    reader = open_reader(path)
    try:
        conns = reader.connections
        store = typestore()
        for msgtype in {c.msgtype for c in conns}:
            try:
                register_types(store, [msgtype])
            except BagError:  # unknown type: still counted, just not decoded
                pass
        for conn in conns:
            topics.setdefault(conn.topic, {"type": conn.msgtype})
            times.setdefault(conn.topic, [])
        for conn, t_ns, raw in reader.messages():
            times[conn.topic].append(t_ns)
            if has_header(store, conn.msgtype):
                latency.setdefault(conn.topic, []).append((t_ns - header_stamp_ns(raw)) / 1e6)
            if conn.msgtype == KEYPOINTS_TYPE:
                msg = store.deserialize_cdr(raw, conn.msgtype)
                stable = np.asarray(msg.stable, dtype=bool)
                kp_counts.setdefault(conn.topic, []).append(len(msg.x))
                kp_unstable[conn.topic] = kp_unstable.get(conn.topic, 0) + int((~stable).sum())
                filtered = bool(len(msg.group_id)) and bool(
                    (np.asarray(msg.group_id) != FILTER_OFF).any())
                kp_filtered[conn.topic] = kp_filtered.get(conn.topic, False) or filtered
            elif conn.msgtype == DIAGNOSTICS_TYPE:
                node_latency.update(_node_latency(store.deserialize_cdr(raw, conn.msgtype)))
    finally:
        reader.close()

    for topic, info in topics.items():
        t = np.asarray(times[topic], dtype=np.int64)
        info["messages"] = int(t.size)
        span = (t.max() - t.min()) / 1e9 if t.size > 1 else 0.0
        info["rate_hz"] = round((t.size - 1) / span, 3) if span > 0 else None
        if topic in latency:
            info.update(_stamp_latency(latency[topic]))
        if topic in kp_counts:
            total = sum(kp_counts[topic])
            info["keypoints_per_frame"] = _stats(kp_counts[topic])
            info["unstable_share"] = (None if not total else "filter off"
                                      if not kp_filtered[topic]
                                      else round(kp_unstable[topic] / total, 4))
    summary = {"bag": str(Path(path)), "messages": sum(len(v) for v in times.values()),
               "topics": topics}
    if node_latency:
        summary["node_latency_ms"] = node_latency
    return summary


def _stamp_latency(latency_ms: Sequence[float]) -> dict:
    """{"latency_ms": percentiles} when the stamps are live, else None and why."""
    median = float(np.median(latency_ms))
    if -1e3 <= median <= LIVE_STAMP_LIMIT_MS:
        return {"latency_ms": _percentiles(latency_ms)}
    age = f"{median / 1e3:.1f} s older" if median > 0 else f"{-median / 1e3:.1f} s newer"
    return {"latency_ms": None,
            "latency": (f"not measured: the header stamps are {age} than the receive times, "
                        f"so they are not live (a replayed bag keeps its recorded stamps); "
                        f"replay with superseg-play --restamp, or see node_latency_ms (recorded "
                        f"/diagnostics)")}


def _node_latency(diagnostics) -> dict:
    """{node status name: {"p50", "p95"}} of a superseg node's node_latency_ms values."""
    out = {}
    for status in diagnostics.status:
        values = {kv.key: kv.value for kv in status.values}
        if "node_latency_ms_p50" in values:
            out[status.name.split(":")[0]] = {
                q: float(values[f"node_latency_ms_{q}"]) for q in ("p50", "p95")}
    return out
