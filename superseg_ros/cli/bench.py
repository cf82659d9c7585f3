"""superseg-bench: end-to-end speed of the models users run, per architecture, backend and size.

Rows, all in one process and one run so that their ratios hold:
    reference  the architecture models/superseg.pt had until the lean default shipped (`dilated`,
               REFERENCE_CONFIG, random weights: speed does not depend on them) in torch eager,
               the row every speed-up is measured against (same size)
    lean       the default architecture: the bundled model without --model, else random
               weights unless --model is a lean checkpoint, in every requested backend
    --model    in every requested backend, when it is neither of the above

Each row times the Extractor's three steps on one synthetic scene (demo.render_scene):
preprocess, network and post-processing; end-to-end frames per second = 1000 / median of the
per-run sums. The runs are interleaved (see `schedule`): every repeat runs each (row, size)
once, in an order that rotates by one per repeat, so a slow spell of a busy machine slows every
row alike. No peak memory: in one process it cannot be attributed to a row.

A backend the extractor cannot build (unknown, or its runtime is not installed) is a skipped row
with the reason; the bench goes on.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

BACKENDS = ("torch", "onnxruntime", "openvino", "auto")
DEFAULT_BACKENDS = ["torch", "onnxruntime"]
DEFAULT_SIZES = ["480x640", "240x320"]
STAGES = ("preprocess", "network", "postprocess")
RANDOM_WEIGHTS = "random weights (timing only)"
# the shipped model's architecture before the lean default (models/superseg.pt until issue 11)
REFERENCE_CONFIG = {"preset": "dilated", "encoder_width": 32, "head_channels": 128,
                    "aspp_channels": 128, "decoder_channels": 128}
REFERENCE_WEIGHTS = "random weights (the model shipped before the lean default)"
# Every row does the same work: every head runs (the semantic filter forced on, as with a model
# whose semantic head is trained), and every row post-processes the full keypoint budget
# (threshold 0, rejected keypoints kept), whatever its weights (random or untrained heads would
# otherwise yield anything from 0 to 1000 keypoints).
EXTRACTOR_CONFIG = {"semantic_filter": "on", "force_semantic": True, "keep_unstable": True,
                    "detection_threshold": 0.0}
RUNTIMES = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino",),
            "auto": ("onnxruntime", "openvino")}


# ----------------------------------------------------------------------------------- arguments
def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="superseg-bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, metavar="PATH|random",
                   help="checkpoint to time (default: the bundled models/superseg.pt)")
    p.add_argument("--backend", nargs="+", default=DEFAULT_BACKENDS, choices=BACKENDS,
                   help=f"backends for the lean and --model rows (default: "
                        f"{' '.join(DEFAULT_BACKENDS)}); the reference row is torch")
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, metavar="HxW",
                   help=f"input sizes (default: {' '.join(DEFAULT_SIZES)})")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per row and size")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per row and size first")
    p.add_argument("--max-keypoints", type=int, default=1000)
    p.add_argument("--json", type=Path, help="also write header and rows to this JSON file")
    args = p.parse_args(argv)

    args.sizes = [parse_size(p, s) for s in args.sizes]
    args.backend = list(dict.fromkeys(args.backend))  # each once, in the order given
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1 and --warmup >= 0")
    # checked now so a long run does not fail at the very end
    if args.json is not None and not args.json.parent.is_dir():
        p.error(f"--json: folder {args.json.parent} does not exist")
    return args


def parse_size(parser, text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 8:
        parser.error(f"size {text!r} is not HEIGHTxWIDTH with both at least 8, e.g. 480x640")
    return int(match[1]), int(match[2])


# -------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One model in one backend; `runs[size]` holds one {stage: ms} dict per timed run."""

    architecture: str
    weights: str
    backend: str
    model: object = field(repr=False)
    reference: bool = False
    extractor: object = field(default=None, repr=False)
    skipped: str | None = None   # why the backend could not be built
    failed: str | None = None    # what went wrong while running
    runs: dict = field(default_factory=dict)
    keypoints: dict = field(default_factory=dict)


def architecture(model) -> dict:
    """The config that decides speed (the number of classes barely changes it)."""
    return {k: v for k, v in model.config.items() if k != "num_classes"}


def row_label(model, lean) -> str:
    """The model's preset, and what differs from the lean default when that is one to three
    settings (the bundled model: 'lean (decoder_stride 4, subpixel_window 3, subpixel_head
    False)'); a wholly other network of the same preset (another encoder, widths) is named by
    its preset only."""
    conf = model.config
    if conf["preset"] != lean.config["preset"]:
        return conf["preset"]
    changed = [f"{k} {v}" for k, v in conf.items()
               if k not in ("preset", "num_classes") and lean.config.get(k) != v]
    return conf["preset"] + (f" ({', '.join(changed)})" if 0 < len(changed) <= 3 else "")


def plan_rows(spec: str | None, backends: list[str]) -> list[Row]:
    """The reference row, the lean rows and the --model rows (see the module's docstring)."""
    import torch

    from ..checkpoint import bundled_model_path, open_model
    from ..network import SuperSegmentation

    torch.manual_seed(0)
    reference = SuperSegmentation(REFERENCE_CONFIG).eval()
    rows = [Row("dilated (reference)", REFERENCE_WEIGHTS, "torch", reference, reference=True)]
    lean, lean_weights = SuperSegmentation().eval(), RANDOM_WEIGHTS
    bundled = bundled_model_path()
    is_bundled = spec is None or (spec != "random" and bundled is not None
                                  and Path(spec).resolve() == bundled.resolve())
    model, name = open_model(None if is_bundled else spec)
    weights = RANDOM_WEIGHTS if spec == "random" else (f"bundled {name}" if is_bundled else name)
    if architecture(model) == architecture(lean):  # the lean default (bundled or given)
        lean, lean_weights = model, weights
    rows += [Row(lean.config["preset"], lean_weights, b, lean) for b in backends]
    if model is not lean:
        rows += [Row(row_label(model, lean), weights, b, model) for b in backends]
    return rows


def extractor_config(backend: str, max_keypoints: int) -> dict:
    return {**EXTRACTOR_CONFIG, "max_keypoints": max_keypoints, "backend": backend}


def build_extractors(rows: list[Row], max_keypoints: int) -> None:
    from ..config import ConfigError
    from ..extractor import Extractor

    for row in rows:
        try:
            row.extractor = Extractor(row.model, extractor_config(row.backend, max_keypoints),
                                      device="cpu")
        except (ConfigError, ImportError) as exc:
            row.skipped = f"{type(exc).__name__}: {first_line(exc)}"
            continue
        used = row.extractor.backend  # what `auto` chose
        if used != row.backend:
            row.backend = f"{row.backend} ({used})"


def scene(size: tuple[int, int]):
    """The demo's street scene (edges, corners, texture: realistic NMS work, not noise) at
    `size`; drawn at 240x320 or more, which render_scene needs, and shrunk for smaller sizes."""
    import cv2

    from ..demo import render_scene

    height, width = size
    image = render_scene(max(height, 240), max(width, 320))
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


# ------------------------------------------------------------------------------------- timing
def schedule(rows: list, sizes: list, repeats: int) -> list[list[tuple]]:
    """One round per repeat, each (row, size) once per round; round r starts r places further
    along the same fixed order, so no row always runs first (after a pause) or last."""
    pairs = [(row, size) for size in sizes for row in rows]
    return [[pairs[(r + i) % len(pairs)] for i in range(len(pairs))] for r in range(repeats)]


def time_once(extractor, image) -> tuple[dict, int]:
    """{stage: ms} of one image through preprocess, network and post-processing; keypoints."""
    stamps = [time.perf_counter()]
    batch, sizes = extractor.preprocess(image)
    stamps.append(time.perf_counter())
    outputs = extractor.network(batch)
    stamps.append(time.perf_counter())
    features = extractor.postprocess(outputs, sizes)
    stamps.append(time.perf_counter())
    times = {stage: (t1 - t0) * 1e3 for stage, t0, t1 in zip(STAGES, stamps, stamps[1:])}
    return times, int(features.valid.sum())


def run_rounds(rounds, images: dict, timed: bool, progress) -> None:
    import torch

    with torch.inference_mode():
        for pairs in rounds:
            for row, size in pairs:
                progress.update()
                if row.failed:
                    continue
                try:
                    times, keypoints = time_once(row.extractor, images[size])
                except Exception as exc:  # one broken backend must not end the whole bench
                    row.failed = f"{type(exc).__name__}: {first_line(exc)}"
                    continue
                if timed:
                    row.runs.setdefault(size, []).append(times)
                    row.keypoints[size] = keypoints


# ------------------------------------------------------------------------------------ results
def summarise(rows: list[Row], sizes: list) -> list[dict]:
    """One dict per (row, size), in table order; speed-up against the reference of that size."""
    results = []
    for size in sizes:
        for row in rows:
            result = {"architecture": row.architecture, "weights": row.weights,
                      "backend": row.backend, "reference": row.reference, "size": list(size)}
            if row.skipped or row.failed:
                results.append({**result, "status": "skipped" if row.skipped else "failed",
                                "reason": row.skipped or row.failed})
                continue
            runs = row.runs[size]
            total = statistics.median(sum(run.values()) for run in runs)
            results.append({
                **result, "status": "ok",
                **{f"{s}_ms": round(statistics.median(r[s] for r in runs), 2) for s in STAGES},
                "total_ms": round(total, 2), "fps": round(1000 / total, 2),
                "keypoints": row.keypoints[size],
                "times_ms": {s: [round(r[s], 2) for r in runs] for s in STAGES}})
    for result in results:
        ref = next(r for r in results if r["reference"] and r["size"] == result["size"])
        result["speedup"] = (round(ref["total_ms"] / result["total_ms"], 2)
                             if result["status"] == ref["status"] == "ok" else None)
    return results


def runtime_versions(backends: list[str]) -> dict:
    versions = {}
    for package in sorted({p for b in backends for p in RUNTIMES.get(b, ())}):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_header(args, load_before: float) -> dict:
    import torch

    return {
        "tool": "superseg-bench",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_name(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, **runtime_versions(args.backend),
        "repeats": args.repeats, "warmup": args.warmup, "max_keypoints": args.max_keypoints,
        "extractor_config": EXTRACTOR_CONFIG,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "note": "CPU numbers of this machine only; one image per batch; medians of interleaved "
                "runs; no peak memory (all rows share one process)",
    }


def render(header: dict, results: list[dict]) -> str:
    runtimes = "".join(f", {p} {header[p]}" for p in ("onnxruntime", "openvino") if p in header)
    lines = [
        "# superseg-bench",
        "",
        f"{header['date']}: {header['cpu']}, {header['cpus']} CPUs, {header['torch_threads']} "
        f"torch threads, torch {header['torch']}{runtimes}. CPU numbers of this machine only.",
        f"Median of {header['repeats']} interleaved runs after {header['warmup']} warm-up; one "
        f"image; {header['max_keypoints']} keypoints (threshold 0); all four heads run (semantic "
        "filter forced on). fps = 1000 / median(preprocess + network + post-processing); speed-up = "
        "the reference row's median over this row's, same size. 1-min load average "
        "{} before, {} after.".format(*header["load_average_1min"]),
        "",
        "| architecture | weights | backend | H x W | preprocess ms | network ms "
        "| post-processing ms | keypoints | end-to-end fps | speed-up |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        head = (f"| {r['architecture']} | {r['weights']} | {r['backend']} "
                f"| {r['size'][0]}x{r['size'][1]} |")
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r['reason'].replace('|', '/')} |||||")
            continue
        lines.append(f"{head} {r['preprocess_ms']:.1f} | {r['network_ms']:.1f} "
                     f"| {r['postprocess_ms']:.1f} | {r['keypoints']} | {r['fps']:.2f} "
                     f"| {'-' if r['speedup'] is None else format(r['speedup'], '.2f') + 'x'} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    torch.set_num_threads(args.threads)  # once, for every row: they share this process
    try:
        rows = plan_rows(args.model, args.backend)
    except (CheckpointError, ConfigError) as exc:
        print(f"superseg-bench: error: {exc}", file=sys.stderr)
        return 2
    build_extractors(rows, args.max_keypoints)
    running = [row for row in rows if not row.skipped]
    images = {size: scene(size) for size in args.sizes}

    load_before = os.getloadavg()[0]  # other busy processes make every timing slower
    rounds = schedule(running, args.sizes, args.warmup + args.repeats)
    with tqdm(total=sum(map(len, rounds)), desc="superseg-bench", unit="run",
              file=sys.stderr) as progress:
        run_rounds(rounds[:args.warmup], images, False, progress)
        run_rounds(rounds[args.warmup:], images, True, progress)

    header = make_header(args, load_before)
    results = summarise(rows, args.sizes)
    print(render(header, results), end="")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": results}, indent=2) + "\n")
    return 1 if any(row.failed for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
