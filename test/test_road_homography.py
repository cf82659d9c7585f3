"""Road-plane homographies (training/road_homography.py) on synthetic cameras with known answers,
plus the real-data check of tools/check_road_homography.py on KITTI when ../shared/data exists."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from superseg_ros.config import ConfigError
from superseg_ros.homography import scaling_matrix, warp_points
from superseg_ros.training import road_homography as rh

REPO = Path(__file__).resolve().parents[1]
KITTI = REPO.parent / "shared" / "data" / "kitti_raw_0001"
EXTRINSIC = {"baseline": 0.209313, "pitch": 0.038, "roll": 0.0, "yaw": -0.0195,
             "x": 1.7, "y": 0.1, "z": 1.22}
CAMERA = {"extrinsic": EXTRINSIC,
          "intrinsic": {"fx": 2262.52, "fy": 2265.30, "u0": 1096.98, "v0": 513.137}}


def project(k, points):
    """(N, 3) camera points -> (N, 2) pixels."""
    p = points @ np.asarray(k).T
    return p[:, :2] / p[:, 2:]


def transform(t, points):
    return points @ t[:3, :3].T + t[:3, 3]


def road_points_vehicle(rng, n=200):
    """Points on the road (z = 0) 4..40 m ahead, +-6 m sideways, in the vehicle frame."""
    return np.stack([rng.uniform(4, 40, n), rng.uniform(-6, 6, n), np.zeros(n)], 1)


def random_extrinsic(rng):
    return {"x": rng.uniform(0.5, 2.0), "y": rng.uniform(-0.5, 0.5), "z": rng.uniform(1.0, 2.0),
            "yaw": rng.uniform(-0.05, 0.05), "pitch": rng.uniform(-0.05, 0.15),
            "roll": rng.uniform(-0.03, 0.03), "baseline": 0.2}


def random_k(rng):
    f = rng.uniform(300, 900)
    return np.array([[f, 0, rng.uniform(300, 340)], [0, f * rng.uniform(0.98, 1.02),
                                                     rng.uniform(230, 250)], [0, 0, 1]])


def test_extrinsics_reproduce_cityscapes_scripts_sensor_transform():
    # sensor_T_ISO_8855 quoted in cityscapesScripts docs/Box3DImageTransform.ipynb for the camera
    # with these extrinsics (vehicle -> camera with ISO axes); ours adds the optical axes.
    expected = np.array([[0.9990881051503779, -0.01948468779721943, -0.03799085532693703,
                          -1.6501524664770573],
                         [0.019498764210995674, 0.9998098810245096, 0.0, -0.1331288872611436],
                         [0.03798363254444427, -0.0007407747301939942, 0.9992780868764849,
                          -1.2836173638418473]])
    t_cv = rh.camera_from_vehicle(EXTRINSIC)
    np.testing.assert_allclose(rh.ISO_TO_OPTICAL.T @ t_cv[:3], expected, atol=2e-4)


def test_road_plane_contains_the_ground_and_points_down(rng):
    for _ in range(5):
        ext = random_extrinsic(rng)
        n, d = rh.road_plane(ext)
        ground = transform(rh.camera_from_vehicle(ext), road_points_vehicle(rng))
        np.testing.assert_allclose(ground @ n, d, atol=1e-9)
        assert d == pytest.approx(ext["z"])  # the distance is the camera height
        assert np.linalg.norm(n) == pytest.approx(1) and n[1] > 0.9  # mostly image-down
    n, d = rh.road_plane({**EXTRINSIC, "pitch": 0.0, "yaw": 0.0})
    np.testing.assert_allclose(n, [0, 1, 0], atol=1e-12)


def test_homography_maps_projected_road_points_exactly(rng):
    """Random cameras, mounts and odometry: H must agree with projecting the 3-D points."""
    for _ in range(10):
        ext, k0, k1 = random_extrinsic(rng), random_k(rng), random_k(rng)
        speed, yaw_rate, dt = rng.uniform(0, 20), rng.uniform(-0.5, 0.5), rng.uniform(0.03, 0.3)
        t_cv = rh.camera_from_vehicle(ext)
        pose = rh.planar_vehicle_motion(speed, yaw_rate, dt)
        t_10 = rh.camera_motion_from_odometry(speed, yaw_rate, dt, ext)
        n, d = rh.road_plane(ext)
        h = rh.road_homography_from_motion(k0, k1, t_10, n, d)

        world = road_points_vehicle(rng)                     # vehicle frame at t0
        in_v1 = transform(np.linalg.inv(pose), world)        # the same points seen at t1
        x0 = project(k0, transform(t_cv, world))
        x1 = project(k1, transform(t_cv, in_v1))
        np.testing.assert_allclose(warp_points(h, x0), x1, atol=1e-6)


def test_homography_with_arbitrary_6dof_motion(rng):
    k = random_k(rng)
    n = rng.normal(size=3)
    n /= np.linalg.norm(n)
    d = 1.5
    angle = rng.normal(size=3) * 0.1
    rot = rh.rotation_ypr(*angle)
    t = rng.normal(size=3)
    # points on n^T X = d in front of camera 0: d n + in-plane offsets, kept where z > 0
    basis = np.linalg.svd(n[None])[2][1:]
    pts = d * n + rng.uniform(-5, 5, (500, 2)) @ basis
    pts = pts[(pts[:, 2] > 0.5) & (transform(rh._rigid(rot, t), pts)[:, 2] > 0.5)]
    assert len(pts) > 20
    h = rh.road_homography(k, k, rot, t, n, d)
    np.testing.assert_allclose(warp_points(h, project(k, pts)),
                               project(k, pts @ rot.T + t), atol=1e-6)


def test_identity_motion_is_identity():
    k = rh.intrinsics(CAMERA)
    n, d = rh.road_plane(CAMERA)
    h = rh.road_homography_from_motion(k, k, rh.camera_motion_from_odometry(0.0, 0.0, 0.1, CAMERA),
                                       n, d)
    np.testing.assert_allclose(h, np.eye(3), atol=1e-12)


def test_forward_motion_fixes_the_focus_of_expansion_and_the_horizon():
    k = rh.intrinsics(CAMERA)
    n, d = rh.road_plane(CAMERA)
    t_10 = rh.camera_motion_from_odometry(10.0, 0.0, 0.1, CAMERA)
    np.testing.assert_allclose(t_10[:3, :3], np.eye(3), atol=1e-12)  # straight: no rotation
    assert t_10[2, 3] == pytest.approx(-1.0, abs=2e-3)  # static points come 1 m closer
    h = rh.road_homography_from_motion(k, k, t_10, n, d)
    # vanishing point of the driving direction (vehicle x axis seen by the camera)
    forward = rh.camera_from_vehicle(CAMERA)[:3, 0]
    foe = project(k, forward[None])
    np.testing.assert_allclose(warp_points(h, foe), foe, atol=1e-6)
    # every horizon point stays put; road points below it move down and away from the FOE
    line = rh.horizon_line(k, n)
    xs = np.array([0.0, 700.0, 2047.0])
    horizon = np.stack([xs, -(line[0] * xs + line[2]) / line[1]], 1)
    np.testing.assert_allclose(warp_points(h, horizon), horizon, atol=1e-6)
    road = np.array([[1000.0, 800.0], [300.0, 900.0]])
    assert (line[:2] @ road.T + line[2] > 0).all()
    moved = warp_points(h, road)
    assert (moved[:, 1] > road[:, 1]).all()
    assert (np.linalg.norm(moved - foe, axis=1) > np.linalg.norm(road - foe, axis=1)).all()


def test_planar_vehicle_motion_known_arcs():
    # a quarter circle of radius 10 m: ends 10 m ahead and 10 m to the left, heading 90 deg left
    pose = rh.planar_vehicle_motion(speed=5.0, yaw_rate=0.5, dt=math.pi)
    np.testing.assert_allclose(pose[:3, 3], [10, 10, 0], atol=1e-12)
    np.testing.assert_allclose(pose[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    # straight and a tiny yaw rate agree (no jump at the straight-line special case)
    np.testing.assert_allclose(rh.planar_vehicle_motion(10, 1e-7, 0.1),
                               rh.planar_vehicle_motion(10, 0.0, 0.1), atol=1e-7)


def test_turning_left_moves_the_image_right():
    k = rh.intrinsics(CAMERA)
    n, d = rh.road_plane(CAMERA)
    t_10 = rh.camera_motion_from_odometry(0.0, 0.2, 0.1, CAMERA)  # turning on the spot
    h = rh.road_homography_from_motion(k, k, t_10, n, d)
    centre = np.array([[1024.0, 800.0]])
    assert warp_points(h, centre)[0, 0] > centre[0, 0] + 30  # the scene slides right


def test_motion_directions():
    rng = np.random.default_rng(3)
    t_10 = rh._rigid(rh.rotation_ypr(*rng.normal(size=3) * 0.1), rng.normal(size=3))
    np.testing.assert_allclose(rh.camera_motion_from_matrix(t_10), t_10)
    np.testing.assert_allclose(rh.camera_motion_from_matrix(np.linalg.inv(t_10)[:3],
                                                            maps="points_1_to_0"), t_10, atol=1e-12)
    # camera-to-world poses: P1 = P0 @ inv(T_10); world-to-camera: Q1 = T_10 @ Q0
    p0 = rh._rigid(rh.rotation_ypr(0.3, -0.1, 0.05), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(rh.motion_between_poses(p0, p0 @ np.linalg.inv(t_10)), t_10,
                               atol=1e-12)
    np.testing.assert_allclose(rh.motion_between_poses(p0[:3], (t_10 @ p0)[:3],
                                                       poses_are="world_to_camera"), t_10,
                               atol=1e-12)
    with pytest.raises(ValueError, match="maps must be"):
        rh.camera_motion_from_matrix(t_10, maps="forward")
    with pytest.raises(ValueError, match="poses_are"):
        rh.motion_between_poses(p0, p0, poses_are="camera")


def test_intrinsics_follow_a_resize():
    k = rh.intrinsics(CAMERA)
    assert k[0, 0] == 2262.52 and k[1, 2] == 513.137
    np.testing.assert_allclose(rh.intrinsics(CAMERA["intrinsic"]), k)
    k_small = rh.intrinsics(CAMERA, 0.25)
    points = np.array([[1.0, 0.5, 10.0], [-3.0, 1.2, 25.0]])
    np.testing.assert_allclose(project(k_small, points),
                               warp_points(scaling_matrix(0.25), project(k, points)), atol=1e-9)
    # the Cityscapes helper on resized images = the full-size H conjugated by the resize
    vehicle = {"speed": 9.0, "yawRate": -0.05}
    h_full = rh.cityscapes_road_homography(CAMERA, vehicle, 1 / 17)
    h_small = rh.cityscapes_road_homography(CAMERA, vehicle, 1 / 17, 0.25)
    s = scaling_matrix(0.25)
    np.testing.assert_allclose(h_small, s @ h_full @ np.linalg.inv(s) / (s @ h_full @
                               np.linalg.inv(s))[2, 2], atol=1e-9)


def test_road_homography_rejects_a_camera_below_the_plane():
    with pytest.raises(ValueError, match="d must be > 0"):
        rh.road_homography(np.eye(3), np.eye(3), np.eye(3), np.zeros(3), [0, 1, 0], 0.0)


def test_compose_with_synthetic():
    k = rh.intrinsics(CAMERA, 0.125)
    n, d = rh.road_plane(CAMERA)
    h_road = rh.road_homography_from_motion(
        k, k, rh.camera_motion_from_odometry(10.0, 0.1, 1 / 17, CAMERA), n, d)
    total, h_syn = rh.compose_with_synthetic(h_road, np.random.default_rng(5), shape=(128, 256))
    np.testing.assert_allclose(total, h_syn @ h_road / (h_syn @ h_road)[2, 2])
    again, _ = rh.compose_with_synthetic(h_road, np.random.default_rng(5), shape=(128, 256))
    np.testing.assert_array_equal(total, again)
    assert not np.allclose(h_syn, np.eye(3))
    # mild: image corners of frame 1 move by at most ~15 % of the image size
    corners = np.array([[0, 0], [255, 0], [255, 127], [0, 127]], float)
    assert np.abs(warp_points(h_syn, corners) - corners).max() < 0.15 * 256
    # a zero-range config gives back the road homography
    still, _ = rh.compose_with_synthetic(h_road, np.random.default_rng(5), {
        "perspective": 0.0, "scale": [1.0, 1.0], "rotation_deg": 0.0, "translation": 0.0,
        "patch_ratio": 1.0}, shape=(128, 256))
    np.testing.assert_allclose(still, h_road, atol=1e-9)
    with pytest.raises(ConfigError, match="rotation"):
        rh.compose_with_synthetic(h_road, np.random.default_rng(5), {"rotation": 5},
                                  shape=(128, 256))


def load_check_tool():
    spec = importlib.util.spec_from_file_location("check_road_homography",
                                                  REPO / "tools" / "check_road_homography.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not KITTI.is_dir(), reason="../shared/data/kitti_raw_0001 not present")
def test_kitti_road_homography_matches_lidar_and_tracking():
    tool = load_check_tool()
    rows = tool.check_kitti(KITTI, pairs=[(0, 1), (40, 2)])
    for row in rows:
        # H vs the lidar road points moved with the poses, and vs residual LK tracks
        assert row["road_points"] > 1000 and row["H_n"] > 30, row
        assert row["lidar_median"] < 1.0, row
        assert row["H_median"] < 2.0, row
        # the other reading of the poses, and no warp at all, must fit clearly worse
        assert row["H_inverse_poses_median"] > 2 * row["H_median"], row
        assert row["identity_median"] > 2 * row["H_median"], row
        assert row["H_photo"] < row["identity_photo"], row
