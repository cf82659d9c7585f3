"""Detector and descriptor metrics on image pairs with a known homography (SuperPoint / HPatches).

Notation for one pair: keypoints a_i of image A (N of them), b_j of image B (M), H = H_ab, and
d_ij = || H(a_i) - b_j ||, the distance measured in B's pixels (SuperPoint measures everything
in the second image's frame). The *shared region* is A's keypoints whose warp H(a_i) lies inside
B and B's keypoints whose back-warp H^-1(b_j) lies inside A. A ground-truth correspondence is a
shared pair with d_ij <= 3 px (CORRECT_PX).

Every function takes plain numpy arrays: keypoints (N, 2) x, y in the pixel-centre convention
(DEVELOPERS.md), descriptors (N, D) float (compared with L2) or uint8 packed bits (Hamming),
shapes (height, width). Per-pair values are NaN where undefined (e.g. no shared keypoints);
`summarize` averages over pairs ignoring NaN, except where a failure must count against a method
(homography errors are inf, MMA of a pair without matches is 0).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..homography import points_inside, warp_points

CORRECT_PX = 3.0                       # a match/repeated point is correct within this distance
REPEATABILITY_PX = (1.0, 3.0)
HOMOGRAPHY_PX = (1.0, 3.0, 5.0)        # accuracy and AUC thresholds on the corner error
CURVE_PX = tuple(float(t) for t in range(1, 11))  # MMA and accuracy curves
RANSAC_PX = 3.0
RANSAC_DRAWS = 20                      # RANSAC runs per pair; H@e and AUC@e average over them


# --- geometry ------------------------------------------------------------------------------------


def pairwise_distances(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(N, M) Euclidean distances between point sets (N, 2) and (M, 2)."""
    p, q = np.asarray(p, np.float64).reshape(-1, 2), np.asarray(q, np.float64).reshape(-1, 2)
    return np.sqrt(((p[:, None, :] - q[None, :, :]) ** 2).sum(-1))


def shared_distances(kp_a, kp_b, H, shape_a, shape_b) -> np.ndarray:
    """(N', M') d_ij = ||H(a_i) - b_j|| over the shared region only (see module docstring)."""
    warped_a = warp_points(H, kp_a)
    keep_a = points_inside(warped_a, shape_b)
    keep_b = points_inside(warp_points(np.linalg.inv(H), kp_b), shape_a)
    return pairwise_distances(warped_a[keep_a], np.asarray(kp_b)[keep_b])


def reprojection_errors(kp_a, kp_b, matches, H) -> np.ndarray:
    """(K,) ||H(a_i) - b_j|| in B's pixels for each match (i, j) of `matches` (K, 2)."""
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    warped = warp_points(H, np.asarray(kp_a)[matches[:, 0]])
    return np.linalg.norm(warped - np.asarray(kp_b, np.float64)[matches[:, 1]], axis=1)


# --- detector ------------------------------------------------------------------------------------


def repeatability_from_distances(d: np.ndarray, eps: float) -> float:
    """SuperPoint's repeatability from a shared-region distance matrix d (N', M'):

        (#{i: min_j d_ij <= eps} + #{j: min_i d_ij <= eps}) / (N' + M')

    NaN when the shared region holds no keypoint.
    """
    n, m = d.shape
    if n + m == 0:
        return float("nan")
    if n == 0 or m == 0:
        return 0.0
    return float(((d.min(1) <= eps).sum() + (d.min(0) <= eps).sum()) / (n + m))


def repeated_distances(d: np.ndarray, eps: float = CORRECT_PX) -> np.ndarray:
    """The nearest-neighbour distances of repeated points, both directions concatenated:
    {min_j d_ij <= eps} and {min_i d_ij <= eps} (SuperPoint's localisation-error samples)."""
    if d.size == 0:
        return np.zeros(0)
    rows, cols = d.min(1), d.min(0)
    return np.concatenate([rows[rows <= eps], cols[cols <= eps]])


def repeatability(kp_a, kp_b, H, shape_a, shape_b, eps: float = 3.0) -> float:
    """Fraction of shared-region keypoints whose nearest neighbour in the other image is within
    `eps` px after warping (see `repeatability_from_distances`)."""
    return repeatability_from_distances(shared_distances(kp_a, kp_b, H, shape_a, shape_b), eps)


def localization_error(kp_a, kp_b, H, shape_a, shape_b, eps: float = CORRECT_PX) -> float:
    """Mean distance of the repeated (nearest neighbour within `eps`) points, both directions:

        mean( {min_j d_ij : min_j d_ij <= eps} U {min_i d_ij : min_i d_ij <= eps} )

    NaN when nothing is repeated."""
    samples = repeated_distances(shared_distances(kp_a, kp_b, H, shape_a, shape_b), eps)
    return float(samples.mean()) if samples.size else float("nan")


# --- descriptor matching -------------------------------------------------------------------------


def descriptor_distances(desc_a, desc_b, binary: bool = False) -> np.ndarray:
    """(N, M) L2 distances between float descriptors, or Hamming distances between packed-bit
    uint8 descriptors (ORB) when `binary`; computed as matrix products (vectorised)."""
    if binary:
        a = np.unpackbits(np.asarray(desc_a, np.uint8), axis=1).astype(np.float32)
        b = np.unpackbits(np.asarray(desc_b, np.uint8), axis=1).astype(np.float32)
        # |a xor b| = |a| + |b| - 2 a.b for 0/1 vectors
        return a.sum(1)[:, None] + b.sum(1)[None, :] - 2 * a @ b.T
    a, b = np.asarray(desc_a, np.float32), np.asarray(desc_b, np.float32)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0))


def mutual_nn_matches(dist: np.ndarray) -> np.ndarray:
    """(K, 2) index pairs (i, j) where j is i's nearest neighbour and i is j's (cross-check)."""
    n, m = dist.shape
    if n == 0 or m == 0:
        return np.zeros((0, 2), np.int64)
    nn_ab, nn_ba = dist.argmin(1), dist.argmin(0)
    i = np.flatnonzero(nn_ba[nn_ab] == np.arange(n))
    return np.stack([i, nn_ab[i]], 1).astype(np.int64)


def nn_average_precision(desc_dist: np.ndarray, correspondence: np.ndarray) -> float:
    """Average precision of nearest-neighbour matching, queries = rows, candidates = columns.

    Only rows with at least one ground-truth correspondence are queries (Q of them). Each query
    is matched to its descriptor nearest neighbour (over all columns); the match is correct if
    `correspondence[i, nn(i)]`. Sweeping a threshold on the NN descriptor distance orders the
    queries by that distance (k = 1..Q); with P(k) the precision of the first k matches,

        AP = (1/Q) * sum_k P(k) * correct(k)

    i.e. the area under the precision-recall curve (recall = correct / Q, non-interpolated).
    NaN when there is no query.
    """
    queries = correspondence.any(1)
    if not queries.any():
        return float("nan")
    dist = desc_dist[queries]
    nn = dist.argmin(1)
    correct = correspondence[queries][np.arange(len(nn)), nn]
    order = np.argsort(dist[np.arange(len(nn)), nn], kind="stable")
    correct = correct[order]
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float((precision * correct).sum() / len(correct))


def nn_map(kp_a, kp_b, desc_a, desc_b, H, shape_a, shape_b, binary: bool = False,
           eps: float = CORRECT_PX) -> float:
    """SuperPoint's NN mAP, symmetric: mean of `nn_average_precision` for A->B and B->A.

    Ground truth: shared-region pairs with d_ij <= eps (any such B point is a correct match for
    a_i, and vice versa). Queries are only keypoints that have one, so this scores descriptors,
    not the detector's repeatability; candidates are all keypoints of the other image.
    """
    corr = _correspondences(kp_a, kp_b, H, shape_a, shape_b, eps)
    return _symmetric_ap(descriptor_distances(desc_a, desc_b, binary), corr)


def _symmetric_ap(desc_dist: np.ndarray, corr: np.ndarray) -> float:
    return _nanmean([nn_average_precision(desc_dist, corr),
                     nn_average_precision(desc_dist.T, corr.T)])


def _correspondences(kp_a, kp_b, H, shape_a, shape_b, eps) -> np.ndarray:
    """(N, M) bool: a_i and b_j both in the shared region and d_ij <= eps."""
    kp_a, kp_b = np.asarray(kp_a).reshape(-1, 2), np.asarray(kp_b).reshape(-1, 2)
    warped_a = warp_points(H, kp_a)
    ok_a = points_inside(warped_a, shape_b)
    ok_b = points_inside(warp_points(np.linalg.inv(H), kp_b), shape_a)
    return (pairwise_distances(warped_a, kp_b) <= eps) & ok_a[:, None] & ok_b[None, :]


def matching_score(kp_a, kp_b, matches, H, shape_a, shape_b, eps: float = CORRECT_PX) -> float:
    """Correct matches over keypoints in the shared region, averaged over both images:

        MS = ( C / N'_A + C / N'_B ) / 2,

    C = matches (i, j) with both points in the shared region and d_ij <= eps; N'_A, N'_B the
    shared-region keypoint counts. A term with N' = 0 is left out; NaN if both are.
    """
    corr = _correspondences(kp_a, kp_b, H, shape_a, shape_b, eps)
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    correct = int(corr[matches[:, 0], matches[:, 1]].sum()) if len(matches) else 0
    n_a = points_inside(warp_points(H, kp_a), shape_b).sum()
    n_b = points_inside(warp_points(np.linalg.inv(H), kp_b), shape_a).sum()
    terms = [correct / n for n in (n_a, n_b) if n > 0]
    return float(np.mean(terms)) if terms else float("nan")


def mean_matching_accuracy(errors, thresholds=CURVE_PX) -> np.ndarray:
    """MMA(t) = #{matches with reprojection error <= t} / #matches, per threshold t (D2-Net's
    HPatches protocol, errors from `reprojection_errors`). All zeros when there is no match."""
    errors = np.asarray(errors, np.float64)
    if errors.size == 0:
        return np.zeros(len(thresholds))
    return (errors[None, :] <= np.asarray(thresholds, np.float64)[:, None]).mean(1)


# --- homography estimation -----------------------------------------------------------------------


def estimate_homography(kp_a, kp_b, matches, threshold: float = RANSAC_PX,
                        draw_seed=None) -> np.ndarray | None:
    """cv2.findHomography RANSAC (reprojection threshold in px) on the matched points; None with
    fewer than 4 matches or when RANSAC finds nothing.

    OpenCV's RANSAC draws its samples from a generator of its own with a fixed seed
    (cv2.setRNGSeed does not reach it), so for given matches the draw depends only on their
    order. `draw_seed` None keeps the given order (SuperPoint's single call); otherwise the
    matches are shuffled by numpy's default_rng(draw_seed), which is another RANSAC draw."""
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    if len(matches) < 4:
        return None
    if draw_seed is not None:
        matches = matches[np.random.default_rng(draw_seed).permutation(len(matches))]
    src = np.asarray(kp_a, np.float64)[matches[:, 0]]
    dst = np.asarray(kp_b, np.float64)[matches[:, 1]]
    H, _ = cv2.findHomography(src, dst, cv2.RANSAC, threshold)
    if H is None or not np.isfinite(H).all():
        return None
    return H


def corner_errors(kp_a, kp_b, matches, H_true, shape_a, seed: int = 0,
                  draws: int = RANSAC_DRAWS) -> np.ndarray:
    """(draws,) corner errors of `draws` RANSAC estimates of one pair: draw 0 on the matches in
    their order, draw k > 0 on them shuffled with default_rng([seed, k]). One draw is a noisy
    yardstick: on the 20 real HPatches pairs it moves H@3 by about +-0.07 (std over draws)."""
    return np.array([corner_error(estimate_homography(kp_a, kp_b, matches, RANSAC_PX,
                                                      None if k == 0 else [seed, k]),
                                  H_true, shape_a) for k in range(draws)], np.float64)


def corner_error(H_est, H_true, shape_a) -> float:
    """Mean distance between the four corner pixels of A warped by the estimated and the true H:

        e = 1/4 sum_c || H_est(c) - H_true(c) ||,  c in {(0,0), (W-1,0), (W-1,H-1), (0,H-1)}

    (SuperPoint's corner correctness). inf when there is no estimate."""
    if H_est is None:
        return float("inf")
    h, w = shape_a[:2]
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    err = np.linalg.norm(warp_points(H_est, corners) - warp_points(H_true, corners), axis=1)
    return float(err.mean()) if np.isfinite(err).all() else float("inf")


def homography_accuracy(errors, eps: float) -> float:
    """Fraction of pairs whose corner error is <= eps."""
    errors = np.asarray(errors, np.float64)
    return float((errors <= eps).mean()) if errors.size else float("nan")


def error_auc(errors, thresholds=HOMOGRAPHY_PX) -> list[float]:
    """Area under the cumulative error curve up to each threshold t, divided by t (SuperGlue's
    `pose_auc`, also LightGlue's HPatches AUC): errors sorted e_1 <= .. <= e_n, recall(e_k) = k/n,
    the curve starts at (0, 0) and is integrated with the trapezoid rule up to t, where it is
    held at the recall of the last error <= t. inf errors (failures) only lower the recall."""
    errors = np.sort(np.asarray(errors, np.float64))
    if errors.size == 0:
        return [float("nan")] * len(thresholds)
    recall = np.r_[0.0, np.arange(1, len(errors) + 1) / len(errors)]
    errors = np.r_[0.0, errors]
    aucs = []
    for t in thresholds:
        last = np.searchsorted(errors, t)  # points with error < t (plus the origin)
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        aucs.append(float(((r[1:] + r[:-1]) / 2 * np.diff(e)).sum() / t))
    return aucs


# --- one pair, all metrics -----------------------------------------------------------------------


def evaluate_pair(feat_a: dict, feat_b: dict, H, shape_a, shape_b, binary: bool = False,
                  seed: int = 0, draws: int = RANSAC_DRAWS) -> dict:
    """Every metric for one pair. `feat_*` hold keypoints (N, 2) and descriptors (N, D).

    Returns scalars (NaN where undefined) plus arrays for plots/overlays: `mma` (per CURVE_PX),
    `loc_samples` (repeated-point distances), `matches` (K, 2), `match_errors` (K,), and
    `corner_errors` (draws,) of `draws` RANSAC draws (`corner_error` is their median).
    """
    kp_a = np.asarray(feat_a["keypoints"], np.float64).reshape(-1, 2)
    kp_b = np.asarray(feat_b["keypoints"], np.float64).reshape(-1, 2)
    d = shared_distances(kp_a, kp_b, H, shape_a, shape_b)
    samples = repeated_distances(d, CORRECT_PX)
    desc = descriptor_distances(feat_a["descriptors"], feat_b["descriptors"], binary)
    matches = mutual_nn_matches(desc)
    errors = reprojection_errors(kp_a, kp_b, matches, H)
    corr = _correspondences(kp_a, kp_b, H, shape_a, shape_b, CORRECT_PX)
    h_errors = corner_errors(kp_a, kp_b, matches, H, shape_a, seed, draws)
    result = {
        "keypoints": (len(kp_a) + len(kp_b)) / 2,
        "shared_keypoints": (d.shape[0] + d.shape[1]) / 2,
        "localization_error": float(samples.mean()) if samples.size else float("nan"),
        "matches": len(matches),
        "corner_errors": h_errors, "corner_error": float(np.median(h_errors)),
        "nn_map": _symmetric_ap(desc, corr),
        "matching_score": matching_score(kp_a, kp_b, matches, H, shape_a, shape_b),
        "mma": mean_matching_accuracy(errors, CURVE_PX),
        "loc_samples": samples, "matches_ij": matches, "match_errors": errors,
    }
    for eps in REPEATABILITY_PX:
        result[f"repeatability@{eps:g}px"] = repeatability_from_distances(d, eps)
    return result


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def summarize(results: list[dict]) -> dict:
    """Average per-pair results into one row of metrics (names as in the report).

    Means over pairs ignore NaN; homography accuracy/AUC count failed estimates (inf) as wrong.
    They are computed per RANSAC draw (every pair has the same number) and averaged over the
    draws; `homography_failures` is the mean number of failed pairs per draw.
    """
    draws = np.array([r["corner_errors"] for r in results], np.float64).T if results \
        else np.zeros((1, 0))                               # (draws, pairs)
    summary = {"pairs": len(results),
               "keypoints": _nanmean([r["keypoints"] for r in results])}
    for eps in REPEATABILITY_PX:
        key = f"repeatability@{eps:g}px"
        summary[key] = _nanmean([r[key] for r in results])
    summary["localization_error"] = _nanmean([r["localization_error"] for r in results])
    aucs = np.mean([error_auc(e, HOMOGRAPHY_PX) for e in draws], 0)
    for eps, auc in zip(HOMOGRAPHY_PX, aucs):
        summary[f"homography_accuracy@{eps:g}px"] = _draw_mean(draws, eps)
        summary[f"homography_auc@{eps:g}px"] = float(auc)
    summary["homography_failures"] = float(np.isinf(draws).sum(1).mean())
    summary["nn_map"] = _nanmean([r["nn_map"] for r in results])
    summary["matching_score"] = _nanmean([r["matching_score"] for r in results])
    summary["matches"] = _nanmean([r["matches"] for r in results])
    mma = np.mean([r["mma"] for r in results], 0) if results else np.full(len(CURVE_PX), np.nan)
    summary["mma"] = {f"{t:g}": float(v) for t, v in zip(CURVE_PX, mma)}
    summary["homography_accuracy_curve"] = {f"{t:g}": _draw_mean(draws, t) for t in CURVE_PX}
    return summary


def _draw_mean(draws: np.ndarray, eps: float) -> float:
    """Homography accuracy at `eps` of each draw's (pairs,) errors, averaged over the draws."""
    return float(np.mean([homography_accuracy(e, eps) for e in draws]))
