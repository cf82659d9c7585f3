"""sensor_msgs/Image and CompressedImage <-> numpy, on real message objects (no ROS running)."""

import array
import sys
import types

import cv2
import numpy as np
import pytest

msgs = pytest.importorskip("sensor_msgs.msg")

from superseg_ros.ros import image_conversion as ic  # noqa: E402
from superseg_ros.ros.image_conversion import (  # noqa: E402
    ImageConversionError, array_to_image_fields, compressed_to_array, convert_image,
    image_to_array, make_image)

H, W = 5, 7


def raw_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False):
    """An Image built by hand (independently of array_to_image_fields), `pad` bytes per row."""
    pixels = np.asarray(pixels)
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return msgs.Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                      is_bigendian=int(bigendian), step=padded.shape[1],
                      data=array.array("B", padded.tobytes()))


@pytest.fixture
def rgb(rng):
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def fresh_backend():
    ic.reset_conversion_backend()
    yield
    ic.reset_conversion_backend()


# (encoding, how to build the wire pixels from an RGB image, expected output from the RGB image)
COLOUR_CASES = {
    "rgb8": (lambda c: c, lambda c: c),
    "bgr8": (lambda c: c[..., ::-1], lambda c: c),
    "8UC3": (lambda c: c[..., ::-1], lambda c: c),
    "rgba8": (lambda c: np.dstack([c, np.full(c.shape[:2], 7, np.uint8)]), lambda c: c),
    "bgra8": (lambda c: np.dstack([c[..., ::-1], np.full(c.shape[:2], 7, np.uint8)]),
              lambda c: c),
}


@pytest.mark.parametrize("pad", [0, 3, 8])
@pytest.mark.parametrize("encoding", list(COLOUR_CASES))
def test_colour_encodings_round_trip_with_row_padding(rgb, encoding, pad):
    wire, expected = COLOUR_CASES[encoding]
    out = image_to_array(raw_msg(wire(rgb), encoding, pad=pad))
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, expected(rgb))


@pytest.mark.parametrize("pad", [0, 1, 6])
@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_round_trips(rng, encoding, pad):
    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    out = image_to_array(raw_msg(grey, encoding, pad=pad))
    assert out.dtype == np.uint8 and out.shape == (H, W)
    np.testing.assert_array_equal(out, grey)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 1, 4])  # pad 1 makes every row start misaligned
@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_16bit_round_trips_in_both_byte_orders(rng, encoding, pad, bigendian):
    depth = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    depth[0, 0] = 0x0102  # byte-order sensitive sentinel
    out = image_to_array(raw_msg(depth, encoding, pad=pad, bigendian=bigendian))
    assert out.dtype == np.uint16 and out.dtype.isnative and out.shape == (H, W)
    assert out.flags.aligned
    np.testing.assert_array_equal(out, depth)
    assert out[0, 0] == 0x0102


def test_rgb8_and_mono8_are_zero_copy_views(rgb):
    msg = raw_msg(rgb, "rgb8", pad=4)
    out = image_to_array(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    mono = raw_msg(rgb[..., 0], "mono8")
    assert np.shares_memory(image_to_array(mono), np.frombuffer(mono.data, np.uint8))


def test_longer_data_than_step_times_height_is_accepted(rgb):
    msg = raw_msg(rgb, "rgb8")
    msg.data.extend(b"\0" * 10)
    np.testing.assert_array_equal(image_to_array(msg), rgb)


def test_plain_bytes_and_stand_in_objects_work(rgb):
    stand_in = types.SimpleNamespace(height=H, width=W, encoding="bgr8", is_bigendian=0,
                                     step=W * 3, data=rgb[..., ::-1].tobytes())
    np.testing.assert_array_equal(image_to_array(stand_in), rgb)


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_truncated_data_says_expected_and_got(rgb):
    msg = raw_msg(rgb, "rgb8", pad=2)
    del msg.data[-5:]
    with pytest.raises(ImageConversionError) as exc:
        image_to_array(msg)
    text = _one_line(exc)
    assert "truncated" in text and str(msg.step * H) in text and str(msg.step * H - 5) in text


@pytest.mark.parametrize("height, width", [(0, 7), (5, 0), (0, 0)])
def test_zero_sized_image_raises(height, width):
    msg = msgs.Image(height=height, width=width, encoding="rgb8", step=width * 3)
    with pytest.raises(ImageConversionError) as exc:
        image_to_array(msg)
    assert "zero size" in _one_line(exc)


def test_unknown_encoding_lists_the_supported_ones(rgb):
    msg = raw_msg(rgb, "yuv422")
    with pytest.raises(ImageConversionError) as exc:
        image_to_array(msg)
    text = _one_line(exc)
    assert "yuv422" in text and "rgb8" in text and "mono16" in text and "8UC3" in text


def test_step_smaller_than_a_row_raises(rgb):
    msg = raw_msg(rgb, "rgb8")
    msg.step = W * 3 - 1
    with pytest.raises(ImageConversionError) as exc:
        image_to_array(msg)
    assert "smaller than one row" in _one_line(exc)


def test_image_conversion_error_is_a_value_error():
    assert issubclass(ImageConversionError, ValueError)


# --- compressed ---------------------------------------------------------------------------

def _compressed(image_bgr, ext, fmt):
    ok, buf = cv2.imencode(ext, image_bgr)
    assert ok
    return msgs.CompressedImage(format=fmt, data=array.array("B", buf.tobytes()))


def test_compressed_png_decodes_losslessly_to_rgb(rgb):
    out = compressed_to_array(_compressed(rgb[..., ::-1].copy(), ".png", "png"))
    np.testing.assert_array_equal(out, rgb)


def test_compressed_jpeg_decodes_to_rgb():
    # smooth image so JPEG error is small; a red/blue swap would still be far off
    y, x = np.mgrid[0:32, 0:48]
    rgb = np.dstack([x * 5, y * 7, 255 - x * 5]).astype(np.uint8)
    msg = _compressed(rgb[..., ::-1].copy(), ".jpg", "rgb8; jpeg compressed bgr8")
    out = compressed_to_array(msg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 4


def test_compressed_grey_png_becomes_rgb(rng):
    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    out = compressed_to_array(_compressed(grey, ".png", "mono8; png compressed mono8"))
    np.testing.assert_array_equal(out, np.dstack([grey] * 3))


@pytest.mark.parametrize("data, fmt, words", [
    (b"definitely not a jpeg", "jpeg", "cannot decode"),
    (b"", "png", "empty"),
    (b"\0" * 32, "16UC1; compressedDepth png", "compressedDepth"),
])
def test_bad_compressed_images_raise(data, fmt, words):
    msg = msgs.CompressedImage(format=fmt, data=array.array("B", data))
    with pytest.raises(ImageConversionError) as exc:
        compressed_to_array(msg)
    assert words in _one_line(exc)


# --- publishing ---------------------------------------------------------------------------

def test_make_image_mono8_mask_and_header():
    from std_msgs.msg import Header
    mask = np.zeros((H, W), bool)
    mask[1:3, 2:5] = True
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    msg = make_image(mask, "mono8", header)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (H, W, W, "mono8")
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 34
    np.testing.assert_array_equal(image_to_array(msg), mask.astype(np.uint8) * 255)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_make_image_colour_round_trips(rgb, encoding):
    msg = make_image(rgb, encoding)
    assert msg.step == W * 3 and msg.is_bigendian == 0
    back = image_to_array(msg)  # always RGB out, so bgr8 swaps the caller's channel order
    np.testing.assert_array_equal(back, rgb if encoding == "rgb8" else rgb[..., ::-1])


def test_mono16_fields_round_trip(rng):
    depth = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    fields = array_to_image_fields(depth, "mono16")
    assert fields["step"] == W * 2 and fields["is_bigendian"] == int(sys.byteorder == "big")
    np.testing.assert_array_equal(image_to_array(msgs.Image(**fields)), depth)


@pytest.mark.parametrize("image, encoding, words", [
    (np.zeros((H, W, 3), np.uint8), "mono8", "HxW"),
    (np.zeros((H, W), np.float32), "mono8", "uint8"),
    (np.zeros((H, W, 4), np.uint8), "bgr8", "HxWx3"),
    (np.zeros((H, W, 3), np.uint8), "yuv422", "cannot publish"),
    (np.zeros((0, W), np.uint8), "mono8", "zero-sized"),
])
def test_array_to_image_fields_rejects_mismatches(image, encoding, words):
    with pytest.raises(ImageConversionError) as exc:
        array_to_image_fields(image, encoding)
    assert words in _one_line(exc)


# --- cv_bridge or own conversion ----------------------------------------------------------

def test_without_cv_bridge_uses_own_conversion(rgb, fresh_backend, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv_bridge", None)  # import cv_bridge -> ImportError
    assert ic.conversion_backend() is None
    np.testing.assert_array_equal(convert_image(raw_msg(rgb[..., ::-1], "bgr8")), rgb)
    assert ic.conversion_backend() == "numpy"
    assert "cv_bridge unavailable" in ic.conversion_backend_reason()


def _fake_bridge_module(imgmsg_to_cv2):
    calls = []

    class CvBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
            calls.append(desired_encoding)
            return imgmsg_to_cv2(msg, desired_encoding)

    return types.SimpleNamespace(CvBridge=CvBridge), calls


def test_broken_cv_bridge_falls_back_for_good(rgb, fresh_backend, monkeypatch):
    def numpy2_failure(msg, desired_encoding):
        raise AttributeError("module 'numpy' has no attribute 'fromstring'")  # the shim's failure

    module, calls = _fake_bridge_module(numpy2_failure)
    monkeypatch.setitem(sys.modules, "cv_bridge", module)
    msg = raw_msg(rgb[..., ::-1], "bgr8")
    np.testing.assert_array_equal(convert_image(msg), rgb)
    assert ic.conversion_backend() == "numpy"
    assert "cv_bridge failed" in ic.conversion_backend_reason()
    np.testing.assert_array_equal(convert_image(msg), rgb)
    assert calls == ["rgb8"]  # the bridge was tried once, then never again


def test_working_cv_bridge_is_used(rgb, fresh_backend, monkeypatch):
    def bridge(msg, desired_encoding):
        out = image_to_array(msg)  # a correct bridge, built from the own conversion
        return out if desired_encoding == "rgb8" or out.ndim == 2 else out[..., ::-1]

    module, calls = _fake_bridge_module(bridge)
    monkeypatch.setitem(sys.modules, "cv_bridge", module)
    np.testing.assert_array_equal(convert_image(raw_msg(rgb[..., ::-1], "bgr8")), rgb)
    np.testing.assert_array_equal(convert_image(raw_msg(rgb[..., ::-1], "8UC3")), rgb)
    np.testing.assert_array_equal(convert_image(raw_msg(rgb[..., 1], "mono8")), rgb[..., 1])
    assert ic.conversion_backend() == "cv_bridge"
    assert calls == ["rgb8", "passthrough", "passthrough"]


def test_bad_message_through_convert_image_raises_clear_error(rgb, fresh_backend, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv_bridge", None)
    with pytest.raises(ImageConversionError, match="unsupported image encoding"):
        convert_image(raw_msg(rgb, "yuv422"))
