"""Planar homographies: sampling (SuperPoint-style), warping points and images, validity masks.

Shared by evaluation, training and homographic adaptation, so the convention is fixed here once:

- Pixel coordinates follow DEVELOPERS.md: (0, 0) is the centre of the top-left pixel, x right,
  y down. An image of width W and height H covers the area [-0.5, W-0.5] x [-0.5, H-0.5].
- A homography `H_ab` maps pixel coordinates of image A to image B: x_b ~ H_ab @ (x_a, y_a, 1).
  Composition: H_ac = H_bc @ H_ab. Inverse: H_ba = inv(H_ab).
- `warp_image(image_a, H_ab)` renders image B, so that image_b(H_ab x) = image_a(x). This is
  exactly cv2.warpPerspective, which already puts pixel centres at integer coordinates.
- Shapes are numpy-style (height, width) everywhere in this module.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .config import merge_config

# Defaults of `sample_homography` (also the keys a homography config may set).
DEFAULT_HOMOGRAPHY_CONFIG = {
    "perspective": 0.1,         # keystone/edge-shift amplitude, fraction of the image size
    "scale": [0.8, 1.2],        # range of the patch's scale factor (log-uniform)
    "rotation_deg": 25.0,       # rotation uniform in [-r, r] degrees about the patch centre
    "translation": 0.1,         # shift uniform in [-t, t] x image size (limited to stay inside)
    "patch_ratio": 0.85,        # side of the centred starting patch, fraction of the image side
    "allow_artifacts": False,   # False: every pixel of B comes from inside A
    "n_candidates": 25,         # scales/angles drawn per step; an invalid one is never used
}

_EPS = 1e-9


def homography_config(overrides: dict | None = None) -> dict:
    """DEFAULT_HOMOGRAPHY_CONFIG updated with `overrides`; unknown keys are a ConfigError."""
    return merge_config(DEFAULT_HOMOGRAPHY_CONFIG, overrides, where="homography")


def image_corners(shape) -> np.ndarray:
    """(4, 2) outer corners of an image's area (TL, TR, BR, BL): the pixels' outer edges."""
    h, w = shape[:2]
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])


def sample_homography(rng: np.random.Generator, height: int, width: int, *,
                      perspective: float = 0.1, scale=(0.8, 1.2), rotation_deg: float = 25.0,
                      translation: float = 0.1, patch_ratio: float = 0.85,
                      allow_artifacts: bool = False, n_candidates: int = 25) -> np.ndarray:
    """A random H_ab (3x3 float64, H[2, 2] = 1) for an image pair of the same size (height, width).

    SuperPoint's recipe (DeTone et al. 2018, `sample_homography`): start from a centred patch of
    A, patch_ratio times the image size, and move its four corners; B is that patch stretched
    over the whole of B, so H_ab maps the patch corners to B's image corners. In order:

    1. perspective: truncated normal displacements (sigma = amplitude/2, cut at +-amplitude,
       amplitude = perspective x image width resp. height): left/right edges shift sideways
       and a keystone shortens one of them while lengthening the other (SuperPoint's), and the
       same for the top/bottom edges (added so both axes are treated alike). Without artifacts
       the amplitude is capped at half the free margin, so the corners stay inside A.
    2. scale: factor log-uniform in `scale` = (lo, hi), applied to the patch about its centre;
       > 1 shows more of A (B zooms out). B's magnification relative to A is about
       1 / (patch_ratio * factor).
    3. translation: uniform in [-t, t] x (width, height); without artifacts limited to the free
       margin, so the patch stays inside A.
    4. rotation: uniform in [-rotation_deg, rotation_deg] about the patch centre (in pixels,
       so it is a true rotation for non-square images).

    Steps 2 and 4 draw `n_candidates` values plus the identity and pick uniformly among those
    that keep the patch inside A (all of them with allow_artifacts=True), as SuperPoint does.
    With allow_artifacts=False every pixel of B maps inside A's area (see `valid_mask`).
    """
    lo, hi = (float(v) for v in scale)
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale!r}")
    if not 0 < patch_ratio <= 1:
        raise ValueError(f"patch_ratio must be in (0, 1], got {patch_ratio}")
    if perspective < 0 or translation < 0 or rotation_deg < 0:
        raise ValueError("perspective, translation and rotation_deg must be >= 0")
    size = np.array([width, height], np.float64)
    centre = (size - 1) / 2
    corners = centre + patch_ratio * (image_corners((height, width)) - centre)

    # 1. perspective: per axis an edge shift for each side plus a keystone
    margin = (1 - patch_ratio) / 2 * size
    amplitude = perspective * size
    if not allow_artifacts:
        amplitude = np.minimum(amplitude, margin / 2)  # shift + keystone <= margin
    hl, hr, e = _truncated_normal(rng, amplitude[0], 3)  # x: left edge, right edge, keystone
    vt, vb, d = _truncated_normal(rng, amplitude[1], 3)  # y: top edge, bottom edge, keystone
    corners = corners + np.array([[hl + e, vt + d], [hr - e, vt - d],    # TL, TR
                                  [hr + e, vb + d], [hl - e, vb - d]])   # BR, BL

    def pick(candidates: np.ndarray, transform) -> np.ndarray:
        options = [transform(c) for c in candidates]
        if not allow_artifacts:
            options = [c for c in options if points_inside(c, (height, width)).all()] or options[:1]
        return options[rng.integers(len(options))]

    # 2. scale about the patch centre (candidate 0 = identity, always valid)
    factors = np.r_[1.0, np.exp(rng.uniform(np.log(lo), np.log(hi), n_candidates))]
    mid = corners.mean(0)
    corners = pick(factors, lambda s: mid + s * (corners - mid))

    # 3. translation within [-t, t] x size, and within the free margin without artifacts
    low, high = -translation * size, translation * size
    if not allow_artifacts:
        low = np.maximum(low, -0.5 - corners.min(0))
        high = np.minimum(high, size - 0.5 - corners.max(0))
        high = np.maximum(high, low)
    corners = corners + rng.uniform(low, high)

    # 4. rotation about the patch centre (candidate 0 = identity)
    angles = np.r_[0.0, rng.uniform(-rotation_deg, rotation_deg, n_candidates)]
    mid = corners.mean(0)
    corners = pick(np.deg2rad(angles), lambda a: mid + (corners - mid) @ _rotation(a).T)

    return fit_homography(corners, image_corners((height, width)))


def sample_from_config(rng: np.random.Generator, height: int, width: int,
                       config: dict | None = None) -> np.ndarray:
    """`sample_homography` with a (validated) config dict, e.g. DEFAULT_HOMOGRAPHY_CONFIG."""
    return sample_homography(rng, height, width, **homography_config(config))


def _truncated_normal(rng: np.random.Generator, amplitude: float, n: int) -> np.ndarray:
    """n draws of N(0, (amplitude/2)^2) cut at +-amplitude (redrawn, not clipped)."""
    if amplitude <= 0:
        return np.zeros(n)
    out = rng.normal(0, amplitude / 2, n)
    while (bad := np.abs(out) > amplitude).any():
        out[bad] = rng.normal(0, amplitude / 2, int(bad.sum()))
    return out


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def fit_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """H (float64, H[2, 2] = 1) with dst ~ H src, from >= 4 point pairs (N, 2): normalised DLT.

    Least squares for more than four points; exact for four in general position.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 4:
        raise ValueError(f"need two (N>=4, 2) point arrays, got {src.shape} and {dst.shape}")
    t_src, t_dst = _normaliser(src), _normaliser(dst)  # Hartley: conditions the SVD
    a = warp_points(t_src, src)
    b = warp_points(t_dst, dst)
    zeros, ones = np.zeros(len(a)), np.ones(len(a))
    rows_x = np.stack([a[:, 0], a[:, 1], ones, zeros, zeros, zeros,
                       -b[:, 0] * a[:, 0], -b[:, 0] * a[:, 1], -b[:, 0]], 1)
    rows_y = np.stack([zeros, zeros, zeros, a[:, 0], a[:, 1], ones,
                       -b[:, 1] * a[:, 0], -b[:, 1] * a[:, 1], -b[:, 1]], 1)
    _, _, vt = np.linalg.svd(np.concatenate([rows_x, rows_y]))
    h = np.linalg.inv(t_dst) @ vt[-1].reshape(3, 3) @ t_src
    return normalize(h)


def _normaliser(points: np.ndarray) -> np.ndarray:
    mean = points.mean(0)
    spread = np.sqrt(((points - mean) ** 2).sum(1).mean()) or 1.0
    s = math.sqrt(2) / spread
    return np.array([[s, 0, -s * mean[0]], [0, s, -s * mean[1]], [0, 0, 1]])


def normalize(h: np.ndarray) -> np.ndarray:
    """Scale a homography so that H[2, 2] = 1 (float64)."""
    h = np.asarray(h, np.float64)
    if h.shape != (3, 3) or not np.isfinite(h).all() or abs(h[2, 2]) < 1e-12:
        raise ValueError("not a usable homography (needs a finite 3x3 matrix with H[2, 2] != 0)")
    return h / h[2, 2]


def scaling_matrix(sx: float, sy: float | None = None) -> np.ndarray:
    """The map from an image's pixels to those of the image resized by (sx, sy).

    Pixel-centre convention: a resize by s maps x -> (x + 0.5) s - 0.5, as cv2.resize does.
    A pair resized by S_a and S_b has H' = S_b @ H @ inv(S_a).
    """
    sy = sx if sy is None else sy
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def warp_points(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(..., 2) points through H (homogeneous division). Points that H sends to infinity come
    out inf/nan; use `points_inside` to keep the meaningful ones."""
    xy = np.asarray(xy, np.float64)
    h = np.asarray(h, np.float64)
    out = xy @ h[:2, :2].T + h[:2, 2]
    w = xy @ h[2, :2] + h[2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return out / w[..., None]


def points_inside(xy: np.ndarray, shape) -> np.ndarray:
    """(...,) bool: points inside the area covered by an image of `shape` (pixel edges included)."""
    xy = np.asarray(xy)
    h, w = shape[:2]
    return ((xy[..., 0] >= -0.5 - _EPS) & (xy[..., 0] <= w - 0.5 + _EPS)
            & (xy[..., 1] >= -0.5 - _EPS) & (xy[..., 1] <= h - 0.5 + _EPS))


def warp_image(image: np.ndarray, h: np.ndarray, shape=None, *,
               interpolation: int = cv2.INTER_LINEAR,
               border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Image B of `shape` (height, width; default: A's) with image_b(H x) = image_a(x).

    cv2.warpPerspective samples A at inv(H) @ (integer pixel centre of B), which is exactly this
    module's convention. BORDER_REPLICATE by default: a B pixel whose centre maps within A's
    area but less than half a pixel from its edge then takes the edge pixel's value instead of
    a blend with black (pass cv2.BORDER_CONSTANT for SuperPoint-style black artifacts).
    """
    hb, wb = (image.shape[:2] if shape is None else shape[:2])
    return cv2.warpPerspective(image, np.asarray(h, np.float64), (int(wb), int(hb)),
                               flags=interpolation, borderMode=border, borderValue=0)


def valid_mask(h: np.ndarray, shape_a, shape_b) -> np.ndarray:
    """(H_b, W_b) bool: pixels of B whose centre comes from inside A's area under H_ab."""
    hb, wb = shape_b[:2]
    ys, xs = np.mgrid[0:hb, 0:wb]
    grid = np.stack([xs, ys], -1).astype(np.float64)
    inv = np.linalg.inv(np.asarray(h, np.float64))
    in_front = grid @ inv[2, :2] + inv[2, 2] > 0  # a point behind the "camera" is not in A
    return in_front & points_inside(warp_points(inv, grid), shape_a)


# --- batched torch versions (same conventions) ---------------------------------------------------


def warp_points_torch(h: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) points through (B, 3, 3) homographies (or one (3, 3) for all)."""
    h = h.to(xy.dtype)
    if h.dim() == 2:
        h = h.expand(xy.shape[0], 3, 3)
    out = xy @ h[:, :2, :2].transpose(1, 2) + h[:, None, :2, 2]
    w = xy @ h[:, 2:, :2].transpose(1, 2) + h[:, None, 2:, 2]
    return out / w


def warp_images_torch(images: torch.Tensor, h: torch.Tensor, shape=None,
                      padding_mode: str = "border") -> torch.Tensor:
    """(B, C, H_a, W_a) images -> (B, C, H_b, W_b) with image_b(H x) = image_a(x), bilinear.

    grid_sample with align_corners=False uses the same pixel-centre convention, so this agrees
    with `warp_image`; padding_mode "border" = BORDER_REPLICATE, "zeros" = BORDER_CONSTANT.
    """
    b, _, ha, wa = images.shape
    hb, wb = (ha, wa) if shape is None else shape[:2]
    h = h.to(images.device, torch.float64)
    if h.dim() == 2:
        h = h.expand(b, 3, 3)
    ys, xs = torch.meshgrid(torch.arange(hb, dtype=torch.float64, device=images.device),
                            torch.arange(wb, dtype=torch.float64, device=images.device),
                            indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(b, -1, -1)
    source = warp_points_torch(torch.linalg.inv(h), grid)
    # pixel centre x -> normalised coordinate (2x + 1) / W - 1 (align_corners=False)
    scale = torch.tensor([wa, ha], dtype=torch.float64, device=images.device)
    norm = ((2 * source + 1) / scale - 1).reshape(b, hb, wb, 2).to(images.dtype)
    return F.grid_sample(images, norm, mode="bilinear", padding_mode=padding_mode,
                         align_corners=False)
