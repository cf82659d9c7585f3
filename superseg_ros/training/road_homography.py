"""Homographies induced by the road plane between two frames of a driving sequence.

For a pair of frames of a moving camera, the road is (locally) one plane, so its pixels move by a
homography that follows from the camera's intrinsics, its pose above the road and its motion.
Training pairs built with it look like real ego-motion (forward zoom, horizon fixed) instead of
purely random warps; `compose_with_synthetic` adds a mild random homography on top.

Conventions (all functions of this module):

- Pixels as in DEVELOPERS.md / `superseg_ros.homography`: (0, 0) = centre of the top-left pixel,
  x right, y down; `H_01` maps frame-0 pixels to frame-1 pixels.
- Camera (optical) frame: x right, y down, z forward (OpenCV). Pixel ~ K X.
- Vehicle frame (Cityscapes / ISO 8855): x forward, y left, z up, origin on the ground below the
  rear axle, so the road is the plane z = 0.
- A rigid motion (R, t) maps *point coordinates* of camera 0 to camera 1: X1 = R X0 + t, stored
  as the 4x4 matrix T_10 = [[R, t], [0, 1]]. For a camera moving forward by s metres without
  rotating, static points come closer: t = (0, 0, -s).
- Road plane in camera-0 coordinates: n^T X = d for every road point X, n a unit normal pointing
  from the camera down to the road and d > 0 the camera's height above the road.

With these, a road point X0 satisfies n^T X0 / d = 1, so X1 = R X0 + t (n^T X0 / d), i.e.

    H_01 ~ K1 (R + t n^T / d) K0^-1.

(This is the textbook K1 (R - t n^T / d) K0^-1 written for the plane n^T X + d = 0, i.e. with the
normal pointing up, away from the road; the sign flips with the normal's direction.)
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ..config import merge_config
from ..homography import homography_config as checked_homography_config
from ..homography import normalize, sample_homography, scaling_matrix

# Optical axes expressed in ISO-8855-oriented camera axes (x fwd, y left, z up): x_opt = -y_iso,
# y_opt = -z_iso, z_opt = x_iso. cityscapesScripts (helpers/box3dImageTransform.py) calls this
# matrix K_multiplier.
ISO_TO_OPTICAL = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])

# A mild random homography on top of the road homography: the road motion already provides the
# large perspective change; this only adds some scale/rotation/shift diversity.
MILD_HOMOGRAPHY_CONFIG = {
    "perspective": 0.05, "scale": [0.9, 1.1], "rotation_deg": 5.0, "translation": 0.05,
    "patch_ratio": 0.9, "allow_artifacts": False,
}


# --- intrinsics -----------------------------------------------------------------------------------


def intrinsics(camera: Mapping, sx: float = 1.0, sy: float | None = None) -> np.ndarray:
    """3x3 K from a Cityscapes camera dict ({"intrinsic": {fx, fy, u0, v0}} or the inner dict).

    (sx, sy) rescale K to an image resized by those factors (sy defaults to sx), through
    `scaling_matrix`, which keeps the pixel-centre convention: K' = S @ K.
    """
    intr = camera["intrinsic"] if "intrinsic" in camera else camera
    k = np.array([[float(intr["fx"]), 0.0, float(intr["u0"])],
                  [0.0, float(intr["fy"]), float(intr["v0"])],
                  [0.0, 0.0, 1.0]])
    if sx == 1.0 and (sy is None or sy == 1.0):
        return k
    return scaling_matrix(sx, sy) @ k


# --- camera pose above the road -------------------------------------------------------------------


def rotation_ypr(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll): the orientation of the camera's ISO-oriented axes in the
    vehicle frame (columns = camera axes in vehicle coordinates).

    Positive pitch turns the camera's forward axis down towards the road, positive yaw turns it
    left. This order reproduces `sensor_T_ISO_8855` of cityscapesScripts' 3-D box example for the
    same calibration (checked in the tests).
    """
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return rz @ ry @ rx


def camera_from_vehicle(extrinsic: Mapping) -> np.ndarray:
    """4x4 T_cv mapping vehicle coordinates to camera optical coordinates, X_c = T_cv X_v.

    `extrinsic` is a Cityscapes camera JSON's "extrinsic" (or the whole camera dict): the camera
    centre (x, y, z) in the vehicle frame (m) and its yaw, pitch, roll (rad).
    """
    ext = extrinsic["extrinsic"] if "extrinsic" in extrinsic else extrinsic
    r_vc = rotation_ypr(float(ext["yaw"]), float(ext["pitch"]), float(ext["roll"]))
    centre = np.array([float(ext["x"]), float(ext["y"]), float(ext["z"])])
    rot = ISO_TO_OPTICAL @ r_vc.T
    return _rigid(rot, -rot @ centre)


def road_plane(extrinsic: Mapping) -> tuple[np.ndarray, float]:
    """(n, d): the vehicle frame's ground plane z = 0 in camera coordinates, n^T X = d.

    n is the unit normal pointing down (towards the road) and d > 0 the camera height.
    """
    t_cv = camera_from_vehicle(extrinsic)
    return plane_to_camera(np.array([0.0, 0.0, -1.0]), 0.0, t_cv)


def plane_to_camera(n_v: np.ndarray, d_v: float, t_cv: np.ndarray) -> tuple[np.ndarray, float]:
    """A plane n_v^T X = d_v given in some frame -> the same plane in the frame T_cv maps to.

    X_c = R X_v + t  =>  (R n_v)^T X_c = d_v + (R n_v)^T t.
    """
    rot, t = t_cv[:3, :3], t_cv[:3, 3]
    n_c = rot @ np.asarray(n_v, np.float64)
    d_c = float(d_v + n_c @ t)
    if d_c < 0:  # keep the convention "n points from the camera to the plane, d > 0"
        n_c, d_c = -n_c, -d_c
    return n_c, d_c


# --- ego-motion ---------------------------------------------------------------------------------


def planar_vehicle_motion(speed: float, yaw_rate: float, dt: float) -> np.ndarray:
    """4x4 pose of the vehicle frame at t0 + dt expressed in the vehicle frame at t0.

    Constant speed (m/s, along the vehicle's x) and constant yaw rate (rad/s, positive = turning
    left about z up, ISO 8855) over dt seconds: the vehicle drives along a circular arc of
    heading change w dt; straight when the yaw rate is (numerically) zero. The sign of the
    Cityscapes yawRate is taken to follow ISO 8855 as the rest of its vehicle frame does; no
    vehicle JSON was available here to confirm it from images. A negative dt gives the pose
    of an earlier frame.
    """
    theta = yaw_rate * dt
    if abs(theta) < 1e-9:
        x, y = speed * dt, 0.0
    else:  # arc of radius speed / yaw_rate
        radius = speed / yaw_rate
        x, y = radius * math.sin(theta), radius * (1.0 - math.cos(theta))
    c, s = math.cos(theta), math.sin(theta)
    return _rigid(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]), np.array([x, y, 0.0]))


def camera_motion_from_vehicle(pose_v0_v1: np.ndarray, t_cv: np.ndarray) -> np.ndarray:
    """T_10 (camera-0 point coordinates -> camera-1) from the vehicle's pose at frame 1 in the
    vehicle frame at frame 0, for a camera rigidly mounted with T_cv (same for both frames).

    X_c1 = T_cv inv(pose_v0_v1) inv(T_cv) X_c0.
    """
    return t_cv @ np.linalg.inv(pose_v0_v1) @ np.linalg.inv(t_cv)


def camera_motion_from_odometry(speed: float, yaw_rate: float, dt: float,
                                extrinsic: Mapping) -> np.ndarray:
    """T_10 for the Cityscapes camera from vehicle odometry (speed m/s, yawRate rad/s) over dt."""
    return camera_motion_from_vehicle(planar_vehicle_motion(speed, yaw_rate, dt),
                                      camera_from_vehicle(extrinsic))


def camera_motion_from_matrix(matrix: np.ndarray, maps: str = "points_0_to_1") -> np.ndarray:
    """T_10 from a given 4x4 (or 3x4) rigid motion.

    maps="points_0_to_1": the matrix already maps camera-0 point coordinates to camera 1 (this is
    what the `egomotion_i-j` matrices of the Cityscapes dusseldorf_000049 snippet do: see
    tools/check_road_homography.py); "points_1_to_0": it maps camera 1 to camera 0 (it is the
    pose of camera 1 in camera 0's frame), so it is inverted.
    """
    m = np.eye(4)
    m[:3, :] = np.asarray(matrix, np.float64)[:3, :]
    if maps == "points_0_to_1":
        return m
    if maps == "points_1_to_0":
        return np.linalg.inv(m)
    raise ValueError(f"maps must be 'points_0_to_1' or 'points_1_to_0', got {maps!r}")


def motion_between_poses(pose_0: np.ndarray, pose_1: np.ndarray,
                         poses_are: str = "camera_to_world") -> np.ndarray:
    """T_10 from two absolute camera poses (4x4 or 3x4).

    "camera_to_world": X_w = P X_c (the pose is the camera in the world, as in KITTI odometry
    poses and in ../shared/data/kitti_raw_0001/poses.txt, which tools/check_road_homography.py
    confirms from the images), so T_10 = inv(P1) P0; "world_to_camera": X_c = P X_w, so T_10 = P1 inv(P0).
    """
    p0, p1 = _as_4x4(pose_0), _as_4x4(pose_1)
    if poses_are == "camera_to_world":
        return np.linalg.inv(p1) @ p0
    if poses_are == "world_to_camera":
        return p1 @ np.linalg.inv(p0)
    raise ValueError(f"poses_are must be 'camera_to_world' or 'world_to_camera', got {poses_are!r}")


# --- the homography ------------------------------------------------------------------------------


def road_homography(k0: np.ndarray, k1: np.ndarray, rot: np.ndarray, t: np.ndarray,
                    n: np.ndarray, d: float) -> np.ndarray:
    """H_01 = K1 (R + t n^T / d) K0^-1 (normalised, H[2, 2] = 1): frame-0 pixels -> frame-1 pixels
    for points on the plane n^T X = d (camera-0 coordinates), with X1 = R X0 + t.

    See the module docstring for the sign convention. Pixels above the horizon (rays that never
    meet the road) are mapped too, but the result means nothing there.
    """
    if d <= 0:
        raise ValueError(f"the plane distance d must be > 0 (camera above the road), got {d}")
    n = np.asarray(n, np.float64).reshape(3)
    t = np.asarray(t, np.float64).reshape(3)
    h = np.asarray(k1, np.float64) @ (np.asarray(rot, np.float64) + np.outer(t, n) / d) \
        @ np.linalg.inv(np.asarray(k0, np.float64))
    return normalize(h)


def road_homography_from_motion(k0: np.ndarray, k1: np.ndarray, t_10: np.ndarray,
                                n: np.ndarray, d: float) -> np.ndarray:
    """`road_homography` with the motion given as a 4x4 T_10."""
    return road_homography(k0, k1, t_10[:3, :3], t_10[:3, 3], n, d)


def cityscapes_road_homography(camera: Mapping, vehicle: Mapping, dt: float,
                               sx: float = 1.0, sy: float | None = None) -> np.ndarray:
    """H_01 between a Cityscapes frame and the frame dt seconds later, from its camera JSON and
    the vehicle JSON (speed, yawRate) of frame 0; (sx, sy) = resize factors of both images."""
    k = intrinsics(camera, sx, sy)
    n, d = road_plane(camera)
    t_10 = camera_motion_from_odometry(float(vehicle["speed"]), float(vehicle["yawRate"]), dt,
                                       camera)
    return road_homography_from_motion(k, k, t_10, n, d)


def horizon_line(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The road's horizon as a pixel line l = K^-T n / |.|: l . (x, y, 1) = 0 on the horizon (the
    image of the directions n^T X = 0), > 0 for pixels whose ray meets the road (n^T X > 0 with
    n pointing down to the road), < 0 above the horizon."""
    line = np.linalg.inv(np.asarray(k, np.float64)).T @ np.asarray(n, np.float64)
    return line / np.linalg.norm(line[:2])


def compose_with_synthetic(h_road: np.ndarray, rng: np.random.Generator,
                           homography_config: dict | None = None, *,
                           shape) -> tuple[np.ndarray, np.ndarray]:
    """(H_total, H_syn): a random mild H_syn applied after the road homography.

    H_total = H_syn @ H_road maps frame-0 pixels to frame 1 warped by H_syn (render that view with
    `homography.warp_image(image_1, H_syn)`). `shape` = (height, width) of frame 1;
    `homography_config` overrides MILD_HOMOGRAPHY_CONFIG (keys of
    homography.DEFAULT_HOMOGRAPHY_CONFIG; unknown keys are a ConfigError).
    """
    conf = merge_config(checked_homography_config(MILD_HOMOGRAPHY_CONFIG), homography_config,
                        where="homography")
    h_syn = sample_homography(rng, int(shape[0]), int(shape[1]), **conf)
    return normalize(h_syn @ np.asarray(h_road, np.float64)), h_syn


# --- helpers -------------------------------------------------------------------------------------


def _rigid(rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, t
    return m


def _as_4x4(pose: np.ndarray) -> np.ndarray:
    pose = np.asarray(pose, np.float64)
    if pose.shape == (4, 4):
        return pose
    if pose.shape in ((3, 4), (12,)):
        return np.vstack([pose.reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])
    raise ValueError(f"a pose must be 3x4, 4x4 or 12 numbers, got shape {pose.shape}")
