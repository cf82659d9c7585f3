"""Relative camera pose from matched keypoints, on real image pairs with known camera poses.

The yardstick a VO/SLAM user runs, in SuperGlue's protocol (ScanNet/YFCC; also LoFTR and
LightGlue): each method's mutual-nearest-neighbour matches; keypoints normalised by the
intrinsics; the essential matrix by RANSAC (threshold in px, divided by the mean focal length);
of its candidates, the pose the cheirality check keeps most inliers for. The pose error is
max(rotation angle error, translation direction angle error) in degrees; the translation angle
ignores the sign, which an essential matrix does not fix. AUC of that error up to 5/10/20 deg is
SuperGlue's `pose_auc` (`metrics.error_auc`). Like the homography metrics, the RANSAC is drawn
`draws` times per pair (the matches shuffled) and the accuracies/AUCs averaged over the draws.

Per match, the epipolar error against the true geometry (symmetric, px): the mean of B's point
to A's epipolar line in B and A's point to B's line in A. Its precision at 1 and 3 px is an upper
bound on the matches' precision (a wrong match that lies along its epipolar line passes).

Poses: T_ab (4x4) maps a point in camera A's frame to camera B's, X_b = R X_a + t, so that
x_b^T [t]x R x_a = 0 for normalised image points (OpenCV's findEssentialMat/recoverPose).

Layouts (`posed_pairs` tells them apart):

    sequence   <root>/ images in name order, cam.txt (3x3 K), poses.txt (one camera-to-world
               3x4 [R|t] per image, 12 numbers a line, row-major): KITTI raw drives as prepared
               by SfMLearner. Pairs: frame i with frame i + g for every gap g.
    pair list  <root>/<name>.txt (or the file itself), lines
               `image0 image1 rot0 rot1 K0(9) K1(9) T_0to1(16)` (SuperGlue's ScanNet/YFCC
               format), image paths relative to the file; T_0to1 maps camera 0's frame to 1's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..cli.extract import IMAGE_SUFFIXES, read_rgb
from .baselines import PairExtraction
from .datasets import DatasetError, resize_to_max_side
from .metrics import descriptor_distances, error_auc, mutual_nn_matches
from .report import draw_matches, pyplot, write_overlay

POSE_DEG = (5.0, 10.0, 20.0)       # AUC and accuracy thresholds on the pose error
EPIPOLAR_PX = (1.0, 3.0)           # a match is epipolar-correct within this distance
POSE_RANSAC_PX = 1.0               # SuperGlue's ScanNet threshold
POSE_RANSAC_CONFIDENCE = 0.99999
CURVE_DEG = tuple(float(t) for t in range(1, 21))


@dataclass
class PosedPair:
    image_a: np.ndarray   # (H, W, 3) RGB uint8
    image_b: np.ndarray   # (H', W', 3)
    K_a: np.ndarray       # (3, 3) float64 intrinsics of image_a as given (pixel-centre convention)
    K_b: np.ndarray       # (3, 3)
    T_ab: np.ndarray      # (4, 4) camera A's frame -> camera B's
    name: str


# --- reading -------------------------------------------------------------------------------------


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a text file") from exc


def _numbers(path: Path, per_row: int) -> np.ndarray:
    """(rows, per_row) float64 from a whitespace text file, or a DatasetError naming the file."""
    rows = [line.split() for line in _text_lines(path) if line.strip()]
    for number, row in enumerate(rows, 1):
        if len(row) != per_row:
            raise DatasetError(f"{path}: expected {per_row} numbers a line, line {number} has "
                               f"{len(row)}")
    try:
        values = np.array(rows, np.float64).reshape(-1, per_row)
    except ValueError as exc:
        raise DatasetError(f"{path}: not numbers ({exc})") from exc
    if not len(values) or not np.isfinite(values).all():
        raise DatasetError(f"{path}: empty or not finite")
    return values


def _intrinsics(values, where: str) -> np.ndarray:
    K = np.asarray(values, np.float64).reshape(3, 3)
    if K[0, 0] == 0 or K[1, 1] == 0 or not np.allclose(K[2], [0, 0, 1]):
        raise DatasetError(f"{where}: not intrinsics (expected [[fx, s, cx], [0, fy, cy], "
                           "[0, 0, 1]] with fx, fy non-zero)")
    return K


def _rigid(values, where: str) -> np.ndarray:
    T = np.eye(4)
    T[:3] = np.asarray(values, np.float64).reshape(-1, 4)[:3]
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise DatasetError(f"{where}: its rotation is not a rotation matrix")
    return T


def _sequence_items(root: Path, gaps) -> list[tuple]:
    images = sorted(p for p in root.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    K = _intrinsics(_numbers(root / "cam.txt", 3), str(root / "cam.txt"))
    poses = _numbers(root / "poses.txt", 12)
    if len(poses) != len(images):
        raise DatasetError(f"{root / 'poses.txt'}: {len(poses)} poses for {len(images)} images "
                           "(one camera-to-world pose per image, in name order)")
    c2w = [_rigid(row, f"{root / 'poses.txt'} line {i + 1}") for i, row in enumerate(poses)]
    return [(images[i], images[i + g], K, K, np.linalg.inv(c2w[i + g]) @ c2w[i],
             f"{images[i].stem}-{images[i + g].stem}")
            for g in gaps for i in range(len(images) - g)]


def _pair_list_items(list_file: Path) -> list[tuple]:
    items = []
    for number, line in enumerate(_text_lines(list_file), 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{list_file} line {number}"
        if len(tokens) != 38:
            raise DatasetError(f"{where}: expected 38 fields (image0 image1 rot0 rot1 K0(9) "
                               f"K1(9) T_0to1(16)), found {len(tokens)}")
        try:
            values = np.array([float(t) for t in tokens[2:]])
        except ValueError as exc:
            raise DatasetError(f"{where}: {exc}") from exc
        if values[0] or values[1]:
            raise DatasetError(f"{where}: rotated images (rot0/rot1 != 0) are not supported")
        paths = [list_file.parent / name for name in tokens[:2]]
        for path in paths:
            if not path.is_file():
                raise DatasetError(f"{where}: no image {path}")
        items.append((paths[0], paths[1], _intrinsics(values[2:11], where),
                      _intrinsics(values[11:20], where), _rigid(values[20:], where),
                      f"{paths[0].stem}-{paths[1].stem}"))
    return items


def heldout_images(split_file: Path) -> set[Path]:
    """The source images a `tools/prepare_images.py` split.json holds out from training."""
    try:
        split = json.loads(Path(split_file).read_text())
        return {Path(item["source"]).resolve() for item in split["heldout"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{split_file}: not a split.json of tools/prepare_images.py "
                           f"({exc})") from exc


class PosedPairs:
    """Pairs of a sequence or pair-list folder (layouts: module doc), read lazily."""

    def __init__(self, root: str | Path, gaps=(1,), heldout: str | Path | None = None,
                 max_side: int | None = None):
        """`gaps`: frame gaps of a sequence; `heldout`: a split.json, only pairs whose two images
        it holds out are kept; `max_side`: downscale so the longer side is at most this."""
        self.root, self.max_side = Path(root), max_side
        gaps = tuple(int(g) for g in gaps)
        if not gaps or min(gaps) < 1:
            raise DatasetError(f"frame gaps must be >= 1, got {list(gaps)}")
        if self.root.is_dir() and (self.root / "poses.txt").is_file():
            layout, self.items = "sequence", _sequence_items(self.root, gaps)
        else:
            lists = [self.root] if self.root.is_file() else sorted(self.root.glob("*.txt")) \
                if self.root.is_dir() else []
            if len(lists) != 1:
                raise DatasetError(
                    f"{self.root}: no posed pairs found (expected a sequence folder with "
                    "cam.txt and poses.txt, or one pair list `image0 image1 rot0 rot1 K0 K1 "
                    "T_0to1` per line; with several .txt files, pass the list file itself)")
            layout, self.items = "pair list", _pair_list_items(lists[0])
        listed = len(self.items)
        if heldout is not None:
            keep = heldout_images(Path(heldout))
            self.items = [it for it in self.items
                          if it[0].resolve() in keep and it[1].resolve() in keep]
        if not self.items:
            raise DatasetError(f"{self.root}: no pairs" + (
                f" with both images held out in {heldout} ({listed} pairs listed)"
                if heldout is not None and listed else ""))
        self.description = {"kind": "poses", "root": str(self.root), "layout": layout,
                            "gaps": list(gaps) if layout == "sequence" else None,
                            "heldout": None if heldout is None else str(heldout),
                            "pairs": len(self.items), "pairs_listed": listed,
                            "max_side": max_side}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PosedPair:
        """Pair `index`, images read now (a ValueError names an unreadable file); intrinsics
        follow a resize (K' = S K)."""
        path_a, path_b, K_a, K_b, T_ab, name = self.items[index]
        image_a, s_a = resize_to_max_side(read_rgb(path_a), self.max_side)
        image_b, s_b = resize_to_max_side(read_rgb(path_b), self.max_side)
        return PosedPair(image_a, image_b, s_a @ K_a, s_b @ K_b, T_ab, name)


def posed_pairs(root, gaps=(1,), heldout=None, max_side=None) -> PosedPairs:
    return PosedPairs(root, gaps, heldout, max_side)


# --- geometry ------------------------------------------------------------------------------------


def skew(t) -> np.ndarray:
    x, y, z = np.asarray(t, np.float64)
    return np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])


def fundamental_matrix(K_a, K_b, T_ab) -> np.ndarray:
    """F with x_b^T F x_a = 0 for pixel points: K_b^-T [t]x R K_a^-1."""
    E = skew(T_ab[:3, 3]) @ T_ab[:3, :3]
    return np.linalg.inv(K_b).T @ E @ np.linalg.inv(K_a)


def epipolar_errors(kp_a, kp_b, matches, F) -> np.ndarray:
    """(K,) symmetric epipolar distance (px) of each match (i, j): the mean of b_j's distance to
    the line F a_i in B and a_i's distance to the line F^T b_j in A."""
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    a = np.c_[np.asarray(kp_a, np.float64)[matches[:, 0]], np.ones(len(matches))]
    b = np.c_[np.asarray(kp_b, np.float64)[matches[:, 1]], np.ones(len(matches))]
    line_b, line_a = a @ F.T, b @ F                 # lines in B and in A
    residual = np.abs((b * line_b).sum(1))
    d_b = residual / np.maximum(np.hypot(line_b[:, 0], line_b[:, 1]), 1e-12)
    d_a = residual / np.maximum(np.hypot(line_a[:, 0], line_a[:, 1]), 1e-12)
    return (d_a + d_b) / 2


def normalise(points, K) -> np.ndarray:
    """(N, 2) pixels -> (N, 2) normalised image coordinates K^-1 [x, y, 1]."""
    h = np.c_[np.asarray(points, np.float64), np.ones(len(points))] @ np.linalg.inv(K).T
    return h[:, :2] / h[:, 2:]


def estimate_relative_pose(kp_a, kp_b, matches, K_a, K_b, threshold_px: float = POSE_RANSAC_PX,
                           draw_seed=None):
    """(R, t) of B relative to A (t a unit vector), or None with fewer than 5 matches or no
    estimate. OpenCV's RANSAC draws from a fixed-seed generator of its own, so, as for the
    homography (metrics.estimate_homography), another draw is the matches shuffled by
    numpy's default_rng(draw_seed); None keeps their order."""
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    if len(matches) < 5:
        return None
    if draw_seed is not None:
        matches = matches[np.random.default_rng(draw_seed).permutation(len(matches))]
    a = normalise(np.asarray(kp_a, np.float64)[matches[:, 0]], K_a)
    b = normalise(np.asarray(kp_b, np.float64)[matches[:, 1]], K_b)
    focal = np.mean(np.abs([K_a[0, 0], K_a[1, 1], K_b[0, 0], K_b[1, 1]]))
    try:
        E, mask = cv2.findEssentialMat(a, b, np.eye(3), cv2.RANSAC, POSE_RANSAC_CONFIDENCE,
                                       threshold_px / focal)
        if E is None or mask is None:
            return None
        best = None
        for candidate in np.split(E, len(E) // 3):  # up to 3 solutions stacked (5-point)
            inliers, R, t, _ = cv2.recoverPose(candidate, a, b, np.eye(3), 1e9, mask=mask.copy())
            if best is None or inliers > best[0]:
                best = (inliers, R, t.ravel())
    except cv2.error:
        return None
    return best[1], best[2] / max(np.linalg.norm(best[2]), 1e-12)


def angle_deg(cosine) -> float:
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def pose_error(T_ab, estimate) -> tuple[float, float]:
    """(rotation error, translation direction error) in degrees; (inf, inf) without an estimate.
    The direction error ignores t's sign; without true translation it is 0 (undefined)."""
    if estimate is None:
        return float("inf"), float("inf")
    R, t = estimate
    R_true, t_true = T_ab[:3, :3], T_ab[:3, 3]
    rotation = angle_deg((np.trace(R.T @ R_true) - 1) / 2)
    norm = np.linalg.norm(t_true) * np.linalg.norm(t)
    translation = angle_deg(abs(t @ t_true) / norm) if norm > 1e-12 else 0.0
    return rotation, translation


def evaluate_posed_pair(feat_a: dict, feat_b: dict, pair: PosedPair, binary: bool = False,
                        seed: int = 0, draws: int = 20) -> dict:
    """Every pose metric of one pair: scalars plus `pose_errors` (draws,) (the max of the two
    angles; draw 0 in mutual-NN order, draw k on the matches shuffled by default_rng([seed,
    k])), `matches_ij` and `epipolar_errors` for overlays."""
    kp_a = np.asarray(feat_a["keypoints"], np.float64).reshape(-1, 2)
    kp_b = np.asarray(feat_b["keypoints"], np.float64).reshape(-1, 2)
    matches = mutual_nn_matches(descriptor_distances(feat_a["descriptors"],
                                                     feat_b["descriptors"], binary))
    epi = epipolar_errors(kp_a, kp_b, matches, fundamental_matrix(pair.K_a, pair.K_b, pair.T_ab))
    errors = np.array([pose_error(pair.T_ab, estimate_relative_pose(
        kp_a, kp_b, matches, pair.K_a, pair.K_b, POSE_RANSAC_PX, None if k == 0 else [seed, k]))
        for k in range(draws)], np.float64)                          # (draws, 2)
    result = {"keypoints": (len(kp_a) + len(kp_b)) / 2, "matches": len(matches),
              "rotation_error": float(np.median(errors[:, 0])),
              "translation_error": float(np.median(errors[:, 1])),
              "pose_errors": errors.max(1), "pose_error": float(np.median(errors.max(1))),
              "matches_ij": matches, "epipolar_errors": epi}
    for eps in EPIPOLAR_PX:
        result[f"epipolar_precision@{eps:g}px"] = float((epi <= eps).mean()) if len(epi) \
            else 0.0
    return result


def summarize_poses(results: list[dict]) -> dict:
    """One row of metrics: means over pairs, pose accuracy/AUC per RANSAC draw averaged over the
    draws (a failed estimate counts as wrong), `pose_failures` failed pairs per draw."""
    draws = np.array([r["pose_errors"] for r in results], np.float64).T if results \
        else np.zeros((1, 0))                                        # (draws, pairs)

    def mean(key):
        values = [r[key] for r in results]
        return float(np.mean(values)) if values else float("nan")

    def accuracy(eps):
        return float(np.mean([(e <= eps).mean() for e in draws])) if draws.size else float("nan")

    summary = {"pairs": len(results), "keypoints": mean("keypoints"), "matches": mean("matches")}
    for eps in EPIPOLAR_PX:
        summary[f"epipolar_precision@{eps:g}px"] = mean(f"epipolar_precision@{eps:g}px")
    aucs = np.mean([error_auc(e, POSE_DEG) for e in draws], 0)
    for eps, auc in zip(POSE_DEG, aucs):
        summary[f"pose_accuracy@{eps:g}deg"] = accuracy(eps)
        summary[f"pose_auc@{eps:g}deg"] = float(auc)
    summary["median_pose_error"] = float(np.median(draws)) if draws.size else float("nan")
    summary["median_rotation_error"] = float(np.median([r["rotation_error"] for r in results])) \
        if results else float("nan")
    summary["median_translation_error"] = float(np.median(
        [r["translation_error"] for r in results])) if results else float("nan")
    summary["pose_failures"] = float(np.isinf(draws).sum(1).mean())
    summary["pose_accuracy_curve"] = {f"{t:g}": accuracy(t) for t in CURVE_DEG}
    return summary


# --- a run ---------------------------------------------------------------------------------------


def run_pose_evaluation(dataset, methods, max_keypoints: int, seed: int, out_dir: Path,
                        n_overlays: int = 3, draws: int = 20, desc: str = "poses") -> dict:
    """Every method on every pair: summaries, per-pair rows, failures (unreadable images)."""
    per_pair = {m.name: [] for m in methods}
    extraction = PairExtraction(methods)
    for index, pair, features in extraction.run(dataset, max_keypoints, desc):
        for method, feat_a, feat_b in features:
            result = evaluate_posed_pair(feat_a, feat_b, pair, feat_a["binary"], seed + index,
                                         draws)
            result["name"] = pair.name
            per_pair[method.name].append(result)
            if len(per_pair[method.name]) <= n_overlays:
                eps = EPIPOLAR_PX[-1]
                title = (f"{method.name} | {pair.name} | {result['matches']} matches, "
                         f"{int((result['epipolar_errors'] <= eps).sum())} within {eps:g} px of "
                         f"their epipolar line | pose error {result['pose_error']:.2f} deg")
                canvas = draw_matches(pair.image_a, pair.image_b, feat_a["keypoints"],
                                      feat_b["keypoints"], result["matches_ij"],
                                      result["epipolar_errors"], title, eps)
                write_overlay(out_dir / "overlays" / f"{method.name}_{index:04d}.png", canvas)
    summaries = {}
    for name, results in per_pair.items():
        summaries[name] = summarize_poses(results)
        summaries[name]["ms_per_image"] = extraction.ms_per_image(name)
    hidden = {"matches_ij", "epipolar_errors"}
    rows = {name: [{k: v for k, v in r.items() if k not in hidden} for r in rs]
            for name, rs in per_pair.items()}
    return {"summaries": summaries, "pairs": rows, "failures": extraction.failures,
            "evaluated": len(dataset) - len(extraction.failures)}


# --- report --------------------------------------------------------------------------------------

COLUMNS = [
    ("keypoints", "kpts", "{:.0f}"),
    ("matches", "matches", "{:.0f}"),
    ("epipolar_precision@1px", "epi@1", "{:.3f}"),
    ("epipolar_precision@3px", "epi@3", "{:.3f}"),
    ("pose_auc@5deg", "AUC@5", "{:.3f}"),
    ("pose_auc@10deg", "AUC@10", "{:.3f}"),
    ("pose_auc@20deg", "AUC@20", "{:.3f}"),
    ("median_rotation_error", "R err", "{:.2f}"),
    ("median_translation_error", "t err", "{:.2f}"),
    ("pose_failures", "fail", "{:.1f}"),
    ("ms_per_image", "ms/img", "{:.0f}"),
]

LEGEND = ("kpts: keypoints per image; matches: mutual nearest neighbours per pair; epi@e: "
          "fraction of matches within e px of their true epipolar lines (an upper bound on "
          "precision); AUC@e: area under the pose-error curve up to e degrees, the pose error "
          "being max(rotation, translation direction) error, averaged over RANSAC draws; R err, "
          "t err: median rotation and translation direction errors (deg); fail: pairs without "
          "an estimate per draw; ms/img: extraction time")


def write_pose_plot(out_dir: Path, summaries: dict[str, dict]) -> tuple[list[Path], str | None]:
    """pose_accuracy.png: the fraction of pairs with pose error <= t; (files, note if skipped)."""
    plt, note = pyplot()
    if plt is None:
        return [], note
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, s in summaries.items():
        ax.plot(CURVE_DEG, [s["pose_accuracy_curve"][f"{t:g}"] for t in CURVE_DEG], marker="o",
                ms=3, label=name)
    ax.set(title="Relative pose", xlabel="threshold t [deg]",
           ylabel="fraction of pairs with pose error <= t", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out_dir / "pose_accuracy.png"
    fig.savefig(path)
    plt.close(fig)
    return [path], None
