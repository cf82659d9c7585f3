"""ROS 2 bags without rosbag2: frame sources → Image/CameraInfo bags, reading, recording summaries.

Plain logic on top of `rosbags` (pure Python): no rclpy here, so bags can be made and checked on
machines without ROS. Bags are rosbag2 metadata version 9 (mcap or sqlite3), which `ros2 bag play`
and `ros2 bag info` read.

Timestamps: frame i gets header.stamp = start + i/rate and the same bag receive time, and
Image and CameraInfo of one frame share it exactly (what an exact-time synchroniser needs).
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
from itertools import islice
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
        c' = (c + 0.5) * s - 0.5. Distortion coefficients are resolution-independent.
        """
        if self.width is None or self.height is None:
            return Calibration(self.k, width, height, self.distortion_model, self.d, self.source)
        if (self.width, self.height) == (width, height):
            return self
        k = scaling_matrix(width / self.width, height / self.height) @ self.k
        return Calibration(k, width, height, self.distortion_model, self.d, self.source)


def intrinsics(fx: float, fy: float | None, cx: float, cy: float) -> Calibration:
    fy = fx if fy is None else fy
    if fx <= 0 or fy <= 0:
        raise BagError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
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
    name: str                           # file name or "frame 12" (for error messages)


@dataclass
class FrameSource:
    """Frames from a folder, a Cityscapes sequence folder or a video, with their calibration."""

    kind: str
    path: Path
    default_rate: float
    count: int | None                   # None when a video does not say
    read: Callable[[], Iterator[tuple[np.ndarray, str, Calibration | None]]]
    notes: list[str] = field(default_factory=list)

    def frames(self, max_frames: int | None = None,
               resize: tuple[int, int] | None = None) -> Iterator[Frame]:
        """Frames as BGR uint8, optionally resized; calibration scaled to the output size."""
        size = None
        for image, name, calib in islice(self.read(), max_frames):  # reads no frame too many
            if size is None:
                size = image.shape[:2]
            elif image.shape[:2] != size:  # one CameraInfo size per bag
                raise BagError(f"{name} is {image.shape[1]}x{image.shape[0]} but the first "
                               f"frame is {size[1]}x{size[0]}; use --resize WxH")
            if calib is not None and calib.width is not None and \
                    (calib.width, calib.height) != (image.shape[1], image.shape[0]):
                raise BagError(f"calibration {calib.source} is for {calib.width}x{calib.height} "
                               f"but {name} is {image.shape[1]}x{image.shape[0]}")
            if calib is not None:  # fill in the image size when the calibration has none
                calib = calib.for_size(image.shape[1], image.shape[0])
            if resize is not None and (image.shape[1], image.shape[0]) != resize:
                image = cv2.resize(image, resize, interpolation=cv2.INTER_AREA)
                calib = None if calib is None else calib.for_size(*resize)
            yield Frame(image, calib, name)

    def total(self, max_frames: int | None) -> int | None:
        if self.count is None:
            return max_frames
        return self.count if max_frames is None else min(self.count, max_frames)


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise BagError(f"cannot read {path}: not an image or an unsupported format")
    return image


def _folder_reader(files: Sequence[Path], calib_of: Callable[[Path], Calibration | None]):
    def read():
        for f in files:
            yield read_image(f), f.name, calib_of(f)
    return read


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


def open_folder(folder: Path, calibration: Calibration | None, no_camera_info: bool,
                sequence: str | None) -> FrameSource:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BagError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    matches = [CITYSCAPES_NAME.match(p.name) for p in files]
    if not all(matches):
        if sequence is not None:
            raise BagError(f"--sequence applies to Cityscapes folders; {folder} is not one")
        return FrameSource("image folder", folder, DEFAULT_FOLDER_RATE, len(files),
                           _folder_reader(files, lambda _: calibration))

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
                no_camera_info: bool = False, sequence: str | None = None) -> FrameSource:
    """An image folder, a Cityscapes leftImg8bit_sequence/<split>/<city> folder, one image or a
    video. `calibration` overrides what the source carries; `no_camera_info` drops it."""
    path = Path(path)
    if no_camera_info:
        calibration = None
    if path.is_dir():
        return open_folder(path, calibration, no_camera_info, sequence)
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


def bag_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_bag(frames: Iterable[Frame], out_path: str | os.PathLike, rate_hz: float,
              storage: str = "mcap", image_topic: str = "/camera/image_raw",
              info_topic: str = "/camera/camera_info", frame_id: str = "camera",
              encoding: str = "rgb8", start_stamp: int | None = None, force: bool = False,
              total: int | None = None, progress: bool = True) -> BagReport:
    """Write frames as sensor_msgs/Image (+ CameraInfo for frames that have a calibration).

    Frame i is stamped start_stamp + round(i * 1e9 / rate_hz) ns (default start: now), in
    header.stamp and as the bag receive time of both messages.
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
        n = 0
        for n, frame in enumerate(tqdm(frames, total=total, unit="frame", desc="bag",
                                       disable=not progress), start=1):
            t_ns = start_stamp + round((n - 1) * 1e9 / rate_hz)
            sec, nsec = divmod(t_ns, 1_000_000_000)
            header = Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=frame_id)
            bag.write(image_topic, t_ns, image_message(store, frame.image, encoding, header))
            if frame.calibration is not None:
                if info_topic not in bag.connections:
                    bag.add_topic(info_topic, INFO_TYPE, reliable_qos())
                bag.write(info_topic, t_ns, camera_info_message(store, frame.calibration, header))
        if n == 0:
            raise BagError("no frames to write")
        n_info = bag.counts.get(info_topic, 0)
    out = Path(out_path)
    return BagReport(out, n, n_info, (n - 1) / rate_hz, bag_size(out),
                     time.perf_counter() - started)


# --------------------------------------------------------------------------- reading

def open_reader(path: str | os.PathLike):
    from rosbags.rosbag2 import Reader, ReaderError

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError) as exc:
        raise BagError(f"{path} is not a readable ROS 2 bag ({exc})") from None
    return reader


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
        for conn, t_ns, raw in reader.messages(conns, start=start_ns):
            data = store.deserialize_cdr(raw, conn.msgtype) if deserialize else raw
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


def summarize_bag(path: str | os.PathLike) -> dict:
    """Per topic: count, rate, and for header-carrying messages the latency receive time −
    header.stamp (ms); for superseg_msgs/Keypoints also keypoints per frame and the share
    flagged unstable. Works on any bag whose receive times are when a recorder got the message.
    """
    topics: dict[str, dict] = {}
    times: dict[str, list[int]] = {}
    latency: dict[str, list[float]] = {}
    kp_counts: dict[str, list[int]] = {}
    kp_unstable: dict[str, int] = {}
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
    finally:
        reader.close()

    for topic, info in topics.items():
        t = np.asarray(times[topic], dtype=np.int64)
        info["messages"] = int(t.size)
        span = (t.max() - t.min()) / 1e9 if t.size > 1 else 0.0
        info["rate_hz"] = round((t.size - 1) / span, 3) if span > 0 else None
        if topic in latency:
            info["latency_ms"] = _percentiles(latency[topic])
        if topic in kp_counts:
            total = sum(kp_counts[topic])
            info["keypoints_per_frame"] = _stats(kp_counts[topic])
            info["unstable_share"] = round(kp_unstable[topic] / total, 4) if total else 0.0
    summary = {"bag": str(Path(path)), "messages": sum(len(v) for v in times.values()),
               "topics": topics}
    lat = [v for vals in latency.values() for v in vals]
    if lat and (np.median(lat) > 3.6e6 or np.median(lat) < -1e3):
        summary["note"] = ("header stamps are far from the receive times (a replayed bag keeps "
                           "its recorded stamps); latency is meaningful with superseg-play "
                           "--restamp or a live camera")
    return summary
