"""CameraInfo -> normalised camera coordinates, checked against hand computation and OpenCV."""

import cv2
import numpy as np
import pytest

msgs = pytest.importorskip("sensor_msgs.msg")

from superseg_ros.ros.camera_model import CameraInfoError, CameraModel  # noqa: E402

W, H = 640, 480
FX, FY, CX, CY = 500.0, 510.0, 319.5, 241.25
PLUMB_BOB = [-0.2, 0.05, 0.001, -0.0008, 0.01]


def camera_info(d=(), model="plumb_bob", width=W, height=H, k=None, p=None):
    k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0] if k is None else k
    p = [FX, 0.0, CX, 0.0, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0] if p is None else p
    return msgs.CameraInfo(width=width, height=height, k=k, p=p, d=list(d),
                           distortion_model=model)


def grid_points(step=37):
    ys, xs = np.mgrid[0:H:step, 0:W:step]
    pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)
    return np.vstack([pts, [[W - 1, H - 1], [0.25, 0.75]]]).astype(np.float32)


def project(model, normalised):
    """Normalised (x, y) -> pixels with OpenCV's forward model."""
    obj = np.hstack([normalised.astype(np.float64), np.ones((len(normalised), 1))])
    if model.model == "fisheye":
        px, _ = cv2.fisheye.projectPoints(obj.reshape(-1, 1, 3), np.zeros(3), np.zeros(3),
                                          model.K, model.D)
    else:
        px, _ = cv2.projectPoints(obj, np.zeros(3), np.zeros(3), model.K, model.D)
    return px.reshape(-1, 2)


@pytest.mark.parametrize("d", [(), (0.0,) * 5])
def test_zero_distortion_matches_hand_computation(d):
    model = CameraModel.from_camera_info(camera_info(d))
    pts = grid_points()
    out = model.normalized_coordinates(pts)
    assert out.dtype == np.float32 and out.shape == pts.shape
    expected = np.stack([(pts[:, 0] - CX) / FX, (pts[:, 1] - CY) / FY], 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # the principal point is the optical axis (pixel centres at integer coordinates)
    np.testing.assert_allclose(model.normalized_coordinates(np.array([[CX, CY]])), [[0, 0]],
                               atol=1e-7)


def test_plumb_bob_agrees_with_opencv_and_inverts_project_points():
    model = CameraModel.from_camera_info(camera_info(PLUMB_BOB))
    assert model.model == "standard" and model.D.tolist() == PLUMB_BOB
    pts = grid_points()
    out = model.normalized_coordinates(pts)
    reference = cv2.undistortPoints(pts.reshape(-1, 1, 2), model.K, model.D).reshape(-1, 2)
    # OpenCV's default stops after 5 iterations; ours converges, so they agree to ~1e-4
    np.testing.assert_allclose(out, reference, atol=2e-4)
    assert np.abs(out - (pts - [CX, CY]) / [FX, FY]).max() > 1e-2  # distortion really applied

    truth = np.random.default_rng(0).uniform([-0.6, -0.45], [0.6, 0.45], (200, 2))
    recovered = model.normalized_coordinates(project(model, truth).astype(np.float32))
    np.testing.assert_allclose(recovered, truth, atol=1e-6)  # float32 output; brief: 1e-4


def test_rational_polynomial_round_trip():
    d = PLUMB_BOB + [0.002, -0.001, 0.0005]
    model = CameraModel.from_camera_info(camera_info(d, "rational_polynomial"))
    truth = np.random.default_rng(1).uniform(-0.5, 0.5, (100, 2))
    np.testing.assert_allclose(model.normalized_coordinates(project(model, truth)), truth,
                               atol=1e-4)


def test_equidistant_uses_fisheye_model():
    model = CameraModel.from_camera_info(camera_info([0.05, -0.01, 0.002, -0.0005], "equidistant"))
    assert model.model == "fisheye"
    truth = np.random.default_rng(2).uniform(-0.8, 0.8, (100, 2))
    np.testing.assert_allclose(model.normalized_coordinates(project(model, truth)), truth,
                               atol=1e-4)


def test_rectified_uses_p_without_distortion():
    p = [450.0, 0.0, 300.0, -45.0, 0.0, 450.0, 200.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    model = CameraModel.from_camera_info(camera_info(PLUMB_BOB, p=p), rectified=True)
    assert model.D.size == 0
    np.testing.assert_allclose(model.normalized_coordinates(np.array([[750.0, 200.0]])),
                               [[1.0, 0.0]], atol=1e-6)


def test_empty_input_and_bad_shape():
    model = CameraModel.from_camera_info(camera_info())
    assert model.normalized_coordinates(np.zeros((0, 2))).shape == (0, 2)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        model.normalized_coordinates(np.zeros((3, 3)))


def test_image_size_check():
    model = CameraModel.from_camera_info(camera_info())
    model.check_image_size(W, H)
    with pytest.raises(CameraInfoError, match="image is 1280x960 but its CameraInfo is 640x480"):
        model.check_image_size(1280, 960)
    unknown = CameraModel.from_camera_info(camera_info(width=0, height=0))
    unknown.check_image_size(1280, 960)  # 0 = unknown size: anything goes


def test_scaled_model_matches_resized_pixels():
    model = CameraModel.from_camera_info(camera_info(PLUMB_BOB))
    half = model.scaled(0.5)
    assert (half.width, half.height) == (W // 2, H // 2)
    half.check_image_size(W // 2, H // 2)
    pts = grid_points()
    # pixel centre x in the full image is at (x + 0.5) / 2 - 0.5 in the half-size image
    np.testing.assert_allclose(half.normalized_coordinates((pts + 0.5) * 0.5 - 0.5),
                               model.normalized_coordinates(pts), atol=1e-6)


@pytest.mark.parametrize("kwargs, words", [
    ({"k": [0.0] * 9}, "all zeros"),
    ({"k": [FX, 0, CX, 0, float("nan"), CY, 0, 0, 1]}, "NaN"),
    ({"d": [0.1, float("nan"), 0, 0, 0]}, "NaN"),
    ({"d": [0.1, 0.0, 0.0, 0.0, 0.0], "model": "kannala_brandt_9"}, "unknown distortion_model"),
    ({"d": [0.1, 0.0, 0.0, 0.0, 0.0], "model": ""}, "distortion_model is empty"),
    ({"d": [0.1, 0.0, 0.0], "model": "plumb_bob"}, "needs 4, 5, 8, 12 or 14"),
    ({"k": [-FX, 0, CX, 0, FY, CY, 0, 0, 1]}, "not an intrinsic matrix"),
])
def test_bad_camera_info_raises_one_clear_line(kwargs, words):
    with pytest.raises(CameraInfoError) as exc:
        CameraModel.from_camera_info(camera_info(**kwargs))
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_binning_and_roi_are_refused():
    info = camera_info()
    info.binning_x = 2
    with pytest.raises(CameraInfoError, match="binning"):
        CameraModel.from_camera_info(info)
    info = camera_info()
    info.roi.x_offset, info.roi.width, info.roi.height = 10, 100, 100
    with pytest.raises(CameraInfoError, match="roi"):
        CameraModel.from_camera_info(info)
    info = camera_info()
    info.roi.width, info.roi.height = W, H  # an ROI covering the whole image is fine
    CameraModel.from_camera_info(info)


def test_empty_model_without_distortion_is_accepted():
    model = CameraModel.from_camera_info(camera_info((), model=""))
    np.testing.assert_allclose(model.normalized_coordinates(np.array([[CX + FX, CY]])), [[1, 0]],
                               atol=1e-6)
