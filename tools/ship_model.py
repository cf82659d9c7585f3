#!/usr/bin/env python3
"""Copy a trained checkpoint to models/superseg.pt with fp16 storage (half the size).

    python tools/ship_model.py runs/camvid_cpu_balanced/model.pt
    python tools/ship_model.py CKPT --set subpixel_window=3 --set subpixel_head=false

The file keeps the training record (meta: stages, configs, steps, wall time), the class table
and the list of trained heads as the checkpoint has them: a model whose semantic head was
trained on labelled frames ships with the semantic filter on (`semantic_filter: auto`), one
without stays marked untrained and runs unfiltered. Loading restores fp32 weights.

`--set` changes a sub-pixel refinement setting that was chosen after training (see
superseg_ros.checkpoint.REFINEMENT_KEYS); the file's meta records the change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from superseg_ros.checkpoint import load_model, save_checkpoint, with_refinement  # noqa: E402
from superseg_ros.config import ConfigError, apply_overrides  # noqa: E402

LIMIT_MB = 30.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--output", default=str(ROOT / "models" / "superseg.pt"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a refinement setting of the model config, e.g. subpixel_window=3")
    args = p.parse_args(argv)
    model = load_model(args.checkpoint)
    meta = dict(model.meta, shipped_from=str(args.checkpoint), storage="fp16")
    if args.set:
        try:
            settings = apply_overrides({}, args.set, example="subpixel_window=3")
            model, dropped = with_refinement(model, settings)
        except ConfigError as exc:
            print(f"ship_model: error: {exc}", file=sys.stderr)
            return 2
        meta["set_at_shipping"] = settings
        if dropped:
            print(f"ship_model: left out {len(dropped)} weights the settings no longer use "
                  f"({dropped[0]}, ...)")
    path = save_checkpoint(model, args.output, meta=meta, half=True)
    size = path.stat().st_size / 2**20
    print(f"{path}: {size:.1f} MiB, heads {model.trained_heads}")
    if size > LIMIT_MB:
        print(f"ship_model: {path} is larger than {LIMIT_MB} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
