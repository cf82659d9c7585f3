#!/usr/bin/env python3
"""Regenerate the measured parts of models/README.md from a real evaluation run.

    python tools/model_card.py --model models/superseg.pt --images runs/data/heldout --pairs 41

Runs superseg-eval (the model with and without sub-pixel refinement, OpenCV SIFT and ORB, on the
same seeded pairs) and writes, between the markers in models/README.md:
  - the evaluation table (copied from the run's metrics.md, never typed by hand),
  - the training record read from the checkpoint itself (stages, steps, wall time, configs).
The run's full output (JSON, plots, overlays) stays in --output.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from superseg_ros.checkpoint import load_model  # noqa: E402
from superseg_ros.evaluation.cli import main as eval_main  # noqa: E402
from superseg_ros.evaluation.report import markdown_table  # noqa: E402

CARD = ROOT / "models" / "README.md"


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"model_card: {CARD} lacks the markers {start} ... {end}")
    return pattern.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", text)


def config_name(conf: dict) -> str:
    """The config file a run came from (adaptation rounds are named <config>_round<r>)."""
    return re.sub(r"_round\d+$", "", str(conf.get("name")))


def training_record(model) -> str:
    stages = list(model.meta.get("history", [])) + [
        {k: v for k, v in model.meta.items() if k != "history"}]
    lines = ["| stage | run | steps | wall time | batch | resolution | config |",
             "|---|---|--:|--:|--:|---|---|"]
    for s in stages:
        conf = s.get("config", {})
        data = conf.get("data", {})
        size = data.get("size") or [data.get("shapes", {}).get("height"),
                                    data.get("shapes", {}).get("width")]
        lines.append(f"| {s.get('stage')} | {s.get('name')} | {s.get('step')} | "
                     f"{s.get('wall_time_s', 0) / 60:.1f} min | {conf.get('batch_size')} | "
                     f"{size[0]}x{size[1]} | `training/configs/{config_name(conf)}.yaml` |")
    heads = ", ".join(f"{h}: {'trained' if t else 'UNTRAINED'}"
                      for h, t in model.trained_heads.items())
    return "\n".join(lines) + f"\n\nHeads: {heads}.\n"


def data_record(split_path: Path) -> str:
    """Which source folders fed training and the held-out evaluation (tools/prepare_images.py)."""
    split = json.loads(split_path.read_text())
    counts: dict[str, dict[str, int]] = {}
    for part in ("train", "heldout"):
        for item in split[part]:
            folder = str(Path(item["source"]).parent)
            counts.setdefault(folder, {"train": 0, "heldout": 0})[part] += 1
    lines = ["| source folder | training images | held-out images (last ones by name) |",
             "|---|--:|--:|"]
    lines += [f"| `{folder}` | {c['train']} | {c['heldout']} |" for folder, c in counts.items()]
    return "\n".join(lines) + (f"\n\nImages scaled to cover {split['cover_hw'][0]}x"
                                f"{split['cover_hw'][1]} (aspect kept) by "
                                f"`tools/prepare_images.py`; split file "
                                f"`{os.path.relpath(split_path, ROOT)}`.\n")


def quality_targets(summaries: dict) -> str:
    """The issue's targets, checked on this run's numbers (not typed by hand)."""
    model, no_sub = summaries["superseg"], summaries.get("superseg-no-subpixel", {})
    sift, orb = summaries["sift"], summaries["orb"]
    checks = [
        ("homography accuracy@3px >= ORB's", model["homography_accuracy@3px"],
         orb["homography_accuracy@3px"], model["homography_accuracy@3px"]
         >= orb["homography_accuracy@3px"]),
        ("repeatability@3px >= SIFT's", model["repeatability@3px"], sift["repeatability@3px"],
         model["repeatability@3px"] >= sift["repeatability@3px"]),
        ("sub-pixel refinement lowers the localisation error", model["localization_error"],
         no_sub.get("localization_error", float("nan")),
         model["localization_error"] < no_sub.get("localization_error", float("nan"))),
    ]
    lines = ["| target | this model | reference | met |", "|---|--:|--:|:-:|"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} | {'yes' if ok else 'NO'} |"
              for name, a, b, ok in checks]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "superseg.pt"))
    p.add_argument("--images", required=True, help="held-out image folder")
    p.add_argument("--pairs", type=int, default=41)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-keypoints", type=int, default=1000)
    p.add_argument("--output", default=str(ROOT / "runs" / "model_card_eval"))
    p.add_argument("--split", default=str(ROOT / "runs" / "data" / "split.json"),
                   help="split.json written by tools/prepare_images.py")
    args = p.parse_args(argv)
    code = eval_main(["--model", args.model, "--images", args.images, "--pairs", str(args.pairs),
                      "--seed", str(args.seed), "--max-keypoints", str(args.max_keypoints),
                      "--baselines", "sift,orb", "--ablations", "subpixel",
                      "--output", args.output])
    if code != 0:
        print(f"model_card: superseg-eval exited {code}", file=sys.stderr)
        return code
    record = json.loads((Path(args.output) / "metrics.json").read_text())
    table = markdown_table(record["summaries"])
    config = record.get("config", {})
    dataset = config.get("dataset", config)
    command = (f"python tools/model_card.py --model {args.model} --images {args.images} "
               f"--pairs {args.pairs} --seed {args.seed} --max-keypoints {args.max_keypoints}")
    evaluation = (f"{table}\n\nPairs: {args.pairs} generated from `{args.images}` (seed "
                  f"{args.seed}, homography ranges and sampling rule in "
                  f"`{args.output}/config.json`: {json.dumps(dataset.get('homography', ''))}), "
                  f"{args.max_keypoints} keypoints per image. Regenerate with `{command}`.\n")
    text = CARD.read_text()
    text = replace_block(text, "evaluation", evaluation)
    text = replace_block(text, "data", data_record(Path(args.split)))
    text = replace_block(text, "targets", quality_targets(record["summaries"]))
    text = replace_block(text, "training", training_record(load_model(args.model)))
    CARD.write_text(text)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
