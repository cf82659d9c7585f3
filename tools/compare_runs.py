"""Compare training runs per wall-clock minute: validation metrics against the time each was reached.

    python tools/compare_runs.py runs/stage1_lean runs/stage1_dilated [--metric average_precision]

Reads each run's metrics.jsonl and model.pt. The minute of a validation is estimated from the
logged training rates (each interval of `log_every` steps took log_every / steps_per_s seconds,
validations and checkpoints included), scaled so the last step lands on the checkpoint's recorded
wall time. Prints a markdown table per run and, for the first metric, when each run first reached
the other run's final value.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def read_run(folder: Path) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    meta = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)["meta"]
    return records, meta


def minutes_at_steps(records: list[dict], wall_time_s: float) -> dict[int, float]:
    """step -> estimated wall minutes at that step, from the logged training rates."""
    elapsed, previous, at = 0.0, 0, {}
    for r in records:
        if r["kind"] == "train" and r.get("steps_per_s"):
            elapsed += (r["step"] - previous) / r["steps_per_s"]
            previous = r["step"]
            at[r["step"]] = elapsed
    scale = wall_time_s / elapsed if elapsed else 1.0
    return {step: seconds * scale / 60 for step, seconds in at.items()}


def validation_table(folder: Path, metrics: list[str]) -> tuple[list[tuple], dict]:
    records, meta = read_run(folder)
    minutes = minutes_at_steps(records, meta["wall_time_s"])
    rows = []
    for r in records:
        if r["kind"] == "validation":
            step = r["step"]
            minute = minutes.get(step, minutes[max(s for s in minutes if s <= step)])
            rows.append((step, minute, *(r[m] for m in metrics)))
    return rows, meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--metric", nargs="+", default=["average_precision", "localization_error"])
    args = p.parse_args(argv)
    tables = {}
    for folder in args.runs:
        if not (folder / "metrics.jsonl").is_file() or not (folder / "model.pt").is_file():
            print(f"compare_runs: {folder} is not a finished run (metrics.jsonl, model.pt)",
                  file=sys.stderr)
            return 2
        rows, meta = validation_table(folder, args.metric)
        tables[folder] = rows
        arch = meta["config"]["model"].get("preset", "?")
        print(f"\n{folder} (preset {arch}): {meta['step']} steps in "
              f"{meta['wall_time_s'] / 60:.1f} min")
        print("| step | minute | " + " | ".join(args.metric) + " |")
        print("|---:|---:|" + "---:|" * len(args.metric))
        for step, minute, *values in rows:
            print(f"| {step} | {minute:.1f} | " + " | ".join(f"{v:.4g}" for v in values) + " |")
    first = args.metric[0]
    for a in tables:
        for b in tables:
            if a == b:
                continue
            target = tables[b][-1][2]
            reached = next(((s, m) for s, m, v, *_ in tables[a] if v >= target), None)
            print(f"\n{a} reaches {b}'s final {first} ({target:.4g}) "
                  + (f"at step {reached[0]}, minute {reached[1]:.1f}" if reached else "never"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
