"""superseg-export: write the network (no NMS / post-processing) to ONNX and check it against torch.

The graph takes `image`, float32 (B, 3, H, W) RGB in [0, 1] with H and W multiples of 8 (batch,
H and W dynamic), and returns heatmap, descriptors, offsets and, unless --no-semantics,
segmentation. After writing, onnxruntime and torch run on random inputs at sizes other than the
export size; exit code 1 if an output differs by more than --tolerance and by more than 4x torch's
own fp32 rounding error (torch fp32 vs fp64), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..checkpoint import RANDOM, CheckpointError, open_model
from ..config import ConfigError
from ..network import CELL

PROG = "superseg-export"


def parse_args(argv) -> argparse.Namespace:
    from ..export import DEFAULT_TOLERANCE

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True,
                   help="checkpoint path, or 'random' for an untrained default-config network")
    p.add_argument("--output", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--height", type=int, default=480,
                   help="example height used to trace the graph (H stays dynamic; default 480)")
    p.add_argument("--width", type=int, default=640,
                   help="example width used to trace the graph (W stays dynamic; default 640)")
    p.add_argument("--no-semantics", action="store_true",
                   help="leave out the segmentation head and its output")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"max abs error allowed per output (default {DEFAULT_TOLERANCE:g}); "
                        "an error up to 4x torch's own fp32-vs-fp64 error also passes")
    p.add_argument("--skip-verify", action="store_true",
                   help="do not compare onnxruntime with torch after export")
    args = p.parse_args(argv)
    for option in ("height", "width"):
        value = getattr(args, option)
        if value < CELL or value % CELL:
            nearest = max(CELL, round(value / CELL) * CELL)
            p.error(f"--{option} must be a positive multiple of {CELL} (the network's stride), "
                    f"got {value}; e.g. --{option} {nearest}")
    if not args.tolerance > 0:
        p.error(f"--tolerance must be > 0, got {args.tolerance}")
    if args.output.is_dir():
        p.error(f"--output {args.output} is a folder; give a file name such as model.onnx")
    return args


def error(message: str, code: int = 2) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def print_parity_table(results, sizes) -> None:
    """One row per output: its shape at each verify size and the worst errors over the sizes."""
    shapes = {(r.output, r.size): "x".join(map(str, r.shape)) for r in results}
    worst: dict[str, list[float]] = {}
    for r in results:
        errors = worst.setdefault(r.output, [0.0, 0.0])
        errors[:] = max(errors[0], r.max_abs_error), max(errors[1], r.fp32_noise)
    headers = (["output"] + [f"shape at {h}x{w}" for h, w in sizes]
               + ["max abs error", "torch fp32 vs fp64"])
    rows = [[name] + [shapes[name, tuple(s)] for s in sizes] + [f"{err:.2e}", f"{noise:.2e}"]
            for name, (err, noise) in worst.items()]
    widths = [max(len(row[i]) for row in [headers] + rows) for i in range(len(headers))]
    for row in [headers] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def main(argv=None) -> int:
    args = parse_args(argv)
    from ..export import (DEFAULT_VERIFY_SIZES, MissingOnnxDependency, OnnxParityError,
                          check_parity, export_onnx, measure_parity)

    try:
        model, description = open_model(args.model)
    except (CheckpointError, ConfigError) as exc:
        return error(str(exc))
    if args.model == RANDOM:
        print(f"{PROG}: using {description}: randomly initialised, default config")
    semantics = not args.no_semantics

    start = time.perf_counter()
    try:
        path = export_onnx(model, args.output, args.height, args.width, semantics=semantics)
    except MissingOnnxDependency as exc:
        return error(str(exc))
    except OSError as exc:
        return error(f"cannot write {args.output}: {exc}")
    print(f"{PROG}: wrote {path} ({model.config['encoder']}, traced at "
          f"{args.height}x{args.width}; batch, H and W dynamic, H and W multiples of {CELL}) "
          f"in {time.perf_counter() - start:.1f} s")

    failure = None
    if not args.skip_verify:
        try:
            start = time.perf_counter()
            results = measure_parity(model, path, DEFAULT_VERIFY_SIZES, semantics)
            print(f"{PROG}: onnxruntime vs torch on random batches of 2 "
                  f"({time.perf_counter() - start:.1f} s):")
            print_parity_table(results, DEFAULT_VERIFY_SIZES)
            check_parity(results, args.tolerance)
        except MissingOnnxDependency as exc:
            return error(str(exc))
        except OnnxParityError as exc:
            failure = exc
    print(f"file size: {path.stat().st_size / 2**20:.1f} MiB")
    if failure is not None:
        return error(f"{failure} (the file was written but does not reproduce the model)", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
