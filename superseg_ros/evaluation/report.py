"""Evaluation output: an aligned table, metrics.json, metrics.md, PNG plots and match overlays."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from ..fileio import write_atomically
from .metrics import CORRECT_PX, CURVE_PX

# (summary key, column header, format); one row per method
COLUMNS = [
    ("keypoints", "kpts", "{:.0f}"),
    ("repeatability@1px", "rep@1", "{:.3f}"),
    ("repeatability@3px", "rep@3", "{:.3f}"),
    ("localization_error", "loc.err", "{:.3f}"),
    ("homography_accuracy@1px", "H@1", "{:.3f}"),
    ("homography_accuracy@3px", "H@3", "{:.3f}"),
    ("homography_accuracy@5px", "H@5", "{:.3f}"),
    ("homography_auc@1px", "AUC@1", "{:.3f}"),
    ("homography_auc@3px", "AUC@3", "{:.3f}"),
    ("homography_auc@5px", "AUC@5", "{:.3f}"),
    ("nn_map", "NN mAP", "{:.3f}"),
    ("matching_score", "MS", "{:.3f}"),
    ("mma@3px", "MMA@3", "{:.3f}"),
    ("matches", "matches", "{:.0f}"),
    ("ms_per_image", "ms/img", "{:.0f}"),
]

LEGEND = ("kpts: keypoints per image; rep@e: repeatability at e px; loc.err: mean localisation "
          "error (px) of points repeated within 3 px; H@e: fraction of pairs with mean corner "
          "error <= e px, averaged over RANSAC draws; AUC@e: area under the corner-error curve "
          "up to e px; NN mAP: nearest-neighbour mean average precision; MS: matching score; "
          "MMA@3: mean matching accuracy at 3 px; matches: mutual nearest neighbours per pair; "
          "ms/img: extraction time")


def _cell(summary: dict, key: str, fmt: str) -> str:
    value = summary.get(key)
    if key == "mma@3px":
        value = summary.get("mma", {}).get("3")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def table_rows(summaries: dict[str, dict], columns=COLUMNS
               ) -> tuple[list[str], list[list[str]]]:
    """`columns`: (summary key, header, format) per column; one row per method."""
    header = ["method"] + [h for _, h, _ in columns]
    rows = [[name] + [_cell(s, key, fmt) for key, _, fmt in columns]
            for name, s in summaries.items()]
    return header, rows


def format_table(summaries: dict[str, dict], columns=COLUMNS) -> str:
    """Plain-text table, columns aligned (method left, numbers right)."""
    header, rows = table_rows(summaries, columns)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for r in [header] + rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(summaries: dict[str, dict], columns=COLUMNS) -> str:
    header, rows = table_rows(summaries, columns)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def jsonable(value):
    """numpy -> Python, NaN/inf -> None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path: Path, record: dict) -> Path:
    text = json.dumps(jsonable(record), indent=2, allow_nan=False)
    return write_atomically(path, lambda f: f.write(text.encode() + b"\n"))


def write_markdown(path: Path, record: dict, plots: list[str]) -> Path:
    config = record["config"]
    lines = ["# superseg-eval results", "", markdown_table(record["summaries"]), "",
             LEGEND + ".", ""]
    for group, summaries in record.get("group_summaries", {}).items():
        lines += [f"## Sequences {group}_* only", "", markdown_table(summaries), ""]
    lines += ["## Mean matching accuracy by threshold", "",
              "| method | " + " | ".join(f"{t:g}px" for t in CURVE_PX) + " |",
              "|:---|" + "---:|" * len(CURVE_PX)]
    for name, s in record["summaries"].items():
        lines.append(f"| {name} | " + " | ".join(f"{s['mma'][f'{t:g}']:.3f}" for t in CURVE_PX)
                     + " |")
    setup = {**config, **{f"method {n}": info for n, info in record["methods"].items()}}
    return write_markdown_tail(path, lines, setup, record.get("notes"), plots)


def write_markdown_tail(path: Path, lines: list[str], setup: dict, notes, plots) -> Path:
    """`lines`, then the Setup, Notes and Plots sections every metrics.md ends with."""
    lines = lines + ["", "## Setup", ""] + [f"- **{key}**: `{json.dumps(jsonable(value))}`"
                                            for key, value in setup.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    text = "\n".join(lines) + "\n"
    return write_atomically(path, lambda f: f.write(text.encode()))


# --- plots ---------------------------------------------------------------------------------------


def pyplot():
    """(matplotlib.pyplot drawing to files only, None), or (None, the note why plots are
    skipped) where matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "plots skipped: matplotlib is not installed (pip install matplotlib)"
    return plt, None


def write_plots(out_dir: Path, summaries: dict[str, dict],
                loc_samples: dict[str, np.ndarray]) -> tuple[list[Path], str | None]:
    """homography_accuracy.png, mma.png, localization_error.png; (files, note if skipped)."""
    plt, note = pyplot()
    if plt is None:
        return [], note
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, title, ylabel, fname in (
            ("homography_accuracy_curve", "Homography estimation", "fraction of pairs with "
             "corner error <= t", "homography_accuracy.png"),
            ("mma", "Mean matching accuracy", "MMA (correct / mutual-NN matches)", "mma.png")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for name, s in summaries.items():
            ax.plot(CURVE_PX, [s[key][f"{t:g}"] for t in CURVE_PX], marker="o", ms=3, label=name)
        ax.set(title=title, xlabel="threshold t [px]", ylabel=ylabel, ylim=(0, 1.02),
               xlim=(CURVE_PX[0] - 0.2, CURVE_PX[-1] + 0.2))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / fname)
        plt.close(fig)
        written.append(out_dir / fname)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    bins = np.linspace(0, CORRECT_PX, 31)
    for name, samples in loc_samples.items():
        if len(samples):
            ax.hist(samples, bins=bins, histtype="step", density=True, lw=1.5,
                    label=f"{name} (mean {np.mean(samples):.2f} px, n={len(samples)})")
    ax.set(title="Localisation error of repeated keypoints", xlabel="distance [px]",
           ylabel="density")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "localization_error.png")
    plt.close(fig)
    written.append(out_dir / "localization_error.png")
    return written, None


def localization_histogram(samples: np.ndarray) -> dict:
    counts, edges = np.histogram(samples, bins=np.linspace(0, CORRECT_PX, 31))
    return {"bin_edges_px": edges.round(3).tolist(), "counts": counts.tolist()}


# --- match overlays ------------------------------------------------------------------------------

CORRECT_BGR, WRONG_BGR = (0, 200, 0), (0, 0, 255)


def draw_matches(image_a: np.ndarray, image_b: np.ndarray, kp_a, kp_b, matches, errors,
                 title: str = "", eps: float = CORRECT_PX, max_lines: int = 300) -> np.ndarray:
    """A | B side by side (BGR) with match lines: green if the true reprojection error <= eps,
    red otherwise. At most `max_lines` (evenly chosen) are drawn so the picture stays legible."""
    def bgr(im):
        return cv2.cvtColor(im, cv2.COLOR_RGB2BGR if im.ndim == 3 else cv2.COLOR_GRAY2BGR)

    a, b = bgr(image_a), bgr(image_b)
    height = max(a.shape[0], b.shape[0])
    pad = [cv2.copyMakeBorder(im, 0, height - im.shape[0], 0, 0, cv2.BORDER_CONSTANT)
           for im in (a, b)]
    canvas = np.concatenate(pad, 1)
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    errors = np.asarray(errors, np.float64)
    if len(matches) > max_lines:
        pick = np.linspace(0, len(matches) - 1, max_lines).round().astype(np.int64)
        matches, errors = matches[pick], errors[pick]
    shift = 4  # fixed-point sub-pixel drawing
    pa = np.round(np.asarray(kp_a, np.float64)[matches[:, 0]] * (1 << shift)).astype(np.int64)
    pb = np.asarray(kp_b, np.float64)[matches[:, 1]] + [a.shape[1], 0]
    pb = np.round(pb * (1 << shift)).astype(np.int64)
    correct = errors <= eps
    for flag, colour in ((False, WRONG_BGR), (True, CORRECT_BGR)):  # correct ones on top
        for (xa, ya), (xb, yb) in zip(pa[correct == flag], pb[correct == flag]):
            cv2.line(canvas, (int(xa), int(ya)), (int(xb), int(yb)), colour, 1, cv2.LINE_AA, shift)
            cv2.circle(canvas, (int(xa), int(ya)), 2 << shift, colour, 1, cv2.LINE_AA, shift)
            cv2.circle(canvas, (int(xb), int(yb)), 2 << shift, colour, 1, cv2.LINE_AA, shift)
    return np.concatenate([title_band(canvas.shape[1], title), canvas]) if title else canvas


def title_band(width: int, title: str) -> np.ndarray:
    """A black band with the title's ' | '-separated parts on their own lines (above, not over,
    the images: small images would otherwise be hidden)."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    lines = [line.strip() for line in title.split(" | ")]
    (_, h), base = cv2.getTextSize("Ag", font, scale, 1)
    step = h + base + 3
    band = np.zeros((step * len(lines) + 4, width, 3), np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (4, h + 3 + i * step), font, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return band


def write_overlay(path: Path, canvas: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"cannot write {path}")
    return path
