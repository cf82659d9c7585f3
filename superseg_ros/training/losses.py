"""Training losses of the four heads. Pixel convention as in DEVELOPERS.md.

    detector_loss      cross-entropy of the 65-way cell logits (64 positions + dustbin)
    descriptor_loss    hardest-in-batch triplet loss on sampled correspondences
    subpixel_loss      L1 between predicted and true offsets at labelled keypoints
    subpixel_consistency_loss
                       the model's own peaks in two views, paired through H: the refined
                       positions must land on each other (keypt2subpx's idea)
    segmentation_loss  cross-entropy with an ignore label, optionally class-weighted
                       (median_frequency_weights)

The descriptor loss never forms the (HW/64)^2 matrix of all cell pairs that SuperPoint's
original loss uses: it samples at most `max_points` correspondences per image, so its memory is
O(max_points^2) whatever the resolution (512 points: a 512x512 distance matrix per image, 1 MiB
in fp32, at 240x320 and at 480x640 alike).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import postprocess as pp
from ..homography import warp_points_torch
from ..network import CELL

DUSTBIN = CELL * CELL


def detector_loss(logits: torch.Tensor, labels: torch.Tensor,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """logits (B, 65, Hc, Wc); labels (B, Hc, Wc) in 0..64 (64 = no keypoint in the cell);
    valid (B, Hc, Wc) bool: cells that count (e.g. inside a warped image). Mean over valid cells."""
    per_cell = F.cross_entropy(logits, labels, reduction="none")
    if valid is None:
        return per_cell.mean()
    valid = valid.to(per_cell.dtype)
    return (per_cell * valid).sum() / valid.sum().clamp(min=1)


def sample_correspondences(homography: torch.Tensor, shape_a, shape_b, max_points: int,
                           generator: torch.Generator | None = None,
                           valid_b: torch.Tensor | None = None):
    """Cell centres of image A and where the homography A->B puts them.

    Returns (xy_a (B, N, 2), xy_b (B, N, 2), valid (B, N)): at most `max_points` random cell
    centres per image; `valid` is False where the warped point leaves image B (or `valid_b`).
    """
    b = homography.shape[0]
    hc, wc = shape_a[0] // CELL, shape_a[1] // CELL
    ys, xs = torch.meshgrid(torch.arange(hc), torch.arange(wc), indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(-1, 2).to(homography) * CELL + (CELL - 1) / 2
    n = min(max_points, len(centres))
    choice = torch.stack([torch.randperm(len(centres), generator=generator)[:n]
                          for _ in range(b)]).to(homography.device)
    xy_a = centres.to(homography.device)[choice]
    xy_b = warp_points_torch(homography, xy_a)
    h, w = shape_b
    valid = (xy_b[..., 0] >= 0) & (xy_b[..., 0] <= w - 1) & (xy_b[..., 1] >= 0) & \
        (xy_b[..., 1] <= h - 1)
    if valid_b is not None:
        index = (xy_b[..., 1].round().clamp(0, h - 1) * w
                 + xy_b[..., 0].round().clamp(0, w - 1)).long()
        valid &= valid_b.reshape(b, -1).gather(1, index)
    return xy_a, xy_b, valid


def descriptor_loss(desc_a: torch.Tensor, desc_b: torch.Tensor, xy_a: torch.Tensor,
                    xy_b: torch.Tensor, valid: torch.Tensor, margin: float = 1.0,
                    exclusion_radius: float = CELL) -> torch.Tensor:
    """Hardest-in-batch triplet loss (HardNet) on corresponding positions.

    desc_a/desc_b: dense (B, D, Hc, Wc) unit descriptors; xy_a/xy_b (B, N, 2) corresponding pixel
    positions; valid (B, N). Anchor a_i, positive p_i; the negative is the closest p_j (j != i)
    that lies more than `exclusion_radius` px from p_i (neighbouring cells look alike on
    purpose). loss = mean_i relu(margin + |a_i - p_i| - |a_i - p_neg(i)|).
    """
    anchors = F.normalize(pp.sample_bilinear(desc_a, xy_a, CELL), dim=-1)
    positives = F.normalize(pp.sample_bilinear(desc_b, xy_b, CELL), dim=-1)
    distance = torch.cdist(anchors, positives)                       # (B, N, N)
    positive = distance.diagonal(dim1=1, dim2=2)
    too_close = torch.cdist(xy_b, xy_b) <= exclusion_radius          # includes j == i
    unusable = too_close | ~valid[:, None, :]
    negative = distance.masked_fill(unusable, float("inf")).min(-1).values
    has_negative = torch.isfinite(negative) & valid
    losses = F.relu(margin + positive - negative)
    return (losses * has_negative).sum() / has_negative.sum().clamp(min=1)


def subpixel_loss(offsets: torch.Tensor, pixels: torch.Tensor, targets: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """L1 between predicted offsets (B, 2, H, W) read at integer pixels (B, K, 2 as x, y) and
    the true offsets (B, K, 2) = true position - pixel; valid (B, K). Mean over valid points."""
    w = offsets.shape[-1]
    index = (pixels[..., 1] * w + pixels[..., 0]).long()
    predicted = pp.gather_pixels(offsets, index)
    error = (predicted - targets).abs().sum(-1)
    return (error * valid).sum() / valid.sum().clamp(min=1)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                      class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits (B, M, h, w) at any stride; labels (B, H, W) at image resolution. The logits are
    upsampled (bilinear, pixel-centre aligned) so every labelled pixel counts once.
    class_weights (M,): per-class pixel weights; the mean is over the weights of the labelled
    pixels (torch's weighted cross-entropy)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                               align_corners=False)
    if class_weights is not None:
        class_weights = class_weights.to(logits.device, logits.dtype)
    return F.cross_entropy(logits, labels.long(), weight=class_weights,
                           ignore_index=ignore_index)


def median_frequency_weights(counts, power: float = 1.0) -> torch.Tensor:
    """Per-class weights (median(f) / f_c) ** power from pixel counts (M,), f_c = count_c / sum.
    power 1 is the median-frequency balancing SegNet trains CamVid with (Eigen & Fergus 2015);
    0.5 is a milder version. A class with no pixels gets weight 1 (it never contributes)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0 or (counts < 0).any():
        raise ValueError(f"counts must be a non-empty 1-D array of non-negative pixel counts, "
                         f"got {counts.tolist()}")
    present = counts > 0
    weights = torch.ones_like(counts)
    if present.any():
        frequency = counts[present] / counts.sum()
        weights[present] = (frequency.quantile(0.5) / frequency) ** float(power)  # mean of the middle two
    return weights.float()


def subpixel_consistency_loss(heatmap_a: torch.Tensor, heatmap_b: torch.Tensor,
                              offsets_a: torch.Tensor, offsets_b: torch.Tensor,
                              homography: torch.Tensor, valid_b: torch.Tensor | None = None,
                              max_points: int = 256, nms_radius: int = 4,
                              match_px: float = 2.0) -> tuple[torch.Tensor, int]:
    """Sub-pixel offsets trained on what the localisation error measures.

    heatmaps (B, H, W) (no gradient is taken through them); offsets (B, 2, H, W); homography
    (B, 3, 3) maps A's pixels to B's; valid_b (B, H, W) bool. The best `max_points` NMS peaks of
    each view are paired when H sends a peak of A within `match_px` of a peak of B and the two
    are mutual nearest neighbours. Loss: mean over pairs of || H(p_a + o_a) - (p_b + o_b) ||
    (a smoothed Euclidean distance, in px). Returns (loss, number of pairs); 0 without pairs.
    """
    with torch.no_grad():
        h_a, h_b = heatmap_a.detach().float(), heatmap_b.detach().float()
        if valid_b is not None:
            h_b = h_b * valid_b.to(h_b.dtype)
        xy_a, _, index_a, ok_a = pp.top_k_peaks(h_a, pp.nms_peaks(h_a, nms_radius) & (h_a > 0),
                                                max_points)
        xy_b, _, index_b, ok_b = pp.top_k_peaks(h_b, pp.nms_peaks(h_b, nms_radius) & (h_b > 0),
                                                max_points)
        if xy_a.shape[1] == 0 or xy_b.shape[1] == 0:
            return offsets_a.sum() * 0.0, 0
        warped = warp_points_torch(homography.to(xy_a.dtype), xy_a)
        distance = torch.cdist(warped, xy_b)
        distance = distance.masked_fill(~(ok_a[:, :, None] & ok_b[:, None, :]), float("inf"))
        distance = distance.nan_to_num(float("inf"))
        best_b = distance.argmin(2)                     # (B, Ka)
        best_a = distance.argmin(1)                     # (B, Kb)
        mutual = best_a.gather(1, best_b) == torch.arange(xy_a.shape[1], device=xy_a.device)
        paired = mutual & (distance.gather(2, best_b[..., None])[..., 0] <= match_px)
    n = int(paired.sum())
    if n == 0:
        return offsets_a.sum() * 0.0, 0
    o_a = pp.gather_pixels(offsets_a, index_a)         # (B, Ka, 2)
    o_b = pp.gather_pixels(offsets_b, index_b.gather(1, best_b))
    target = xy_b.gather(1, best_b[..., None].expand(-1, -1, 2)) + o_b
    moved = warp_points_torch(homography.to(o_a.dtype), xy_a + o_a)
    error = ((moved - target) ** 2).sum(-1).add(1e-4).sqrt()
    return error[paired].mean(), n
