"""Segmentation and keypoint-filter metrics against labelled frames, and the run and report of
superseg-eval --segmentation.

The metric functions (confusion_matrix .. keypoint_filter_summary) are plain numpy and shared
with the labelled training stage's validation.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..config import ConfigError
from ..semantics import DYNAMIC, FLAT, GROUPS, IGNORE, STATIC, UNSTABLE
from ..visualize import GROUP_COLOURS, UNKNOWN_COLOUR, draw_keypoints
from .datasets import DatasetError
from .report import pyplot, title_band, write_markdown_tail, write_overlay


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


SWEEP_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def threshold_sweep(stable_prob, gt_groups, thresholds=SWEEP_THRESHOLDS) -> list[dict]:
    """The filter's trade-off if `mask_threshold` were t: for keypoints with P(stable groups)
    `stable_prob` (N,) read at their nearest pixel, and ground-truth groups `gt_groups` (N,),

        dynamic_removed_share  = #(dynamic and p < t) / #dynamic
        static_flat_kept_share = #(static or flat and p >= t) / #(static or flat)
        unstable_removed_share = #(unstable and p < t) / #unstable

    (NaN when a denominator is 0). The extractor decides at the keypoint's integer peak before
    its sub-pixel offset, so at the configured threshold a few keypoints near the boundary can
    differ from the counts of keypoint_filter_counts."""
    p = np.asarray(stable_prob, np.float64).reshape(-1)
    g = np.asarray(gt_groups).reshape(-1)
    if len(p) != len(g):
        raise ValueError(f"{len(p)} probabilities but {len(g)} ground-truth groups")
    dynamic, unstable = g == DYNAMIC, g == UNSTABLE
    static_flat = (g == STATIC) | (g == FLAT)

    def share(hit, of) -> float:
        return float(hit.sum() / of.sum()) if of.sum() else float("nan")

    return [{"threshold": float(t),
             "dynamic_removed_share": share(dynamic & (p < t), dynamic),
             "static_flat_kept_share": share(static_flat & (p >= t), static_flat),
             "unstable_removed_share": share(unstable & (p < t), unstable)}
            for t in thresholds]


# --- superseg-eval --segmentation: the run ------------------------------------------------------


def labelled_frames(root: Path, dataset: str, split: str):
    """CamVidFrames / CityscapesFrames of `split` with 'classes' and 'groups4' labels; a
    DatasetError says which layout was expected and what is missing."""
    from ..training.labelled_data import frames_reader, labelled_data_config  # training's deps
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--segmentation {root}: no such folder")
    try:
        frames = frames_reader(labelled_data_config({"dataset": dataset, "root": str(root)}),
                               split, ["classes", "groups4"])
    except ConfigError as exc:  # the reader's own message, without the training-config prefix
        raise DatasetError(f"--segmentation {root} is not a {dataset} folder: "
                           f"{exc.__cause__ or exc} (is --dataset right?)") from None
    if not frames.labelled:
        raise DatasetError(f"--segmentation {root}: split {split!r} has no labels "
                           f"({root / 'gtFine' / split} does not exist)")
    return frames


def evaluate_segmentation(frames, extractor, class_names, out_dir: Path,
                          n_overlays: int = 8, desc: str = "frames") -> dict:
    """Every frame through `extractor` (dense, keep_unstable, semantic filter on). `class_names`:
    the dataset's classes when they are the model's (then the class confusion is accumulated
    too), else None. Returns the report, summed and per-frame filter counts, and the frames
    that could not be read (each costs itself, not the run)."""
    groups = np.zeros((len(GROUPS), len(GROUPS)), np.int64)
    classes = None if class_names is None else \
        np.zeros((len(class_names), len(class_names)), np.int64)
    rows, failures, keypoint_prob, keypoint_truth = [], [], [], []
    for index in tqdm(range(len(frames)), desc=desc, unit="frame", disable=len(frames) < 2):
        try:
            frame = frames[index]
        except ValueError as exc:  # an unreadable image or label file (the message names it)
            failures.append(str(exc))
            continue
        result = extractor(frame["image"]).unbatch()[0]
        truth = frame["labels"]["groups4"]
        frame_groups = confusion_matrix(result["group_map"], truth, len(GROUPS))
        groups += frame_groups
        if classes is not None:
            classes += confusion_matrix(result["class_map"], frame["labels"]["classes"],
                                        len(class_names))
        counts = keypoint_filter_counts(result["keypoints"], result["stable"], truth)
        rows_at = pixel_index(result["keypoints"][:, 1], truth.shape[0])
        cols_at = pixel_index(result["keypoints"][:, 0], truth.shape[1])
        keypoint_prob.append(result["stable_prob"][rows_at, cols_at].astype(np.float64))
        keypoint_truth.append(truth[rows_at, cols_at])
        rows.append({"name": frame["name"], "group_miou": intersection_over_union(frame_groups)[0],
                     **counts})
        if len(rows) <= n_overlays:
            write_overlay(out_dir / "overlays" / f"{frame['name']}.png",
                          segmentation_overlay(frame["image"], result, truth, frame["name"]))
    counts = sum_counts(rows)
    sweep = threshold_sweep(np.concatenate(keypoint_prob or [np.zeros(0)]),
                            np.concatenate(keypoint_truth or [np.zeros(0, np.uint8)]))
    return {"report": segmentation_report(classes, groups, class_names),
            "counts": counts, "shares": keypoint_filter_summary(counts), "sweep": sweep,
            "frames": rows, "failures": failures}


# --- report ----------------------------------------------------------------------------------


def segmentation_overlay(image: np.ndarray, result: dict, truth: np.ndarray,
                         name: str) -> np.ndarray:
    """BGR: left = predicted groups blended with the image, kept keypoints green and removed
    ones red; right = ground-truth groups (ignore black) blended with the image; a title band
    above, a colour legend below."""
    left = draw_keypoints(image, result["keypoints"], result["stable"],
                          group_map=result["group_map"])
    right = draw_keypoints(image, np.zeros((0, 2)), np.zeros(0, bool), group_map=truth)
    canvas = np.hstack([left, right])
    kept = int(np.sum(result["stable"]))
    title = (f"{name} | left: predicted groups, {kept} kept (green) and "
             f"{len(result['stable']) - kept} removed (red) keypoints | "
             "right: ground-truth groups (black = ignore)")
    return np.vstack([title_band(canvas.shape[1], title), canvas, legend_band(canvas.shape[1])])


def legend_band(width: int) -> np.ndarray:
    """Group colour swatches and names, wrapped to `width` (grey band: 'ignore' is black)."""
    font, scale, box, gap = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 10, 6
    items = [(name, GROUP_COLOURS[i]) for i, name in enumerate(GROUPS)] + \
        [("ignore", UNKNOWN_COLOUR)]
    (_, h), base = cv2.getTextSize("Ag", font, scale, 1)
    step = max(box, h + base) + gap
    places, x, y = [], gap, gap
    for name, colour in items:  # flow layout: a new line when the next item does not fit
        item_width = box + 4 + cv2.getTextSize(name, font, scale, 1)[0][0]
        if x > gap and x + item_width > width - gap:
            x, y = gap, y + step
        places.append((name, colour, x, y))
        x += item_width + 2 * gap
    band = np.full((y + step, width, 3), 60, np.uint8)
    for name, colour, x, y in places:
        cv2.rectangle(band, (x, y), (x + box - 1, y + box - 1), tuple(int(c) for c in colour), -1)
        cv2.putText(band, name, (x + box + 4, y + box - 1), font, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return band


def _number(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None or not np.isfinite(value) else fmt.format(value)


def iou_rows(level: dict) -> list[list[str]]:
    """[name, IoU] per class or group, then mIoU and pixel accuracy."""
    return [[name, _number(v)] for name, v in level["iou"].items()] + \
        [["mIoU", _number(level["miou"])], ["pixel accuracy", _number(level["pixel_accuracy"])]]


FILTER_ROWS = (  # (label, count key, share key)
    ("detected (filter off)", "total", None),
    ("on dynamic objects", "on_dynamic", "dynamic_share_filter_off"),
    ("  removed by the filter", "dynamic_removed", "dynamic_removed_share"),
    ("on static structure or flat surface", "on_static_flat", None),
    ("  kept by the filter", "static_flat_kept", "static_flat_kept_share"),
    ("on unstable/ambiguous", "on_unstable", None),
    ("  removed by the filter", "unstable_removed", "unstable_removed_share"),
    ("on ignore pixels", "on_ignore", None),
)
FILTER_LEGEND = ("Ground-truth group at each keypoint's nearest pixel; every detected keypoint is "
                 "counted (the filter-off set) and the filter's verdict read from `stable`. "
                 "Shares: on dynamic / detected; removed / on dynamic; kept / on static or flat; "
                 "removed / on unstable. Keypoints on ignore pixels count in 'detected' only")


SWEEP_HEADER = ["mask_threshold", "dynamic removed", "static/flat kept", "unstable removed"]


def sweep_rows(sweep: list[dict]) -> list[list[str]]:
    return [[f"{r['threshold']:.1f}", _number(r["dynamic_removed_share"]),
             _number(r["static_flat_kept_share"]), _number(r["unstable_removed_share"])]
            for r in sweep]


def filter_rows(counts: dict, shares: dict) -> list[list[str]]:
    return [[label, str(counts[key]), _number(shares[share]) if share else ""]
            for label, key, share in FILTER_ROWS]


def align(header: list[str], rows: list[list[str]]) -> str:
    """Plain-text table: first column left, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join([r[0].ljust(widths[0])] +
                               [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip()
                     for r in [header] + rows)


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |",
            "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"] + \
        ["| " + " | ".join(c.replace("  ", "&nbsp;&nbsp;") for c in r) + " |" for r in rows]


def format_summary(record: dict) -> str:
    """The stdout table: per-group IoU, the class mIoU (or why there is none), the filter."""
    report = record["segmentation"]
    lines = [align(["group", "IoU"], iou_rows(report["groups"])), ""]
    if report["classes"] is not None:
        lines.append(f"class mIoU {_number(report['classes']['miou'])} "
                     f"({len(report['classes']['iou'])} classes; per class in metrics.md)")
    else:
        lines.append(record["class_note"])
    filt = record["keypoint_filter"]
    lines += ["", align(["keypoint filter", "keypoints", "share"],
                        filter_rows(filt["counts"], filt["shares"]))]
    return "\n".join(lines)


def write_segmentation_markdown(path: Path, record: dict, plots: list[str]) -> Path:
    config, report = record["config"], record["segmentation"]
    groups = report["groups"]
    lines = ["# superseg-eval: segmentation and the keypoint filter", "",
             f"{config['dataset']} `{config['split']}`, {config['evaluated']} frames, model "
             f"`{config['model']}`.", "", "## Per-group IoU", ""]
    lines += markdown(["group", "IoU"], iou_rows(groups))
    lines += ["", f"Predicted group = group of the argmax class; {groups['pixels']} labelled "
              "pixels (ignore excluded).", "", "## Per-class IoU", ""]
    lines += markdown(["class", "IoU"], iou_rows(report["classes"])) \
        if report["classes"] is not None else [record["class_note"]]
    lines += ["", "## Keypoint filter", ""]
    lines += markdown(["keypoints", "count", "share"],
                      filter_rows(record["keypoint_filter"]["counts"],
                                  record["keypoint_filter"]["shares"]))
    lines += ["", FILTER_LEGEND + ".", ""]
    if record["keypoint_filter"].get("sweep"):
        lines += [f"## The filter at other thresholds (this run: mask_threshold "
                  f"{config['mask_threshold']})", ""]
        lines += markdown(SWEEP_HEADER, sweep_rows(record["keypoint_filter"]["sweep"]))
        lines += ["", "Shares if the filter kept keypoints with P(stable groups) >= threshold, "
                  "P read from `stable_prob` at each keypoint's nearest pixel.", ""]
    lines += ["## Group confusion (pixels; rows = label, columns = prediction)", ""]
    lines += markdown(["label \\ predicted"] + list(GROUPS),
                      [[g] + [str(v) for v in row]
                       for g, row in zip(GROUPS, groups["confusion"])])
    return write_markdown_tail(path, lines, config, record.get("notes"), plots)


def write_segmentation_plots(out_dir: Path, report: dict, sweep: list[dict] | None = None
                             ) -> tuple[list[Path], str | None]:
    """group_confusion.png (row-normalised, with the numbers), group_iou.png, with class
    metrics class_iou.png, and with a threshold sweep filter_thresholds.png; (files, note if
    skipped)."""
    plt, note = pyplot()
    if plt is None:
        return [], note
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_confusion_plot(plt, out_dir / "group_confusion.png", report["groups"]["confusion"]),
               _iou_plot(plt, out_dir / "group_iou.png", report["groups"], "Per-group IoU")]
    if report["classes"] is not None:
        written.append(_iou_plot(plt, out_dir / "class_iou.png", report["classes"],
                                 "Per-class IoU"))
    if sweep:
        written.append(_sweep_plot(plt, out_dir / "filter_thresholds.png", sweep))
    return written, None


def _sweep_plot(plt, path: Path, sweep: list[dict]) -> Path:
    """The filter's trade-off: dynamic keypoints removed against static/flat ones kept, one
    point per mask_threshold."""
    removed = [r["dynamic_removed_share"] for r in sweep]
    kept = [r["static_flat_kept_share"] for r in sweep]
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    ax.plot(kept, removed, "o-", color="tab:blue")
    for r, x, y in zip(sweep, kept, removed):
        ax.annotate(f"{r['threshold']:.1f}", (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set(title="Keypoint filter by mask_threshold", xlabel="keypoints on static/flat kept",
           ylabel="keypoints on dynamic objects removed", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _confusion_plot(plt, path: Path, confusion) -> Path:
    confusion = np.asarray(confusion, np.float64)
    rows = confusion.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(rows > 0, confusion / rows, np.nan)  # a label absent from the data: NaN
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = [g.replace("_", "\n") for g in GROUPS]
    ax.set_xticks(range(len(GROUPS)), names, fontsize=8)
    ax.set_yticks(range(len(GROUPS)), names, fontsize=8)
    for (i, j), value in np.ndenumerate(share):
        ax.text(j, i, "-" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                color="white" if value > 0.6 else "black")
    ax.set(title="Group confusion (each row sums to 1)", xlabel="predicted group",
           ylabel="ground-truth group")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _iou_plot(plt, path: Path, level: dict, title: str) -> Path:
    names, values = list(level["iou"]), np.array(list(level["iou"].values()), np.float64)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names) + 2), 4), dpi=100)
    ax.bar(range(len(names)), np.nan_to_num(values), color="tab:blue")
    for i, value in enumerate(values):  # 'none': in neither label nor prediction (not 0)
        ax.text(i, (0 if np.isnan(value) else value) + 0.01, _number(value, "{:.2f}")
                .replace("-", "none"), ha="center", va="bottom", fontsize=7)
    if np.isfinite(level["miou"]):
        ax.axhline(level["miou"], color="tab:red", lw=1, label=f"mIoU {level['miou']:.3f}")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set(title=title, ylabel="IoU", ylim=(0, 1.05))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
