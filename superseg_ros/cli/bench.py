"""superseg-bench: median latency of the extractor's stages per backbone and input resolution.

For every (backbone, resolution) a fresh worker process (`python -m superseg_ros.cli.bench
--worker ...`) builds a randomly initialised network, runs the Extractor on a deterministic
synthetic scene and prints one JSON line: median milliseconds of preprocess, network and
postprocess, the number of keypoints returned and the peak memory of that process. One process
per configuration keeps peak memory honest (ru_maxrss never goes down) and lets a configuration
that runs out of memory fail alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..network.encoders import ENCODERS

DEFAULT_RESOLUTIONS = "240x320,480x640,512x1024"
MAX_KEYPOINTS = 1000
# Semantic masking forced on (the random semantic head is "untrained") and every keypoint kept,
# so postprocess does all of its work: NMS, masks, top-K, sub-pixel, descriptor sampling.
EXTRACTOR_CONFIG = {"semantic_filter": "on", "force_semantic": True, "keep_unstable": True,
                    "detection_threshold": 0.0, "max_keypoints": MAX_KEYPOINTS}
STAGES = ("preprocess", "network", "postprocess")
CPU_WAIT_WARNING = 5  # percent; above this the machine was busy with other work


# ----------------------------------------------------------------------------------- arguments
def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="superseg-bench", description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default=",".join(ENCODERS),
                   help=f"comma list of encoders (default: all: {','.join(ENCODERS)})")
    p.add_argument("--resolutions", default=DEFAULT_RESOLUTIONS,
                   help=f"comma list of HEIGHTxWIDTH (default: {DEFAULT_RESOLUTIONS})")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before the timed ones")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--markdown", type=Path, help="also write the table to this Markdown file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    unknown = [b for b in args.backbones if b not in ENCODERS]
    if unknown or not args.backbones:
        p.error(f"unknown backbone {', '.join(map(repr, unknown)) or '(empty list)'}; "
                f"valid: {', '.join(ENCODERS)}")
    args.resolutions = [parse_resolution(p, r) for r in args.resolutions.split(",") if r.strip()]
    if not args.resolutions:
        p.error("--resolutions is empty; give e.g. 480x640")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        # Checked now so a long run does not fail at the very end.
        if path is not None and not path.parent.is_dir():
            p.error(f"{option}: folder {path.parent} does not exist")
    if args.worker and (len(args.backbones) != 1 or len(args.resolutions) != 1):
        p.error("--worker runs exactly one backbone and one resolution")

    from ..config import ConfigError
    from ..extractor import resolve_device
    try:
        args.device = resolve_device(args.device).type
    except ConfigError as exc:
        p.error(str(exc))
    return args


def parse_resolution(parser, text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        parser.error(f"resolution {text!r} is not HEIGHTxWIDTH with positive integers, "
                     "e.g. 480x640")
    return int(match[1]), int(match[2])


# -------------------------------------------------------------------------------------- worker
def cpu_wait_ns() -> int | None:
    """Nanoseconds this process's threads spent runnable but waiting for a CPU (Linux schedstat).

    Non-zero means other processes were competing for the cores, which inflates every timing.
    """
    try:
        return sum(int((task / "schedstat").read_text().split()[1])
                   for task in Path("/proc/self/task").iterdir())
    except (OSError, IndexError, ValueError):
        return None


def run_worker(args) -> dict:
    import resource
    import torch

    from ..demo import render_scene
    from ..extractor import Extractor
    from ..network import SuperSegmentation

    (backbone,), ((height, width),) = args.backbones, args.resolutions
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:  # CUDA kernels are asynchronous: wait for them, or we time the launch only
            torch.cuda.synchronize(device)

    def memory_mib() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated(device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    torch.manual_seed(0)
    extractor = Extractor(SuperSegmentation({"encoder": backbone}), EXTRACTOR_CONFIG, device)
    image = render_scene(height, width)  # edges, corners and texture, not pure noise
    sync()
    baseline = memory_mib()  # Python + torch + weights, before any inference

    times = {stage: [] for stage in STAGES}
    with torch.inference_mode():
        for run in range(args.warmup + args.repeats):
            if run == args.warmup:  # the timed runs start
                wait_start, wall_start = cpu_wait_ns(), time.perf_counter()
            stamps = [time.perf_counter()]
            batch, sizes = extractor.preprocess(image)
            sync()
            stamps.append(time.perf_counter())
            outputs = extractor.network(batch)
            sync()
            stamps.append(time.perf_counter())
            features = extractor.postprocess(outputs, sizes)
            sync()
            stamps.append(time.perf_counter())
            if run >= args.warmup:
                for stage, t0, t1 in zip(STAGES, stamps, stamps[1:]):
                    times[stage].append((t1 - t0) * 1000)
            del batch, outputs  # so peak memory is one run's worth, not two overlapping
    sync()
    wall, wait_end = time.perf_counter() - wall_start, cpu_wait_ns()
    cpu_wait = (None if wait_start is None or wait_end is None or cuda
                else 100 * (wait_end - wait_start) / 1e9 / (wall * torch.get_num_threads()))

    median = {stage: statistics.median(values) for stage, values in times.items()}
    return {
        "backbone": backbone, "resolution": [height, width], "device": device.type,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        **{f"{stage}_ms": round(median[stage], 3) for stage in STAGES},
        "post_over_network_pct": round(100 * median["postprocess"] / median["network"], 2),
        "keypoints": int(features.valid.sum()),
        "memory": "CUDA max allocated" if cuda else "peak RSS",
        "baseline_mib": round(baseline, 1), "peak_mib": round(memory_mib(), 1),
        "cpu_wait_pct": None if cpu_wait is None else round(cpu_wait, 2),
        "times_ms": {stage: [round(t, 3) for t in values] for stage, values in times.items()},
    }


def spawn_worker(args, backbone: str, resolution: tuple[int, int]) -> dict:
    command = [sys.executable, "-m", "superseg_ros.cli.bench", "--worker",
               "--backbones", backbone, "--resolutions", "{}x{}".format(*resolution),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--device", args.device]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    row = {"backbone": backbone, "resolution": list(resolution)}
    proc = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:  # a result, or the error the worker caught
        return {**row, **json.loads(lines[-1])}
    if proc.returncode < 0:  # e.g. SIGKILL from the kernel's OOM killer
        error = f"killed by signal {-proc.returncode}" + (" (out of memory?)"
                                                          if proc.returncode == -9 else "")
    else:
        tail = [line for line in proc.stderr.splitlines() if line.strip()]
        error = tail[-1].strip() if tail else f"worker exited with code {proc.returncode}"
    return {**row, "error": error}


# --------------------------------------------------------------------------------------- table
def render(meta: dict, rows: list[dict]) -> str:
    memory = "CUDA max allocated" if meta["device"] == "cuda" else "peak RSS"
    lines = [
        "# superseg-bench",
        "",
        "RANDOMLY INITIALISED networks (no trained model exists yet): the timings are real, "
        "the keypoints are not meaningful.",
        f"torch {meta['torch']}, device {meta['device']}, {meta['threads']} threads; one image per "
        f"batch; median of {meta['repeats']} runs after {meta['warmup']} warm-up; "
        f"max_keypoints {MAX_KEYPOINTS}, semantic masking forced on. 1-min load average "
        "{} before, {} after, on {} CPUs.".format(*meta["loadavg_1min"], meta["cpus"]),
        "",
        f"| backbone | H x W | preprocess ms | network ms | postprocess ms | post/network "
        f"| keypoints | after build MiB | {memory} MiB | CPU wait |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        head = f"| {r['backbone']} | {r['resolution'][0]}x{r['resolution'][1]} |"
        if "error" in r:
            lines.append(f"{head} FAILED: {r['error'].replace('|', '/')} ||||||||")
            continue
        lines.append(
            f"{head} {r['preprocess_ms']:.1f} | {r['network_ms']:.1f} | {r['postprocess_ms']:.1f} "
            f"| {r['post_over_network_pct']:.1f} % | {r['keypoints']} | {r['baseline_mib']:.0f} "
            f"| {r['peak_mib']:.0f} (+{r['peak_mib'] - r['baseline_mib']:.0f}) "
            f"| {'-' if r['cpu_wait_pct'] is None else format(r['cpu_wait_pct'], '.1f') + ' %'} |")
    lines += ["", f"Memory is measured in a fresh process per row. 'after build' = {memory} right "
              "after imports and model construction (on the CPU it includes the Python/torch "
              "runtime); the last column is the peak over the whole run, with the increase over "
              "'after build' in brackets.",
              "CPU wait = time the worker's threads were ready to run but had no free core "
              "(Linux schedstat), as a share of threads x wall time of the timed runs."]
    if any((r.get("cpu_wait_pct") or 0) > CPU_WAIT_WARNING for r in rows):
        lines.append(f"Rows with CPU wait above {CPU_WAIT_WARNING} % ran while other processes "
                     "competed for the CPU: their times are inflated; rerun them on an idle "
                     "machine.")
    if any(r.get("keypoints", MAX_KEYPOINTS) < MAX_KEYPOINTS for r in rows):
        lines.append(f"Rows with fewer than {MAX_KEYPOINTS} keypoints: the random heatmap has "
                     "fewer NMS peaks than max_keypoints at that size (all of them are returned).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        try:
            result, code = run_worker(args), 0
        except Exception as exc:  # reported as a row of the table; the bench goes on
            message = str(exc).strip().splitlines()
            result, code = {"error": f"{type(exc).__name__}: {message[0] if message else ''}"}, 1
        print(json.dumps(result), flush=True)
        return code

    import torch
    configs = [(b, r) for b in args.backbones for r in args.resolutions]
    load_before = os.getloadavg()[0]  # other busy processes make every timing slower
    rows = []
    progress = tqdm(configs, desc="superseg-bench", unit="config", file=sys.stderr)
    for backbone, resolution in progress:
        progress.set_postfix_str("{} {}x{}".format(backbone, *resolution))
        rows.append(spawn_worker(args, backbone, resolution))
    progress.close()

    done = [r for r in rows if "error" not in r]
    meta = {"torch": torch.__version__, "device": args.device, "repeats": args.repeats,
            "warmup": args.warmup, "max_keypoints": MAX_KEYPOINTS, "random_weights": True,
            "threads": done[0]["threads"] if done else (args.threads or torch.get_num_threads()),
            "extractor_config": EXTRACTOR_CONFIG, "cpus": os.cpu_count(),
            "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    table = render(meta, rows)
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    return 1 if len(done) < len(rows) else 0  # the table is complete either way


if __name__ == "__main__":
    sys.exit(main())
