"""Segmentation and keypoint-filter metrics against labelled frames.

Shared by the labelled training stage's validation and superseg-eval --segmentation.
"""

from __future__ import annotations

import numpy as np

from ..semantics import DYNAMIC, FLAT, GROUPS, IGNORE, STATIC, UNSTABLE


def confusion_matrix(predicted, target, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(n, n) int64 counts, rows = true class, columns = predicted class, over the pixels whose
    target is not `ignore` (and is a valid class)."""
    predicted = np.asarray(predicted).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    keep = (target != ignore) & (target >= 0) & (target < num_classes)
    index = target[keep] * num_classes + np.clip(predicted[keep], 0, num_classes - 1)
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def intersection_over_union(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean IoU over the classes that occur in the target or the prediction, per-class IoU with
    NaN for classes that occur in neither). IoU = TP / (TP + FP + FN)."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return (float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")), iou


def segmentation_report(class_confusion, group_confusion, class_names,
                        group_names=GROUPS) -> dict:
    """IoU tables of a dataset's accumulated confusion matrices (rows = label, columns =
    prediction, over non-ignore pixels: `confusion_matrix`).

        IoU_c          = TP_c / (TP_c + FP_c + FN_c)
        mIoU           = mean of IoU_c over the classes present in the label or the prediction
        pixel accuracy = trace(C) / sum(C)

    `groups` always (the 4-group mIoU, predicted group = group of the argmax class); `classes`
    only with a `class_confusion` (None when the model's classes are not the dataset's)."""
    return {"groups": _level_report(group_confusion, group_names),
            "classes": None if class_confusion is None
            else _level_report(class_confusion, class_names)}


def _level_report(confusion, names) -> dict:
    confusion = np.asarray(confusion, np.int64)
    if confusion.shape != (len(names), len(names)):
        raise ValueError(f"a {confusion.shape} confusion matrix for {len(names)} names")
    miou, iou = intersection_over_union(confusion)
    total = int(confusion.sum())
    return {"iou": {str(n): float(v) for n, v in zip(names, iou)}, "miou": miou,
            "pixel_accuracy": float(np.trace(confusion) / total) if total else float("nan"),
            "pixels": total, "confusion": confusion.tolist()}


FILTER_COUNTS = ("total", "on_dynamic", "dynamic_removed", "on_static_flat", "static_flat_kept",
                 "on_unstable", "unstable_removed", "on_ignore")


def pixel_index(coordinates, size: int) -> np.ndarray:
    """Sub-pixel coordinates (pixel-centre convention: pixel i covers [i - 0.5, i + 0.5)) -> the
    index of the pixel they fall in, floor(c + 0.5), clipped to 0..size-1. Halves go up (0.5 ->
    1) for every i alike; numpy's round would send 0.5 to 0 but 1.5 to 2."""
    return np.clip(np.floor(np.asarray(coordinates, np.float64) + 0.5), 0, size - 1) \
        .astype(np.int64)


def keypoint_filter_counts(keypoints, stable, gt_groups) -> dict:
    """How one frame's keypoints fall on the ground-truth groups, and what the filter did there.

    keypoints (N, 2) x, y (pixel-centre convention), looked up in `gt_groups` (H, W: 0..3, 255
    = ignore) at the nearest pixel (pixel_index; clipped to the image). stable (N,) bool: kept by
    the filter. Counts: total = N; on_dynamic, on_static_flat (static or flat), on_unstable,
    on_ignore (any other value) by label; dynamic_removed = on dynamic and not stable;
    static_flat_kept = on static/flat and stable; unstable_removed = on unstable and not stable.
    """
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
    stable = np.asarray(stable, bool).reshape(-1)
    if len(stable) != len(keypoints):
        raise ValueError(f"{len(keypoints)} keypoints but {len(stable)} stable flags")
    gt_groups = np.asarray(gt_groups)
    height, width = gt_groups.shape
    group = gt_groups[pixel_index(keypoints[:, 1], height), pixel_index(keypoints[:, 0], width)]
    dynamic, unstable = group == DYNAMIC, group == UNSTABLE
    static_flat = (group == STATIC) | (group == FLAT)
    return {"total": len(keypoints),
            "on_dynamic": int(dynamic.sum()), "dynamic_removed": int((dynamic & ~stable).sum()),
            "on_static_flat": int(static_flat.sum()),
            "static_flat_kept": int((static_flat & stable).sum()),
            "on_unstable": int(unstable.sum()),
            "unstable_removed": int((unstable & ~stable).sum()),
            "on_ignore": int((~(dynamic | unstable | static_flat)).sum())}


def sum_counts(per_frame) -> dict:
    """keypoint_filter_counts of many frames, added key by key."""
    return {key: sum(int(c[key]) for c in per_frame) for key in FILTER_COUNTS}


def keypoint_filter_summary(counts: dict) -> dict:
    """Shares from (summed) keypoint_filter_counts; NaN when the denominator is 0.

        dynamic_share_filter_off = on_dynamic / total  (keypoints on ignore pixels count here only)
        dynamic_removed_share    = dynamic_removed / on_dynamic
        static_flat_kept_share   = static_flat_kept / on_static_flat
        unstable_removed_share   = unstable_removed / on_unstable
    """
    def share(numerator: str, denominator: str) -> float:
        return counts[numerator] / counts[denominator] if counts[denominator] else float("nan")

    return {"dynamic_share_filter_off": share("on_dynamic", "total"),
            "dynamic_removed_share": share("dynamic_removed", "on_dynamic"),
            "static_flat_kept_share": share("static_flat_kept", "on_static_flat"),
            "unstable_removed_share": share("unstable_removed", "on_unstable")}
