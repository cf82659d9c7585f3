"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge and without rclpy.

    rgb = image_to_array(msg)          # RGB uint8 HxWx3, grey HxW uint8, or HxW uint16
    rgb = compressed_to_array(msg)     # RGB uint8 HxWx3
    out = make_image(mask, "mono8", header)

The functions read only the fields height, width, encoding, is_bigendian, step, data (format, data
for compressed images), so they work on real messages and on any stand-in object. Arrays returned
by `image_to_array` may be views of `msg.data` (zero copy): copy before writing into them.

`convert_image` prefers cv_bridge when it imports and works; the PyPI `cv-bridge` is a ROS 1 shim
that breaks on NumPy 2, so the first exception from the bridge switches to the own conversion for
good. `conversion_backend()` says which path is in use so the node can log it once.
"""

from __future__ import annotations

import array
import sys
import threading

import numpy as np


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an array (or an array into a message).
    `reason`: a short name of the kind of problem, the same for every frame with it (the node
    counts and logs by it)."""

    def __init__(self, message: str, reason: str = "bad_image"):
        super().__init__(message)
        self.reason = reason


# encoding -> (channels, dtype, channel order). Order "bgr" means the channels are swapped to RGB;
# 8UC3 is treated as bgr8, as cv_bridge does (OpenCV's native order).
_ENCODINGS = {
    "rgb8": (3, np.uint8, "rgb"),
    "bgr8": (3, np.uint8, "bgr"),
    "rgba8": (4, np.uint8, "rgb"),
    "bgra8": (4, np.uint8, "bgr"),
    "mono8": (1, np.uint8, "mono"),
    "mono16": (1, np.uint16, "mono"),
    "8UC1": (1, np.uint8, "mono"),
    "8UC3": (3, np.uint8, "bgr"),
    "16UC1": (1, np.uint16, "mono"),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)

# Encodings array_to_image_fields can write (what the node publishes, plus the plain OpenCV types).
_PUBLISH_ENCODINGS = ("mono8", "mono16", "rgb8", "bgr8", "rgba8", "bgra8", "8UC1", "8UC3", "16UC1")


def _encoding_info(encoding: str):
    info = _ENCODINGS.get(encoding)
    if info is None:
        raise ImageConversionError(
            f"unsupported image encoding '{encoding}' "
            f"(supported: {', '.join(SUPPORTED_ENCODINGS)})", reason="unsupported_encoding")
    return info


def _as_byte_array(data) -> np.ndarray:
    """msg.data (array.array('B') in rclpy, bytes, bytearray, memoryview, numpy) as a uint8 view."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=np.uint8)


def image_to_array(msg) -> np.ndarray:
    """A sensor_msgs/Image -> numpy array the Extractor accepts.

    rgb8/bgr8/rgba8/bgra8/8UC3 -> RGB uint8 HxWx3 (alpha dropped, BGR swapped);
    mono8/8UC1 -> HxW uint8; mono16/16UC1 -> HxW native-endian uint16 (is_bigendian honoured).
    Row padding (step > width * channels * bytes) is sliced off. rgb8, mono8 and native-endian
    mono16 are zero-copy views of msg.data; swaps and byte-order changes copy once.
    Raises ImageConversionError (one line) for an unsupported encoding, a zero-sized image, a step
    smaller than a row, or data shorter than step * height.
    """
    encoding = str(msg.encoding)
    channels, dtype, order = _encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(
            f"image has zero size ({width}x{height}, encoding '{encoding}')", reason="zero_size")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"image step {step} is smaller than one row ({width} px x {channels} ch x "
            f"{itemsize} B = {row_bytes} B, encoding '{encoding}')", reason="step_too_small")
    raw = _as_byte_array(msg.data)
    expected = step * height
    if raw.size < expected:
        raise ImageConversionError(
            f"image data truncated: expected step*height = {step}*{height} = {expected} bytes, "
            f"got {raw.size} ({width}x{height} '{encoding}')", reason="truncated")

    # (H, step) -> drop padding -> reinterpret as dtype; every step is a view, no copy.
    rows = raw[:expected].reshape(height, step)[:, :row_bytes]
    pixels = rows
    if itemsize > 1:
        if step % itemsize or raw.ctypes.data % itemsize:
            rows = rows.copy()  # odd step or buffer start: keep 16-bit rows aligned
        source = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
        pixels = rows.view(source)
        if not source.isnative:
            pixels = pixels.astype(dtype)  # foreign byte order -> native (one copy)
    pixels = pixels.reshape(height, width, channels)

    if order == "mono":
        return pixels[..., 0]
    if order == "bgr":
        # contiguous copy: a negative-stride view breaks torch.from_numpy and most cv2 calls
        return np.ascontiguousarray(pixels[..., 2::-1])
    return pixels[..., :3]


def compressed_to_array(msg) -> np.ndarray:
    """A sensor_msgs/CompressedImage (jpeg/png, image_transport 'compressed') -> RGB uint8 HxWx3.

    Grey and 16-bit images are decoded to 8-bit RGB, so the result always has the same layout.
    compressedDepth (depth PNGs with a custom header) is rejected: it is not a camera image.
    """
    fmt = str(getattr(msg, "format", ""))
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise ImageConversionError(
            f"compressed format '{fmt}' is a depth image (compressedDepth); subscribe to a colour "
            "or mono image topic instead", reason="compressed_depth")
    raw = _as_byte_array(msg.data)
    if raw.size == 0:
        raise ImageConversionError(f"compressed image is empty (format '{fmt}')",
                                   reason="compressed_empty")
    declared = compressed_image_size(raw)
    if declared is not None and declared[0] * declared[1] > MAX_DECODED_PIXELS:
        raise ImageConversionError(
            f"compressed image declares {declared[0]}x{declared[1]} pixels, more than the "
            f"{MAX_DECODED_PIXELS} this node decodes ({raw.size} bytes, format '{fmt}')",
            reason="compressed_too_large")
    import cv2  # local: keeps this module importable where OpenCV is broken, for the raw path

    try:
        bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV's own size limit, and other decoder assertions
        raise ImageConversionError(
            f"cannot decode compressed image ({raw.size} bytes, format '{fmt}'): "
            f"{str(exc).strip().splitlines()[-1]}", reason="undecodable") from None
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(
            f"cannot decode compressed image ({raw.size} bytes, format '{fmt}'): "
            "not a JPEG/PNG OpenCV can read, or the data is corrupt", reason="undecodable")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# Decoding allocates width x height x 3 bytes before reading any pixel: a few hostile header bytes
# could ask for gigabytes. 2^26 pixels (192 MiB as RGB) is above 8K video (33 MP).
MAX_DECODED_PIXELS = 1 << 26
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def compressed_image_size(raw: np.ndarray) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG header declares, read without decoding; None for other or
    unreadable data (the decoder then decides)."""
    head = raw[:8].tobytes()
    if head == b"\x89PNG\r\n\x1a\n" and raw.size >= 24:
        return (int.from_bytes(raw[16:20].tobytes(), "big"),
                int.from_bytes(raw[20:24].tobytes(), "big"))
    if head[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= raw.size:  # walk the JPEG segments to the first start-of-frame
        if raw[at] != 0xFF:
            return None
        marker = int(raw[at + 1])
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            at += 2
            continue
        length = int.from_bytes(raw[at + 2:at + 4].tobytes(), "big")
        if marker in _JPEG_SOF and at + 9 <= raw.size:
            return (int.from_bytes(raw[at + 7:at + 9].tobytes(), "big"),
                    int.from_bytes(raw[at + 5:at + 7].tobytes(), "big"))
        if length < 2 or marker == 0xDA:  # broken, or entropy-coded data before any frame
            return None
        at += 2 + length
    return None


def array_to_image_fields(image: np.ndarray, encoding: str) -> dict:
    """The sensor_msgs/Image fields (except header) for `image` in `encoding`.

    mono8/8UC1: HxW uint8 (a bool mask becomes 0/255 so it is visible in rviz);
    mono16/16UC1: HxW uint16; rgb8/bgr8/8UC3: HxWx3 uint8; rgba8/bgra8: HxWx4 uint8.
    The channel order is the caller's: the array is written as is, never swapped.
    `data` is an array.array('B'), which rclpy's setter takes without a per-byte check.
    """
    if encoding not in _PUBLISH_ENCODINGS:
        raise ImageConversionError(
            f"cannot publish encoding '{encoding}' (supported: {', '.join(_PUBLISH_ENCODINGS)})")
    channels, dtype, _ = _ENCODINGS[encoding]
    image = np.asarray(image)
    if image.dtype == np.bool_ and dtype == np.uint8 and channels == 1:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3 and image.shape[2] == 1 and channels == 1:
        image = image[..., 0]
    want_ndim = 2 if channels == 1 else 3
    if image.ndim != want_ndim or (channels > 1 and image.shape[2] != channels):
        layout = "HxW" if channels == 1 else f"HxWx{channels}"
        raise ImageConversionError(
            f"encoding '{encoding}' needs an {layout} array, got shape {image.shape}")
    if image.dtype != dtype:
        raise ImageConversionError(
            f"encoding '{encoding}' needs dtype {np.dtype(dtype).name}, got {image.dtype}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"cannot publish a zero-sized image ({width}x{height})")
    image = np.ascontiguousarray(image, dtype=np.dtype(dtype).newbyteorder("="))
    data = array.array("B")
    data.frombytes(memoryview(image).cast("B"))
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        # 8-bit data has no byte order; 16-bit is written in this machine's order and flagged.
        "is_bigendian": int(image.dtype.itemsize > 1 and sys.byteorder == "big"),
        "step": int(width * channels * image.dtype.itemsize),
        "data": data,
    }


def make_image(image: np.ndarray, encoding: str, header=None):
    """A sensor_msgs.msg.Image of `image` with `header` (copied by reference; None: empty)."""
    from sensor_msgs.msg import Image  # lazy: the rest of this module works without ROS

    msg = Image(**array_to_image_fields(image, encoding))
    if header is not None:
        msg.header = header
    return msg


# --- cv_bridge or own conversion ------------------------------------------------------------

_COLOUR = frozenset(("rgb8", "bgr8", "rgba8", "bgra8"))
_lock = threading.Lock()
_backend: str | None = None      # None until the first convert_image, then "cv_bridge" | "numpy"
_backend_reason = "not decided yet (no image converted)"
_bridge = None


def conversion_backend() -> str | None:
    """'cv_bridge' or 'numpy' once convert_image has run, else None."""
    return _backend


def conversion_backend_reason() -> str:
    """One line on why the current backend was chosen (for the node's log)."""
    return _backend_reason


def reset_conversion_backend() -> None:
    """Forget the decision (tests; or after installing a working cv_bridge in-process)."""
    global _backend, _backend_reason, _bridge
    with _lock:
        _backend, _backend_reason, _bridge = None, "not decided yet (no image converted)", None


def _use_numpy(reason: str) -> None:
    global _backend, _backend_reason, _bridge
    _backend, _backend_reason, _bridge = "numpy", reason, None


def _decide_backend() -> None:
    global _backend, _backend_reason, _bridge
    with _lock:
        if _backend is not None:
            return
        try:
            from cv_bridge import CvBridge
            _bridge = CvBridge()
        except Exception as exc:  # ImportError, or a shim that fails at construction
            _use_numpy(f"cv_bridge unavailable ({type(exc).__name__}: {exc}); using own conversion")
            return
        _backend, _backend_reason = "cv_bridge", "cv_bridge imported"


def _bridge_convert(bridge, msg) -> np.ndarray:
    encoding = str(msg.encoding)
    desired = "rgb8" if encoding in _COLOUR else "passthrough"
    out = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding=desired))
    if encoding == "8UC3":
        out = np.ascontiguousarray(out[..., ::-1])  # passthrough keeps 8UC3 in BGR order
    channels, dtype, _ = _ENCODINGS[encoding]
    want = (int(msg.height), int(msg.width)) + ((3,) if channels > 1 else ())
    # A bridge that "works" but returns the wrong thing is as unusable as one that raises.
    if out.shape != want or out.dtype != dtype:
        raise RuntimeError(f"cv_bridge returned {out.dtype} {out.shape}, "
                           f"expected {np.dtype(dtype).name} {want}")
    return out


def convert_image(msg) -> np.ndarray:
    """sensor_msgs/Image -> array like image_to_array, via cv_bridge while it works.

    The first exception from cv_bridge (including the NumPy-2 failures of the PyPI ROS 1 shim)
    switches to image_to_array permanently; a message that is itself bad then raises
    ImageConversionError from image_to_array.
    """
    if str(msg.encoding) not in _ENCODINGS:
        return image_to_array(msg)  # raises the clear error; not the bridge's fault
    if _backend is None:
        _decide_backend()
    bridge = _bridge
    if _backend == "cv_bridge" and bridge is not None:
        try:
            return _bridge_convert(bridge, msg)
        except Exception as exc:
            with _lock:
                _use_numpy(f"cv_bridge failed on '{msg.encoding}' ({type(exc).__name__}: {exc}); "
                           "using own conversion from now on")
    return image_to_array(msg)
