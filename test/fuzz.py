"""Property-based fuzzing of every function that takes outside bytes (issue 13).

Each entry point is a hypothesis strategy of inputs (valid, damaged and hostile) and a check
that runs the function and says how it ended:

    "correct"  it returned, and the result is right (checked against an oracle or invariants)
    "error"    it raised the project's own clear error (one of the entry point's `errors`)

Anything else is a crash: another exception, a wrong result (AssertionError), a hang (over
`CASE_SECONDS`) or an allocation over the memory limit that `make fuzz` sets.

    python test/fuzz.py --cases 1000          # make fuzz: >= 1000 cases per entry point, table
    pytest test/test_fuzz.py                  # make test: a fixed-seed budget per entry point

The same seed gives the same cases (hypothesis' derandomize).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import resource
import signal
import struct
import sys
import tempfile
import time
import types
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's TINY (python test/fuzz.py)
from conftest import TINY  # noqa: E402
from superseg_ros import bags  # noqa: E402
from superseg_ros.checkpoint import CheckpointError, load_model, save_checkpoint  # noqa: E402
from superseg_ros.config import ConfigError, apply_overrides, read_parameters  # noqa: E402
from superseg_ros.network import SuperSegmentation  # noqa: E402
from superseg_ros.ros.camera_model import CameraInfoError, CameraModel  # noqa: E402
from superseg_ros.ros.image_conversion import (SUPPORTED_ENCODINGS,  # noqa: E402
                                               ImageConversionError, compressed_to_array,
                                               image_to_array)
from superseg_ros.ros.parameters import node_settings  # noqa: E402
from superseg_ros.ros.time_sync import ApproximateTimeSync  # noqa: E402

CASE_SECONDS = 20.0  # one case longer than this is a hang
HUGE = 100_000       # a declared 100000 x 100000 image must be refused before any allocation


class Hang(Exception):
    pass


# --- image conversion (sensor_msgs/Image) --------------------------------------------------------

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1, "8UC1": 1,
            "8UC3": 3, "16UC1": 1}
BYTES = {e: 2 if e in ("mono16", "16UC1") else 1 for e in CHANNELS}


@st.composite
def raw_images(draw):
    encoding = draw(st.sampled_from(SUPPORTED_ENCODINGS) | st.sampled_from(
        ["", "rgb16", "bayer_rggb8", "32FC1", "RGB8", "jpeg", "\x00"]))
    size = st.integers(0, 9) | st.integers(10, 64) | st.sampled_from([HUGE, 2**31 - 1, 2**32])
    height, width = draw(size), draw(size)
    channels, itemsize = CHANNELS.get(encoding, 3), BYTES.get(encoding, 1)
    row = width * channels * itemsize
    step = draw(st.sampled_from(["exact", "padded", "short", "any"]))
    step = {"exact": row, "padded": row + draw(st.integers(1, 7)),
            "short": max(0, row - draw(st.integers(1, 3))),
            "any": draw(st.integers(0, 2**32))}[step]
    declared = step * height
    if declared <= 64 * 64 * 8 + 7 * 64:  # small: data of about the declared length
        length = max(0, declared + draw(st.integers(-5, 5)))
    else:  # huge declared size: a few bytes only
        length = draw(st.integers(0, 64))
    data = draw(st.binary(min_size=length, max_size=length))
    kind = draw(st.sampled_from(["bytes", "array", "numpy"]))
    if kind == "array":
        import array
        data = array.array("B", data)
    elif kind == "numpy":
        data = np.frombuffer(data, np.uint8).copy()
    return types.SimpleNamespace(encoding=encoding, height=height, width=width, step=step,
                                 is_bigendian=draw(st.booleans()), data=data)


def image_oracle(msg) -> np.ndarray:
    """The decoded image by brute force, pixel by pixel (small images only)."""
    channels, itemsize = CHANNELS[msg.encoding], BYTES[msg.encoding]
    raw = bytes(memoryview(np.asarray(msg.data, np.uint8) if isinstance(msg.data, np.ndarray)
                           else msg.data).cast("B"))
    order = "big" if msg.is_bigendian else "little"
    out = np.zeros((msg.height, msg.width, channels), np.uint16 if itemsize == 2 else np.uint8)
    for y in range(msg.height):
        for x in range(msg.width):
            for c in range(channels):
                at = y * msg.step + (x * channels + c) * itemsize
                out[y, x, c] = int.from_bytes(raw[at:at + itemsize], order)
    if channels == 1:
        return out[..., 0]
    if msg.encoding in ("bgr8", "bgra8", "8UC3"):
        return out[..., 2::-1]
    return out[..., :3]


def check_raw_image(msg) -> str:
    try:
        array = image_to_array(msg)
    except ImageConversionError:
        channels, itemsize = CHANNELS.get(msg.encoding, 0), BYTES.get(msg.encoding, 1)
        must_fail = (msg.encoding not in CHANNELS or msg.height <= 0 or msg.width <= 0
                     or msg.step < msg.width * channels * itemsize
                     or len(msg.data) < msg.step * msg.height)
        assert must_fail, "a well-formed image was refused"
        return "error"
    assert msg.encoding in CHANNELS and len(msg.data) >= msg.step * msg.height
    expected = image_oracle(msg)
    assert array.shape == expected.shape and array.dtype == expected.dtype
    assert np.array_equal(array, expected)
    return "correct"


# --- CompressedImage ---------------------------------------------------------------------------

def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (valid CRCs) and holds almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A JPEG with a baseline SOF0 declaring width x height, and nothing decodable after it."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


@st.composite
def compressed_images(draw):
    kind = draw(st.sampled_from(["png", "jpeg", "huge_png", "huge_jpeg", "garbage", "empty"]))
    fmt = draw(st.sampled_from(["png", "jpeg", "rgb8; jpeg compressed bgr8", "",
                                "16UC1; compressedDepth png", "bmp"]))
    source = None
    if kind in ("png", "jpeg"):
        h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        seed = draw(st.integers(0, 2**16))
        grey = draw(st.booleans())
        source = np.random.default_rng(seed).integers(0, 256, (h, w) if grey else (h, w, 3),
                                                      dtype=np.uint8)
        data = cv2.imencode("." + ("png" if kind == "png" else "jpg"), source)[1].tobytes()
    elif kind == "huge_png":
        data = png_declaring(draw(st.sampled_from([HUGE, 30_000, 65_535, 2**31 - 1])),
                             draw(st.sampled_from([HUGE, 30_000, 65_535, 1])))
    elif kind == "huge_jpeg":
        data = jpeg_declaring(draw(st.sampled_from([65_535, 30_000, 20_000])),
                              draw(st.sampled_from([65_535, 30_000, 20_000])))
    elif kind == "garbage":
        data = draw(st.binary(min_size=1, max_size=512))
    else:
        data = b""
    damage = draw(st.sampled_from(["none", "truncate", "flip"]))
    pristine = damage == "none"
    if data and damage == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif data and damage == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(buf) - 1))
            buf[at] = draw(st.integers(0, 255))
        data = bytes(buf)
    msg = types.SimpleNamespace(format=fmt, data=data)
    return msg, (source if pristine else None)


def check_compressed(case) -> str:
    msg, source = case
    try:
        rgb = compressed_to_array(msg)
    except ImageConversionError:
        assert source is None or "compresseddepth" in msg.format.lower().replace(" ", ""), \
            "an intact image was refused"
        return "error"
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    if source is not None:
        assert rgb.shape[:2] == source.shape[:2]
        reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(msg.data, np.uint8),
                                              cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(rgb, reference)
    return "correct"


# --- CameraInfo -> camera model ------------------------------------------------------------------

MODELS = ["plumb_bob", "rational_polynomial", "equidistant", "fisheye", "", "kannala_brandt",
          "PLUMB_BOB", "none"]
odd_float = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [0.0, -1.0, 1.0, 500.0, 1e300, -0.0])


@st.composite
def camera_infos(draw):
    good = st.floats(1.0, 5000.0)
    fx, fy = draw(good | odd_float), draw(good | odd_float)
    cx, cy = draw(good | odd_float), draw(good | odd_float)
    k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    if draw(st.integers(0, 3)) == 0:
        k = draw(st.lists(odd_float, min_size=9, max_size=9))
    if draw(st.integers(0, 9)) == 0:
        k = draw(st.lists(odd_float, max_size=12))  # wrong length
    d = draw(st.sampled_from([[], [0.0] * 4, [0.0] * 5, [0.1, -0.05, 0.0, 0.0, 0.01], [0.0] * 8])
             | st.lists(st.floats(-1, 1), max_size=16) | st.lists(odd_float, max_size=16))
    p = draw(st.sampled_from([None, "from_k", "from_k", "random"]))
    p = {None: [0.0] * 12, "from_k": k[:3] + [0.0] + k[3:6] + [0.0] + k[6:9] + [0.0]
         if len(k) == 9 else [0.0] * 12,
         "random": draw(st.lists(odd_float, min_size=12, max_size=12)
                        | st.lists(odd_float, max_size=14))}[p]
    return types.SimpleNamespace(
        k=k, d=d, p=p, distortion_model=draw(st.sampled_from(MODELS[:4] * 3 + MODELS)
                                             | st.text(max_size=12)),
        width=draw(st.integers(0, HUGE) | st.just(0)), height=draw(st.integers(0, HUGE)),
        binning_x=draw(st.sampled_from([0] * 6 + [1, 2])),
        binning_y=draw(st.sampled_from([0] * 6 + [1, 4])),
        roi=types.SimpleNamespace(x_offset=draw(st.sampled_from([0] * 6 + [5])), y_offset=0,
                                  width=draw(st.sampled_from([0] * 6 + [10])), height=0,
                                  do_rectify=False)), draw(st.booleans()), \
        draw(st.sampled_from(["same", "other"]))


def check_camera_info(case) -> str:
    msg, rectified, image_size = case
    try:
        model = CameraModel.from_camera_info(msg, rectified=rectified)
    except CameraInfoError:
        return "error"
    K = model.K
    assert K.shape == (3, 3) and np.isfinite(K).all() and np.isfinite(model.D).all()
    assert K[0, 0] > 0 and K[1, 1] > 0 and K[2, 2] == 1
    if not rectified:
        assert np.array_equal(K.reshape(-1), np.asarray(msg.k, np.float64))
    # the image the CameraInfo is paired with: its own size, or another one (a mismatch)
    width, height = (msg.width, msg.height) if image_size == "same" else \
        (msg.width + 1, max(1, msg.height // 2))
    try:
        model.check_image_size(width, height)
    except CameraInfoError as exc:
        assert msg.width and msg.height and (width, height) != (msg.width, msg.height)
        assert exc.reason == "camera_info_size_mismatch"
        return "error"
    assert not (msg.width and msg.height) or (width, height) == (msg.width, msg.height)
    points = np.array([[0.0, 0.0], [K[0, 2], K[1, 2]], [10.0, 20.0]])
    normalized = model.normalized_coordinates(points)
    assert normalized.shape == (3, 2)
    return "correct"


# --- the time synchroniser -----------------------------------------------------------------------

SEC = 1_000_000_000


@st.composite
def stamp_streams(draw):
    """Two inputs (image, camera_info) with out-of-order, duplicate and far-future stamps and
    clock jumps back."""
    base = draw(st.sampled_from([0, 1_700_000_000, 2**31 - 1]))
    events = []
    t = 0
    for _ in range(draw(st.integers(1, 40))):
        move = draw(st.sampled_from(["next", "next", "same", "back", "jump_back", "future"]))
        t = {"next": t + draw(st.integers(1, SEC // 5)), "same": t,
             "back": max(0, t - draw(st.integers(1, SEC))), "jump_back": 0,
             "future": t + draw(st.integers(SEC, 10**6 * SEC))}[move]
        ns = base * SEC + t
        events.append((draw(st.integers(0, 1)),
                       types.SimpleNamespace(sec=ns // SEC, nanosec=ns % SEC)))
    return (draw(st.integers(1, 6)), draw(st.sampled_from([0.0, 0.001, 0.02, 0.1])), events)


def check_time_sync(case) -> str:
    queue_size, slop, events = case
    emitted = []
    sync = ApproximateTimeSync(2, queue_size, slop, callback=lambda *m: emitted.append(m))
    added = [0, 0]
    for index, stamp in events:
        msg = types.SimpleNamespace(header=types.SimpleNamespace(stamp=stamp))
        sync.add(index, msg)
        added[index] += 1
    ns = [[m.header.stamp.sec * SEC + m.header.stamp.nanosec for m in combo] for combo in emitted]
    for combo in ns:  # every set within slop
        assert max(combo) - min(combo) <= round(slop * SEC)
    for i in range(2):  # callbacks never go back in time on an input
        stamps = [combo[i] for combo in ns]
        assert stamps == sorted(set(stamps))
    queued = sync.queued()
    for i in range(2):  # nothing lost silently: emitted + waiting + counted as dropped = added
        assert len(emitted) + queued[i] + sync.dropped_by_input[i] == added[i]
        assert queued[i] <= queue_size
    return "correct"


# --- YAML parameter files and --set --------------------------------------------------------------

KEYS = ["image_topic", "extractor.max_keypoints", "extractor.semantic_filter", "qos.profile",
        "sync.slop", "sync.queue_size", "publish.overlay", "extractor.mask_threshold",
        "extractor.nms_radius", "model", "device", "extractor.max_keypoint", "nonsense.key", ""]
yaml_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3), max_leaves=6)


def alias_bomb(levels: int) -> str:
    """Nested mappings of aliases: `levels` lines that expand to 2^levels leaves."""
    lines = ["a0: &a0 {x: 1, y: 2}"]
    lines += [f"a{i}: &a{i} {{p: *a{i - 1}, q: *a{i - 1}}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@st.composite
def parameter_files(draw):
    kind = draw(st.sampled_from(["params", "params", "plain", "text", "bomb", "deep", "set"]))
    overrides = []
    if kind == "params":
        params = {draw(st.sampled_from(KEYS)): draw(yaml_value) for _ in range(
            draw(st.integers(0, 4)))}
        key = draw(st.sampled_from(["superseg_node", "/superseg_node", "/**/superseg_node",
                                    "/other/node", "*"]))
        text = yaml.safe_dump({key: {"ros__parameters": params}}, allow_unicode=True)
    elif kind == "plain":
        text = yaml.safe_dump(draw(yaml_value), allow_unicode=True)
    elif kind == "text":
        text = draw(st.text(max_size=200))
    elif kind == "bomb":
        text = "superseg_node:\n  ros__parameters:\n" + "".join(
            "    " + line + "\n" for line in alias_bomb(draw(st.integers(10, 40))).splitlines())
    elif kind == "deep":
        depth = draw(st.integers(100, 20_000))
        text = "superseg_node:\n  ros__parameters:\n    x: " + "[" * depth + "]" * depth + "\n"
    else:
        text = ""
        overrides = [draw(st.sampled_from(KEYS)) + draw(st.sampled_from(["=", "", "=="]))
                     + draw(st.text(max_size=20) | st.sampled_from(
                         ["[240, 320]", "true", "null", "{a: 1}", "&x [*x]", "1e999"]))
                     for _ in range(draw(st.integers(1, 3)))]
    return text, overrides


def check_parameters(case) -> str:
    text, overrides = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            given = read_parameters(path) if text else {}
            if not isinstance(given, dict):
                raise ConfigError("not a mapping")  # the node's own check (launch_cli)
            given = apply_overrides(given, overrides)
            settings_ = node_settings(flatten_for_node(given))
        except ConfigError:
            return "error"
    assert isinstance(settings_, dict)
    return "correct"


def flatten_for_node(given: dict) -> dict:
    from superseg_ros.config import flatten
    return flatten(given)


# --- checkpoint loading --------------------------------------------------------------------------

class Evil:
    """Unpickling it would run code: weights_only must refuse it without running anything."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/superseg_fuzz_pwned",))


_VALID: dict = {}


def valid_checkpoint() -> tuple[bytes, dict]:
    if not _VALID:
        torch.manual_seed(0)
        buffer = io.BytesIO()
        with tempfile.TemporaryDirectory() as tmp:
            path = save_checkpoint(SuperSegmentation(TINY), Path(tmp) / "tiny.pt")
            _VALID["bytes"] = path.read_bytes()
            _VALID["payload"] = torch.load(path, weights_only=True)
        del buffer
    return _VALID["bytes"], _VALID["payload"]


@st.composite
def checkpoints(draw):
    data, payload = valid_checkpoint()
    kind = draw(st.sampled_from(["valid", "truncate", "flip", "keys", "shapes", "values",
                                 "config", "pickle_code", "garbage"]))
    if kind == "valid":
        return data, True
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))], False
    if kind == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 16))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        return bytes(buf), None  # a flip inside tensor data can leave a valid checkpoint
    if kind == "garbage":
        return draw(st.binary(max_size=256)), False
    if kind == "pickle_code":
        return pickle.dumps({"format": payload["format"], "evil": Evil()}), False
    changed = {k: (dict(v) if isinstance(v, dict) else v) for k, v in payload.items()}
    state = changed["state_dict"]
    names = sorted(state)
    if kind == "keys":
        name = draw(st.sampled_from(names))
        choice = draw(st.sampled_from(["drop", "rename", "top"]))
        if choice == "drop":
            del state[name]
        elif choice == "rename":
            state[name + ".x"] = state.pop(name)
        else:
            del changed[draw(st.sampled_from(sorted(changed)))]
    elif kind == "shapes":
        name = draw(st.sampled_from(names))
        state[name] = torch.zeros(size=[draw(st.integers(1, 4)) for _ in range(
            draw(st.integers(0, 4)))])
    elif kind == "values":
        state[draw(st.sampled_from(names))] = draw(st.sampled_from(
            [3, "x", None, [1, 2], {"a": torch.zeros(1)}]))
    else:  # a config that would build a huge network, or a nonsensical one
        key = draw(st.sampled_from(["encoder_width", "head_channels", "descriptor_dim",
                                    "num_classes", "aspp_channels", "decoder_channels",
                                    "encoder", "preset", "input_channels"]))
        changed["model_config"][key] = draw(st.sampled_from(
            [10**6, 2**31, 0, -3, 1.5, "x", None, 65_536, 3]))
    buffer = io.BytesIO()
    torch.save(changed, buffer)
    return buffer.getvalue(), None


def check_checkpoint(case) -> str:
    data, valid = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        path.write_bytes(data)
        try:
            model = load_model(path)
        except CheckpointError:
            assert valid is not True, "an intact checkpoint was refused"
            assert not Path("/tmp/superseg_fuzz_pwned").exists(), "a pickle ran code"
            return "error"
    assert valid is not False, "a damaged checkpoint was accepted"
    assert isinstance(model, SuperSegmentation)
    with torch.no_grad():
        out = model(torch.zeros(1, model.config["input_channels"], 16, 16))
    assert torch.isfinite(out["heatmap"]).all() or valid is None
    return "correct"


# --- the bag reader ------------------------------------------------------------------------------

_BAGS: dict = {}


def valid_bags() -> dict:
    """One small bag per storage (2 frames 16x24 with CameraInfo), as bytes of each file."""
    if not _BAGS:
        calib = bags.intrinsics(20.0, None, 12.0, 8.0).for_size(24, 16)
        with tempfile.TemporaryDirectory() as tmp:
            for storage in ("mcap", "sqlite3"):
                frames = [bags.Frame(np.full((16, 24, 3), 40 * i, np.uint8), calib, f"{i}.png")
                          for i in range(2)]
                out = Path(tmp) / storage
                bags.write_bag(frames, out, 10.0, storage=storage, start_stamp=10**9,
                               progress=False)
                _BAGS[storage] = {p.name: p.read_bytes() for p in out.iterdir()}
    return _BAGS


@st.composite
def damaged_bags(draw):
    storage = draw(st.sampled_from(["mcap", "sqlite3"]))
    files = dict(valid_bags()[storage])
    data_name = next(n for n in files if n != "metadata.yaml")
    kind = draw(st.sampled_from(["valid", "truncate", "flip", "no_metadata", "bad_metadata",
                                 "no_data"]))
    if kind == "truncate":
        files[data_name] = files[data_name][:draw(st.integers(0, len(files[data_name]) - 1))]
    elif kind == "flip":
        buf = bytearray(files[data_name])
        for _ in range(draw(st.integers(1, 16))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        files[data_name] = bytes(buf)
    elif kind == "no_metadata":
        del files["metadata.yaml"]
    elif kind == "bad_metadata":
        text = files["metadata.yaml"].decode()
        cut = draw(st.integers(0, len(text)))
        files["metadata.yaml"] = (text[:cut] + draw(st.text(max_size=30))).encode()
    elif kind == "no_data":
        del files[data_name]
    return files, kind == "valid"


def check_bag(case) -> str:
    files, valid = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bag"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        try:
            topics = bags.bag_topics(folder)
            messages = list(bags.iter_bag(folder, deserialize=True))
        except bags.BagError:
            assert not valid, "an intact bag was refused"
            return "error"
    assert isinstance(topics, dict)
    for topic, t_ns, msg, msgtype in messages:
        assert isinstance(topic, str) and isinstance(t_ns, int)
    if valid:
        assert len(messages) == 4 and sorted(topics) == ["/camera/camera_info",
                                                          "/camera/image_raw"]
    return "correct"


# --- the table -----------------------------------------------------------------------------------

ENTRY_POINTS = {  # name: (strategy, check)
    "image_to_array (Image)": (raw_images(), check_raw_image),
    "compressed_to_array (CompressedImage)": (compressed_images(), check_compressed),
    "CameraModel.from_camera_info": (camera_infos(), check_camera_info),
    "ApproximateTimeSync": (stamp_streams(), check_time_sync),
    "parameter file + --set": (parameter_files(), check_parameters),
    "load_model (checkpoint)": (checkpoints(), check_checkpoint),
    "bag reader (mcap, sqlite3)": (damaged_bags(), check_bag),
}


def hypothesis_settings(cases: int) -> settings:
    return settings(max_examples=cases, derandomize=True, database=None, deadline=None,
                    phases=[Phase.explicit, Phase.generate], print_blob=False,
                    suppress_health_check=list(HealthCheck))


def run_case(check, case) -> str:
    """One case under a wall-clock alarm: 'correct', 'error', or raises (a crash)."""
    def alarm(signum, frame):
        raise Hang(f"no answer within {CASE_SECONDS:.0f} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        return check(case)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fuzz_entry_point(name: str, cases: int) -> tuple[Counter, list[str]]:
    """Run `cases` generated inputs through one entry point; outcome counts and crash notes."""
    strategy, check = ENTRY_POINTS[name]
    outcomes, crashes = Counter(), []

    @hypothesis_settings(cases)
    @given(strategy)
    def one(case):
        try:
            outcomes[run_case(check, case)] += 1
        except Hang as exc:
            outcomes["hangs"] += 1
            crashes.append(f"hang: {exc}; input {summarise(case)}")
        except (Exception, RecursionError) as exc:  # noqa: BLE001 - every other end is a crash
            outcomes["crashes"] += 1
            crashes.append(f"{type(exc).__name__}: {str(exc)[:200]}; input {summarise(case)}")

    one()
    return outcomes, crashes


def summarise(case, limit: int = 300) -> str:
    text = repr(case)
    return text if len(text) <= limit else text[:limit] + "..."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="fuzz every entry point that takes outside bytes")
    p.add_argument("--cases", type=int, default=1000, help="generated inputs per entry point")
    p.add_argument("--memory-gb", type=float, default=6.0,
                   help="address-space limit: an allocation over it is a crash")
    p.add_argument("--only", help="run only entry points whose name contains this")
    args = p.parse_args(argv)
    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    rows, failed = [], False
    for name in ENTRY_POINTS:
        if args.only and args.only not in name:
            continue
        started = time.perf_counter()
        outcomes, crashes = fuzz_entry_point(name, args.cases)
        seconds = time.perf_counter() - started
        total = sum(outcomes.values())
        rows.append((name, total, outcomes["error"], outcomes["correct"],
                     outcomes["crashes"], outcomes["hangs"], seconds))
        print(f"fuzz: {name}: {total} cases in {seconds:.0f} s", file=sys.stderr, flush=True)
        for line in crashes[:5]:
            print(f"  {line}", file=sys.stderr)
        failed |= bool(crashes) or total < args.cases
    header = ("entry point", "cases", "clear errors", "correct results", "crashes", "hangs",
              "seconds")
    widths = [max(len(str(r[i])) if i != 6 else 7 for r in rows + [header])
              for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [str(v).rjust(w) for v, w in zip(r[1:6], widths[1:6])]
        cells.append(f"{r[6]:.0f}".rjust(widths[6]))
        print("| " + " | ".join(cells) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
