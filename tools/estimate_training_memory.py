#!/usr/bin/env python3
"""Estimate the peak memory of a training config by running real training steps.

    python tools/estimate_training_memory.py training/configs/cityscapes_4070ti.yaml
    python tools/estimate_training_memory.py CONFIG --size 256 512 --batches 1 2

For each batch size in --batches, a fresh Python process builds the config's model (the
architecture of init.checkpoint when that file exists, else the config's `model` block), makes a
random batch with the stage's shapes at the measured resolution, and runs --steps optimiser steps
of the stage's real losses (forward, backward, Adam; the first step allocates Adam's moments).
Its peak memory is

- on CUDA: torch.cuda.max_memory_allocated() (with the config's AMP setting), or
- on the CPU: the growth of the process's peak resident set (ru_maxrss) from just before the
  model is built to the end: weights, gradients, Adam state, activations kept for backward and
  the allocator's overhead; in fp32 (CPU training has no AMP).

Two batch sizes give a straight line, peak = fixed + per_item * batch: `fixed` holds the weights,
gradients and Adam moments (4 copies of the parameters), `per_item` the activations of one item
(for pair stages, one pair = 2 images). When --size differs from the config's data size, per_item
is scaled by the ratio of pixel counts (activations are proportional to the pixels; the fixed part
is not). The result is extrapolated to the config's per-process batch_size (gradient accumulation
does not add activations). With AMP on CUDA most kept activations are fp16, so the activation
part roughly halves: reported as per_item / 2 (an estimate, not a measurement). A CUDA process
also needs its context and cuDNN workspaces (assumed 0.8 GiB here, on top).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree's superseg_ros

CUDA_OVERHEAD_GIB = 0.8  # CUDA context + cuDNN workspace + allocator slack (assumption)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="training config (YAML)")
    parser.add_argument("--batches", type=int, nargs=2, default=[1, 2], metavar=("B1", "B2"),
                        help="the two batch sizes measured (default 1 2)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="measure at this resolution instead of the config's data size "
                             "(per-item memory is scaled by the pixel ratio)")
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--gpu-gib", type=float, default=12.0, help="memory of the target GPU")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def config_size(config: dict) -> tuple[int, int]:
    data = config["data"]
    if config["stage"] == "magicpoint":
        shapes = data.get("shapes", {})
        return int(shapes.get("height", 240)), int(shapes.get("width", 320))
    size = data.get("size") or ([512, 1024] if config["stage"] == "labelled" else [240, 320])
    return int(size[0]), int(size[1])


def build_model(config: dict):
    import torch
    from superseg_ros.checkpoint import load_model
    from superseg_ros.network import SuperSegmentation
    from superseg_ros.training.stages import STAGES
    path = config["init"]["checkpoint"]
    if path and Path(path).is_file():
        return load_model(path), f"architecture of {path}"
    model_conf = dict(config["model"])
    semantics = None
    stage = STAGES[config["stage"]]
    if hasattr(stage, "model_semantics"):
        from superseg_ros.semantics import semantics_for
        mode = config["data"].get("label_mode", "classes")
        semantics = semantics_for(mode, config["data"].get("dataset", "cityscapes"))
        model_conf["num_classes"] = len(semantics["classes"])
    torch.manual_seed(0)
    note = f"config model block {config['model'] or '(defaults)'}"
    if path:
        note += f" ({path} does not exist here)"
    return SuperSegmentation(model_conf, semantics), note


def random_batch(stage: str, batch: int, h: int, w: int, num_classes: int, device):
    import torch
    g = torch.Generator().manual_seed(0)
    hc, wc = h // 8, w // 8

    def view():
        return {"image": torch.rand(batch, 3, h, w, generator=g),
                "labels": torch.randint(0, 65, (batch, hc, wc), generator=g),
                "offsets": torch.rand(batch, hc, wc, 2, generator=g) - 0.5,
                "valid_cells": torch.ones(batch, hc, wc, dtype=torch.bool)}

    if stage == "magicpoint":
        out = view()
    else:
        a, b = view(), view()
        out = {f"{k}_a": v for k, v in a.items()}
        out.update({f"{k}_b": v for k, v in b.items()})
        out["image_a"], out["image_b"] = out.pop("image_a"), out.pop("image_b")
        shift = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
        shift[:, 0, 2] = 3.0
        out.update({"H": shift, "valid_b": torch.ones(batch, h, w, dtype=torch.bool)})
        if stage == "labelled":
            for v in ("a", "b"):
                out[f"segmentation_{v}"] = torch.randint(0, num_classes, (batch, h, w),
                                                         generator=g).to(torch.uint8)
    return {k: v.to(device) for k, v in out.items()}


def child(args) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch
    from superseg_ros.config import merge_config
    from superseg_ros.extractor import resolve_device
    from superseg_ros.training.config import load_config
    from superseg_ros.training.stages import STAGES

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    device = resolve_device(config["device"] if config["device"] != "cuda" or
                            torch.cuda.is_available() else "cpu")
    h, w = args.size or config_size(config)
    cuda = device.type == "cuda"
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    model, source = build_model(config)
    model = model.to(device).train()
    stage_class = STAGES[config["stage"]]
    stage = stage_class.__new__(stage_class)  # the losses only need the loss settings
    stage.weights = merge_config(stage_class.loss_defaults, config["loss"], where="loss")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = bool(config["amp"]) and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    batch = random_batch(config["stage"], args.child, h, w, model.config["num_classes"], device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for step in range(args.steps):
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            losses, _ = stage.losses(model, batch, torch.Generator().manual_seed(step))
            total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    seconds = (time.perf_counter() - start) / args.steps
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        kind = "cuda max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
        kind = "cpu ru_maxrss growth"
    params = sum(p.numel() for p in model.parameters())
    return {"batch": args.child, "size": [h, w], "peak_mib": round(peak, 1), "kind": kind,
            "amp": amp, "seconds_per_step": round(seconds, 2), "parameters": params,
            "model": source, "model_config": model.config}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    from superseg_ros.training.config import load_config
    config = load_config(args.config)
    target = config_size(config)
    measured_size = tuple(args.size) if args.size else target
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    results = []
    for b in args.batches:
        cmd = [sys.executable, __file__, args.config, "--child", str(b), "--steps",
               str(args.steps), "--threads", str(args.threads)]
        if args.size:
            cmd += ["--size", *map(str, args.size)]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode:
            print(run.stderr, file=sys.stderr)
            return run.returncode
        r = json.loads(run.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"batch {b} at {measured_size[0]}x{measured_size[1]}: peak {r['peak_mib']:.0f} MiB "
              f"({r['kind']}), {r['seconds_per_step']:.1f} s/step, "
              f"process {time.perf_counter() - t0:.0f} s")
    (b1, m1), (b2, m2) = [(r["batch"], r["peak_mib"]) for r in results]
    per_item = (m2 - m1) / (b2 - b1)
    fixed = m1 - per_item * b1
    pixel_ratio = (target[0] * target[1]) / (measured_size[0] * measured_size[1])
    per_item_target = per_item * pixel_ratio
    batch = config["batch_size"]
    fp32 = fixed + per_item_target * batch
    amp = fixed + per_item_target / 2 * batch
    params = results[0]["parameters"]
    pair = "pair (2 images)" if config["stage"] != "magicpoint" else "image"
    cuda = results[0]["kind"].startswith("cuda")
    overhead = 0 if cuda else CUDA_OVERHEAD_GIB * 1024
    report = {
        "config": args.config, "model": results[0]["model"], "parameters": params,
        "measured": results, "measured_size": list(measured_size), "target_size": list(target),
        "pixel_ratio": pixel_ratio, "fixed_mib": round(fixed), "per_item_mib_measured":
        round(per_item), "per_item_mib_at_target": round(per_item_target),
        "batch_size": batch, "accumulate": config["accumulate"],
        "estimate_fp32_mib": round(fp32), "estimate_amp_mib": round(amp),
        "cuda_overhead_mib_assumed": round(overhead),
    }
    print(json.dumps(report, indent=2))
    use_amp = bool(config["amp"])
    total = (amp if use_amp else fp32) + overhead
    fits = "fits" if total <= args.gpu_gib * 1024 else "does NOT fit"
    print(f"\n{params / 1e6:.1f} M parameters; fixed (weights, gradients, Adam) {fixed:.0f} MiB; "
          f"activations {per_item_target:.0f} MiB per {pair} at {target[0]}x{target[1]}"
          + (f" (measured at {measured_size[0]}x{measured_size[1]}, x{pixel_ratio:g})"
             if pixel_ratio != 1 else ""))
    print(f"batch {batch} per process: fp32 {fp32 / 1024:.1f} GiB, AMP ~{amp / 1024:.1f} GiB"
          + (f", + {overhead / 1024:.1f} GiB CUDA context/workspace" if overhead else "")
          + f" -> {total / 1024:.1f} GiB: {fits} in {args.gpu_gib:g} GiB")
    if total > args.gpu_gib * 1024:
        room = args.gpu_gib * 1024 - overhead - fixed
        per = per_item_target / (2 if use_amp else 1)
        print(f"largest batch that fits: {max(0, math.floor(room / per))} per process "
              "(use accumulate for a larger effective batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
