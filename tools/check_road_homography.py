#!/usr/bin/env python3
"""Measure how well the road-plane homography (superseg_ros.training.road_homography) predicts
the motion of road pixels in real driving sequences. Prints pixel errors; nothing is asserted
here (test/test_road_homography.py runs the KITTI part with a loose bound).

    .venv/bin/python tools/check_road_homography.py [--data ../shared/data] [--only kitti|cityscapes]

(a) KITTI raw 2011_09_26_drive_0001 (kitti_raw_0001/): K from cam.txt, motion from poses.txt,
    road plane fitted by RANSAC to the lidar points of the lower 40 % of the image; "road" =
    lidar points within 5 cm of that plane (asphalt, kerb and the rail bed on the right). Per
    pair (i, j):
    - lidar: road lidar points warped by H vs the same 3-D points moved with the poses and
      projected into frame j. Both use the same motion, so this measures how planar the road is
      and that H is built consistently with the 3-D geometry.
    - residual track (H_*): Shi-Tomasi corners of the road in frame i; frame i is warped by H
      and every corner is tracked by pyramidal Lucas-Kanade (forward-backward checked) from
      H(corner) in the warped image into frame j; the distance it moves is H's error. This is
      the image evidence. It is run for the poses read as camera-to-world (H), for a plane 10 %
      farther (H_farther: shows the measure is sensitive), for the poses read as
      world-to-camera (H_inverse_poses) and for no warp (identity). raw_track = the same
      corners tracked between the unwarped frames, for reference: LK loses fast forward motion
      on low-texture asphalt, which is why the residual is the measure.
    - plane: the plane fitted in frame j vs the plane of frame i moved with the poses.
    - photo: mean absolute grey-level difference over the road, frame i warped by H vs frame j.
(b) Cityscapes dusseldorf_000049 frames 24..29 (cityscapes_dusseldorf_000049/): K from flx and
    principle_point of egomotion.json; this folder has no camera JSON, so the road plane comes
    from the Cityscapes *reference* extrinsics quoted in ../shared/data/README.md (aachen camera:
    pitch 0.038, yaw -0.0195, roll 0, x 1.7, y 0.1, z 1.22 m), not from this car's own
    calibration. Motion from egomotion_i-j, read both ways: as mapping camera-i point
    coordinates to camera j (H) and inverted (H_inverse). The road area is the road-plane patch
    8..30 m ahead of the camera, from 1 m right to 5 m left of it, projected into the image
    (keeps the ego car's hood and the cars parked on the right out). Residual-track and
    photometric errors as for KITTI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from superseg_ros.homography import warp_image, warp_points  # noqa: E402
from superseg_ros.training import road_homography as rh  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
KITTI_PAIRS = [(0, 1), (0, 2), (20, 1), (40, 1), (40, 2), (60, 1), (80, 3), (100, 2)]
CITYSCAPES_PAIRS = [(24, 25), (25, 26), (26, 27), (27, 28), (28, 29)]
# Cityscapes reference calibration (../shared/data/README.md); only the extrinsics are used.
CITYSCAPES_REFERENCE_EXTRINSIC = {"baseline": 0.209313, "pitch": 0.038, "roll": 0.0,
                                  "yaw": -0.0195, "x": 1.7, "y": 0.1, "z": 1.22}
PLANE_INLIER_M = 0.05     # a lidar point within 5 cm of the plane is a road point
FB_MAX_PX = 0.5           # forward-backward LK error above which a track is dropped


# --- shared helpers -------------------------------------------------------------------------------


def stats(errors: np.ndarray) -> dict:
    errors = np.asarray(errors, np.float64)
    if errors.size == 0:
        return {"median": float("nan"), "p90": float("nan"), "n": 0}
    return {"median": float(np.median(errors)), "p90": float(np.percentile(errors, 90)),
            "n": int(errors.size)}


def gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return image


def road_corners(gray0: np.ndarray, mask0: np.ndarray, max_corners: int = 800) -> np.ndarray:
    """(N, 2) Shi-Tomasi corners of frame 0 inside the road mask (quality 1 % of the best, so
    that edges such as lane markings and rails, which LK cannot localise along, are left out)."""
    corners = cv2.goodFeaturesToTrack(gray0, max_corners, 0.01, 5, mask=mask0.astype(np.uint8))
    return np.zeros((0, 2)) if corners is None else corners[:, 0].astype(np.float64)


def lk_track(gray0: np.ndarray, gray1: np.ndarray, p0: np.ndarray, window: int):
    """(p1, good): pyramidal Lucas-Kanade positions in frame 1 of the points p0 of frame 0, good
    = tracked both ways and back within FB_MAX_PX of the start."""
    lk = {"winSize": (window, window), "maxLevel": 3,
          "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 0.01)}
    start = p0.astype(np.float32)[:, None]
    p1, ok1, _ = cv2.calcOpticalFlowPyrLK(gray0, gray1, start, None, **lk)
    back, ok2, _ = cv2.calcOpticalFlowPyrLK(gray1, gray0, p1, None, **lk)
    good = (ok1[:, 0] == 1) & (ok2[:, 0] == 1) \
        & (np.linalg.norm(back - start, axis=2)[:, 0] < FB_MAX_PX)
    return p1[:, 0].astype(np.float64), good


def residual_track(gray0: np.ndarray, gray1: np.ndarray, h: np.ndarray, p0: np.ndarray,
                   window: int) -> dict:
    """Error of H at the corners p0: warp frame 0 by H, then track each H(p0) from that warped
    image into frame 1; the distance LK moves it is what H got wrong.

    Warping first leaves LK only the small residual motion, which it measures well; tracking
    the raw frames fails on fast forward motion (tens of pixels on low-texture asphalt). That
    this does not simply return ~0 for any H is shown by the sensitivity columns (plane 10 %
    farther, inverted motion, identity).
    """
    warped = warp_image(gray0, h)
    predicted = warp_points(h, p0)
    inside = np.isfinite(predicted).all(1) & (predicted >= 0).all(1) \
        & (predicted[:, 0] <= gray1.shape[1] - 1) & (predicted[:, 1] <= gray1.shape[0] - 1)
    p1, good = lk_track(warped, gray1, predicted[inside], window)
    return stats(np.linalg.norm(p1[good] - predicted[inside][good], axis=1))


def raw_track(gray0: np.ndarray, gray1: np.ndarray, h: np.ndarray, p0: np.ndarray,
              window: int) -> dict:
    """|H(p0) - LK track of p0 from frame 0 to frame 1| (no warping; for reference)."""
    p1, good = lk_track(gray0, gray1, p0, window)
    return stats(np.linalg.norm(warp_points(h, p0[good]) - p1[good], axis=1))


def photometric(gray0: np.ndarray, gray1: np.ndarray, h: np.ndarray, mask0: np.ndarray) -> float:
    """Mean |frame1 - frame0 warped by h| over the road area as seen in frame 1."""
    warped = warp_image(gray0.astype(np.float32), h)
    mask1 = warp_image(mask0.astype(np.uint8), h, interpolation=cv2.INTER_NEAREST,
                       border=cv2.BORDER_CONSTANT) > 0
    return float(np.abs(warped - gray1.astype(np.float32))[mask1].mean())


def homography_errors(gray0, gray1, candidates: dict, p0, mask0, window: int) -> dict:
    """Residual-track stats and photometric error of each candidate H_01 (name -> H)."""
    row = {}
    for name, h in candidates.items():
        tracked = residual_track(gray0, gray1, h, p0, window)
        row[f"{name}_median"], row[f"{name}_p90"], row[f"{name}_n"] = \
            tracked["median"], tracked["p90"], tracked["n"]
        row[f"{name}_photo"] = photometric(gray0, gray1, h, mask0)
    return row


# --- (a) KITTI ----------------------------------------------------------------------------------


def load_kitti(folder: Path):
    k = np.loadtxt(folder / "cam.txt").reshape(3, 3)
    poses = np.loadtxt(folder / "poses.txt").reshape(-1, 3, 4)
    images = sorted(folder.glob("*.jpg"))
    if len(images) != len(poses):
        raise SystemExit(f"{folder}: {len(images)} images but {len(poses)} poses")
    return k, poses, images


def backproject(depth: np.ndarray, k: np.ndarray):
    """(uv (N, 2), X (N, 3)) for the pixels with depth > 0 (depth = z in camera coordinates)."""
    v, u = np.nonzero(depth > 0)
    uv = np.stack([u, v], 1).astype(np.float64)
    rays = np.c_[uv, np.ones(len(uv))] @ np.linalg.inv(k).T
    return uv, rays * depth[v, u, None].astype(np.float64)


def fit_plane_ransac(points: np.ndarray, rng: np.random.Generator, threshold: float = 0.05,
                     iterations: int = 500):
    """(n, d) with n^T X = d, n pointing from the camera to the plane (d > 0): RANSAC on 3 points,
    then a least-squares refit (smallest singular vector) on the inliers."""
    best = np.zeros(len(points), bool)
    for _ in range(iterations):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-9:
            continue
        n /= np.linalg.norm(n)
        inliers = np.abs(points @ n - n @ a) < threshold
        if inliers.sum() > best.sum():
            best = inliers
    centre = points[best].mean(0)
    n = np.linalg.svd(points[best] - centre)[2][-1]
    d = float(n @ centre)
    return (n, d) if d > 0 else (-n, -d)


def kitti_road(depth: np.ndarray, k: np.ndarray, rng: np.random.Generator):
    """Ground plane (n, d) from the lidar points of the lower 40 % of the image, the road points
    (uv, X) within PLANE_INLIER_M of it, and a road mask (those pixels closed into an area, then
    eroded so that tracking windows stay on the road)."""
    uv, pts = backproject(depth, k)
    lower = uv[:, 1] > 0.6 * depth.shape[0]
    n, d = fit_plane_ransac(pts[lower], rng, PLANE_INLIER_M)
    on_road = np.abs(pts @ n - d) < PLANE_INLIER_M
    mask = np.zeros(depth.shape, np.uint8)
    mask[uv[on_road, 1].astype(int), uv[on_road, 0].astype(int)] = 1
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    return n, d, uv[on_road], pts[on_road], cv2.erode(mask, np.ones((5, 5), np.uint8))


def lidar_error(h: np.ndarray, k: np.ndarray, t_10: np.ndarray, uv: np.ndarray, pts: np.ndarray,
                shape) -> dict:
    """|H(uv) - projection of the 3-D road point moved by T_10| over points that stay in view."""
    moved = pts @ t_10[:3, :3].T + t_10[:3, 3]
    uvw = moved @ k.T
    with np.errstate(divide="ignore", invalid="ignore"):
        reproj = uvw[:, :2] / uvw[:, 2:]
    inside = (moved[:, 2] > 0) & (reproj >= -0.5).all(1) & (reproj[:, 0] < shape[1] - 0.5) \
        & (reproj[:, 1] < shape[0] - 0.5)
    return stats(np.linalg.norm(warp_points(h, uv[inside]) - reproj[inside], axis=1))


def check_kitti(folder: Path, pairs=KITTI_PAIRS, seed: int = 0) -> list[dict]:
    """One row per pair (i, j): see the module docstring. Candidates: H (poses camera-to-world),
    H_farther (same with the plane 10 % farther: sensitivity), H_inverse_poses (poses read as
    world-to-camera), identity."""
    k, poses, images = load_kitti(folder)
    rng = np.random.default_rng(seed)
    rows = []
    for i, step in pairs:
        j = i + step
        depth = np.load(images[i].with_suffix(".npy"))
        n, d, uv, pts, mask = kitti_road(depth, k, rng)
        g0, g1 = gray(images[i]), gray(images[j])
        t_10 = rh.motion_between_poses(poses[i], poses[j], "camera_to_world")
        t_inv = rh.motion_between_poses(poses[i], poses[j], "world_to_camera")
        h = rh.road_homography_from_motion(k, k, t_10, n, d)
        candidates = {"H": h, "H_farther": rh.road_homography_from_motion(k, k, t_10, n, 1.1 * d),
                      "H_inverse_poses": rh.road_homography_from_motion(k, k, t_inv, n, d),
                      "identity": np.eye(3)}
        corners = road_corners(g0, mask)
        lidar = lidar_error(h, k, t_10, uv, pts, depth.shape)
        n1, d1, *_ = kitti_road(np.load(images[j].with_suffix(".npy")), k, rng)
        n_moved, d_moved = rh.plane_to_camera(n, d, t_10)
        rows.append({
            "pair": f"{i}->{j}", "road_points": len(uv), "plane_d": d,
            "lidar_median": lidar["median"], "lidar_p90": lidar["p90"],
            "lidar_median_inverse_poses": lidar_error(
                candidates["H_inverse_poses"], k, t_inv, uv, pts, depth.shape)["median"],
            "plane_angle_deg": float(np.degrees(np.arccos(min(1.0, abs(n1 @ n_moved))))),
            "plane_height_diff_m": abs(d1 - d_moved),
            "raw_track_median": raw_track(g0, g1, h, corners, 15)["median"],
            **homography_errors(g0, g1, candidates, corners, mask, 15),
        })
    return rows


# --- (b) Cityscapes ----------------------------------------------------------------------------


def cityscapes_road_polygon(k: np.ndarray, extrinsic: dict) -> np.ndarray:
    """(4, 2) pixels of the road patch 8..30 m ahead of the camera, 1 m right .. 5 m left."""
    t_cv = rh.camera_from_vehicle(extrinsic)
    x0 = extrinsic["x"]
    corners_v = np.array([[x0 + 8, 5.0, 0], [x0 + 30, 5.0, 0], [x0 + 30, -1.0, 0],
                          [x0 + 8, -1.0, 0]])
    cam = corners_v @ t_cv[:3, :3].T + t_cv[:3, 3]
    uvw = cam @ k.T
    return uvw[:, :2] / uvw[:, 2:]


def check_cityscapes(folder: Path, pairs=CITYSCAPES_PAIRS) -> list[dict]:
    """One row per pair (i, j): candidates H (egomotion_i-j maps camera-i points to camera j),
    H_inverse (it maps camera j to camera i), H_farther (plane 10 % farther), identity."""
    meta = json.loads((folder / "egomotion.json").read_text())
    f, (u0, v0) = float(meta["flx"]), meta["principle_point"]
    k = np.array([[f, 0, u0], [0, f, v0], [0, 0, 1.0]])
    n, d = rh.road_plane(CITYSCAPES_REFERENCE_EXTRINSIC)
    polygon = cityscapes_road_polygon(k, CITYSCAPES_REFERENCE_EXTRINSIC)
    rows = []
    for i, j in pairs:
        g0 = gray(folder / f"dusseldorf_000049_{i:06d}_leftImg8bit.png")
        g1 = gray(folder / f"dusseldorf_000049_{j:06d}_leftImg8bit.png")
        mask = np.zeros(g0.shape, np.uint8)
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
        matrix = np.asarray(meta[f"egomotion_{i}-{j}"], np.float64)
        t_10 = rh.camera_motion_from_matrix(matrix, "points_0_to_1")
        t_inv = rh.camera_motion_from_matrix(matrix, "points_1_to_0")
        h = rh.road_homography_from_motion(k, k, t_10, n, d)
        candidates = {"H": h, "H_farther": rh.road_homography_from_motion(k, k, t_10, n, 1.1 * d),
                      "H_inverse": rh.road_homography_from_motion(k, k, t_inv, n, d),
                      "identity": np.eye(3)}
        corners = road_corners(g0, mask)
        rows.append({"pair": f"{i}->{j}", "metres": float(np.linalg.norm(matrix[:3, 3])),
                     "corners": len(corners),
                     "raw_track_median": raw_track(g0, g1, h, corners, 31)["median"],
                     **homography_errors(g0, g1, candidates, corners, mask, 31)})
    return rows


# --- report -------------------------------------------------------------------------------------


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(title)
    print("  " + " ".join(f"{c:>14}" for c in columns))
    for row in rows:
        cells = []
        for c in columns:
            value = row[c]
            cells.append(f"{str(value):>14}" if not isinstance(value, float) else f"{value:14.3f}")
        print("  " + " ".join(cells))
    print()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder holding kitti_raw_0001/ and cityscapes_dusseldorf_000049/")
    parser.add_argument("--only", choices=("kitti", "cityscapes"))
    args = parser.parse_args(argv)
    found = False
    kitti = args.data / "kitti_raw_0001"
    if args.only in (None, "kitti") and kitti.is_dir():
        found = True
        rows = check_kitti(kitti)
        print_table("KITTI raw 0001 (416x128), pixel errors of H (poses read camera-to-world): "
                    "lidar = vs pose-reprojected road lidar points; H = residual LK track", rows,
                    ["pair", "road_points", "plane_d", "lidar_median", "lidar_p90", "H_n",
                     "H_median", "H_p90", "raw_track_median"])
        print_table("KITTI sensitivity (residual-track medians, px) and the plane of frame j vs "
                    "frame i's plane moved by the poses", rows,
                    ["pair", "H_median", "H_farther_median", "H_inverse_poses_median",
                     "identity_median", "lidar_median_inverse_poses", "plane_angle_deg",
                     "plane_height_diff_m"])
        print_table("KITTI photometric: mean |grey difference| (0..255) over the road", rows,
                    ["pair", "H_photo", "H_farther_photo", "H_inverse_poses_photo",
                     "identity_photo"])
    cityscapes = args.data / "cityscapes_dusseldorf_000049"
    if args.only in (None, "cityscapes") and cityscapes.is_dir():
        found = True
        rows = check_cityscapes(cityscapes)
        print_table("Cityscapes dusseldorf_000049 (2048x1024), reference extrinsics; pixel errors "
                    "(residual LK track) of H with egomotion_i-j read as camera-i -> camera-j "
                    "points (H) and inverted (H_inverse)", rows,
                    ["pair", "metres", "H_n", "H_median", "H_p90", "H_farther_median",
                     "H_inverse_median", "identity_median", "raw_track_median"])
        print_table("Cityscapes photometric: mean |grey difference| (0..255) over the road patch",
                    rows, ["pair", "H_photo", "H_farther_photo", "H_inverse_photo",
                           "identity_photo"])
    if not found:
        print(f"error: neither kitti_raw_0001/ nor cityscapes_dusseldorf_000049/ under "
              f"{args.data}; pass --data", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
