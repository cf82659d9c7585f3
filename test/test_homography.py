"""superseg_ros.homography: the A->B, pixel-centre convention, sampling, warping, validity."""

import cv2
import numpy as np
import pytest
import torch

from superseg_ros.config import ConfigError
from superseg_ros.homography import (fit_homography, homography_config, image_corners,
                                     points_inside, sample_from_config, sample_homography,
                                     scaling_matrix, valid_mask, warp_image, warp_images_torch,
                                     warp_points, warp_points_torch)

H, W = 60, 80


def translation(tx, ty):
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])


def blob(shape, x, y, sigma=2.0):
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))


def centroid(image):
    ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return np.array([(xs * image).sum(), (ys * image).sum()]) / image.sum()


def test_identity_everywhere(rng):
    eye = sample_homography(rng, H, W, perspective=0, scale=(1, 1), rotation_deg=0,
                            translation=0, patch_ratio=1.0)
    np.testing.assert_allclose(eye, np.eye(3), atol=1e-12)
    pts = rng.uniform(0, 50, (10, 2))
    np.testing.assert_allclose(warp_points(np.eye(3), pts), pts)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    assert np.array_equal(warp_image(image, np.eye(3)), image)
    assert valid_mask(np.eye(3), (H, W), (H, W)).all()


def test_composition_is_matrix_product(rng):
    h1, h2 = (sample_homography(rng, H, W, perspective=0.2) for _ in range(2))
    pts = rng.uniform(0, W, (20, 2))
    np.testing.assert_allclose(warp_points(h2 @ h1, pts), warp_points(h2, warp_points(h1, pts)),
                               atol=1e-9)


def test_known_translation_moves_points_pixels_and_mask(rng):
    h = translation(3, -2)
    np.testing.assert_allclose(warp_points(h, [[10.25, 20.5]]), [[13.25, 18.5]])
    image = rng.integers(0, 255, (H, W), dtype=np.uint8)
    warped = warp_image(image, h)
    assert np.array_equal(warped[:H - 2, 3:], image[2:, :W - 3])  # B(x+3, y-2) = A(x, y)
    mask = valid_mask(h, (H, W), (H, W))
    assert not mask[:, :3].any() and not mask[H - 2:].any() and mask[:H - 2, 3:].all()


def test_warp_then_inverse_returns_the_points(rng):
    h = sample_homography(rng, H, W, perspective=0.2, rotation_deg=40)
    pts = rng.uniform(0, W, (50, 2))
    np.testing.assert_allclose(warp_points(np.linalg.inv(h), warp_points(h, pts)), pts, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warped_dot_lands_at_H_of_the_dot(seed):
    """The image convention agrees with the point convention, to sub-pixel accuracy."""
    rng = np.random.default_rng(seed)
    shape = (120, 160)
    h = sample_homography(rng, *shape, perspective=0.15, rotation_deg=30)
    x, y = 70.3, 55.8
    expected = warp_points(h, [[x, y]])[0]
    warped = warp_image(blob(shape, x, y).astype(np.float32), h)
    np.testing.assert_allclose(centroid(warped), expected, atol=0.05)
    # one bright pixel, integer translation, nearest neighbour: exactly one pixel over
    dot = np.zeros(shape, np.uint8)
    dot[40, 30] = 255
    moved = warp_image(dot, translation(7, 5), interpolation=cv2.INTER_NEAREST)
    assert list(zip(*np.nonzero(moved))) == [(45, 37)]


def test_sampled_homographies_keep_B_inside_A_without_artifacts():
    rng = np.random.default_rng(3)
    for _ in range(30):
        h = sample_homography(rng, H, W, perspective=0.2, scale=(0.7, 1.4), rotation_deg=60,
                              translation=0.3)
        assert valid_mask(h, (H, W), (H, W)).all()
        # the patch of A shown in B is inside A's area
        assert points_inside(warp_points(np.linalg.inv(h), image_corners((H, W))), (H, W)).all()
    with_artifacts = [valid_mask(sample_homography(rng, H, W, perspective=0.3, scale=(1.2, 1.6),
                                                   rotation_deg=60, allow_artifacts=True),
                                 (H, W), (H, W)).mean() for _ in range(10)]
    assert min(with_artifacts) < 1


def test_sampling_is_deterministic_per_seed():
    a = sample_homography(np.random.default_rng(5), H, W)
    b = sample_homography(np.random.default_rng(5), H, W)
    c = sample_homography(np.random.default_rng(6), H, W)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert a.dtype == np.float64 and a[2, 2] == 1


def test_config_and_argument_errors():
    with pytest.raises(ConfigError, match="rotation_deg"):
        homography_config({"rotation": 10})
    with pytest.raises(ValueError, match="scale"):
        sample_homography(np.random.default_rng(0), H, W, scale=(1.2, 0.8))
    h = sample_from_config(np.random.default_rng(0), H, W, {"rotation_deg": 5.0})
    assert h.shape == (3, 3)


def test_fit_homography_exact_from_four_points(rng):
    h = sample_homography(rng, H, W, perspective=0.2)
    src = image_corners((H, W))
    np.testing.assert_allclose(fit_homography(src, warp_points(h, src)), h, atol=1e-9)


def test_resize_matrix_is_the_pixel_centre_convention():
    """cv2.resize by s moves a feature from x to (x + 0.5) s - 0.5."""
    image = blob((64, 96), 40.0, 21.0, sigma=4).astype(np.float32)
    small = cv2.resize(image, (48, 32), interpolation=cv2.INTER_AREA)
    expected = warp_points(scaling_matrix(0.5), [[40.0, 21.0]])[0]
    np.testing.assert_allclose(expected, [19.75, 10.25])
    np.testing.assert_allclose(centroid(small), expected, atol=0.02)


def test_torch_versions_agree_with_numpy(rng):
    hs = np.stack([sample_homography(rng, H, W, perspective=0.2) for _ in range(2)])
    pts = rng.uniform(0, W, (2, 7, 2))
    got = warp_points_torch(torch.from_numpy(hs), torch.from_numpy(pts)).numpy()
    np.testing.assert_allclose(got, np.stack([warp_points(h, p) for h, p in zip(hs, pts)]),
                               atol=1e-9)
    image = cv2.GaussianBlur(rng.random((H, W)).astype(np.float32), (0, 0), 2)
    batch = torch.from_numpy(np.stack([image, image]))[:, None]
    warped = warp_images_torch(batch, torch.from_numpy(hs))[:, 0].numpy()
    for i in range(2):
        np.testing.assert_allclose(warped[i], warp_image(image, hs[i]), atol=2e-3)
