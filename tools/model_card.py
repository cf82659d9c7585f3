#!/usr/bin/env python3
"""Regenerate the measured parts of models/README.md from a real evaluation run.

    python tools/model_card.py --model models/superseg.pt --images runs/data/heldout \\
        --images runs/data480/heldout --pairs 41

Runs superseg-eval (the model with and without sub-pixel refinement, OpenCV SIFT and ORB, on the
same seeded pairs) once per held-out folder and writes, between the markers in models/README.md:
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


def config_and_round(conf: dict) -> tuple[str, int | None]:
    """The config file a run came from and its label round (rounds are named <config>_round<r>)."""
    match = re.fullmatch(r"(.*)_round(\d+)", str(conf.get("name")))
    return (match.group(1), int(match.group(2))) if match else (str(conf.get("name")), None)


def adaptation_record(conf: dict) -> str:
    """The homographic adaptation that made a label round's pseudo-labels, read from the
    adaptation.json superseg-adapt wrote beside them (runs/<name>/labels_round<r>)."""
    _, label_round = config_and_round(conf)
    if conf.get("data", {}).get("labels") != "adapt" or label_round is None:
        return "-"
    path = ROOT / Path(conf["output"]).parent / f"labels_round{label_round}" / "adaptation.json"
    if not path.is_file():
        return f"({relative(path)} not found)"
    summary = json.loads(path.read_text())
    homographies = conf.get("adaptation", {}).get("num_homographies")
    return (f"{summary['labelled']} images x {homographies} homographies, "
            f"{summary['keypoints_per_image_mean']:.1f} points/image, "
            f"{summary['wall_time_s'] / 60:.1f} min")


def training_record(model) -> str:
    stages = list(model.meta.get("history", [])) + [
        {k: v for k, v in model.meta.items() if k != "history"}]
    lines = ["| stage | run | pseudo-labels before it | steps | wall time | batch | resolution "
             "| config |", "|---|---|---|--:|--:|--:|---|---|"]
    for s in stages:
        conf = s.get("config", {})
        data = conf.get("data", {})
        size = data.get("size") or [data.get("shapes", {}).get("height"),
                                    data.get("shapes", {}).get("width")]
        lines.append(f"| {s.get('stage')} | {s.get('name')} | {adaptation_record(conf)} | "
                     f"{s.get('step')} | {s.get('wall_time_s', 0) / 60:.1f} min | "
                     f"{conf.get('batch_size')} | {size[0]}x{size[1]} | "
                     f"`training/configs/{config_and_round(conf)[0]}.yaml` |")
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
    return "\n".join(lines) + (f"\n\nTraining images scaled to cover {split['cover_hw'][0]}x"
                                f"{split['cover_hw'][1]} (aspect kept) by "
                                f"`tools/prepare_images.py`; split file "
                                f"`{relative(split_path)}`. Every evaluated folder "
                                "holds the same held-out images (checked from its own "
                                "split.json).\n")


def same_split(split_path: Path, folders: list[str]) -> None:
    """Every evaluated folder must hold the held-out images of the training split (at whatever
    scale), so no evaluation image was seen in training."""
    sources = [i["source"] for i in json.loads(split_path.read_text())["heldout"]]
    for folder in folders:
        other = Path(folder).parent / "split.json"
        if not other.is_file():
            raise SystemExit(f"model_card: {other} is missing; make {folder} with "
                             "tools/prepare_images.py so that its split can be checked")
        if [i["source"] for i in json.loads(other.read_text())["heldout"]] != sources:
            raise SystemExit(f"model_card: the held-out images of {other} differ from those of "
                             f"{split_path}: evaluate on the held-out part of the training split")


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


def evaluate(args, images: str, output: Path) -> tuple[str, str]:
    """One superseg-eval run on generated pairs from `images`: (evaluation text, targets table)."""
    code = eval_main(["--model", args.model, "--images", images, "--pairs", str(args.pairs),
                      "--seed", str(args.seed), "--max-keypoints", str(args.max_keypoints),
                      "--baselines", "sift,orb", "--ablations", "subpixel",
                      "--output", str(output)])
    if code != 0:
        raise SystemExit(f"model_card: superseg-eval on {images} exited {code}")
    record = json.loads((output / "metrics.json").read_text())
    config = record.get("config", {})
    dataset = config.get("dataset", config)
    sizes = config.get("resolution", {})
    size_text = ""
    if sizes.get("image_a_min_hw"):
        (h0, w0), (h1, w1) = sizes["image_a_min_hw"], sizes["image_a_max_hw"]
        size_text = f", images from {h0}x{w0} to {h1}x{w1} (height x width)"
    text = (f"{markdown_table(record['summaries'])}\n\nPairs: {args.pairs} generated from "
            f"`{images}`{size_text} (seed {args.seed}; homography ranges and sampling rule in "
            f"`{relative(output)}/config.json`: {json.dumps(dataset.get('homography', ''))}), "
            f"{args.max_keypoints} keypoints per image.\n")
    return text, quality_targets(record["summaries"])


def relative(path) -> str:
    path = Path(path).resolve()
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "superseg.pt"))
    p.add_argument("--images", required=True, action="append",
                   help="held-out image folder (repeat for several resolutions)")
    p.add_argument("--pairs", type=int, default=41)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-keypoints", type=int, default=1000)
    p.add_argument("--output", default=str(ROOT / "runs" / "model_card_eval"),
                   help="superseg-eval output; one subfolder per --images folder")
    p.add_argument("--split", default=str(ROOT / "runs" / "data" / "split.json"),
                   help="split.json written by tools/prepare_images.py")
    args = p.parse_args(argv)
    same_split(Path(args.split), args.images)
    evaluations, targets = [], []
    for images in args.images:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", relative(images)).strip("_")
        text, checks = evaluate(args, images, Path(args.output) / name)
        evaluations.append(f"### `{images}`\n\n{text}")
        targets.append(f"On `{images}`:\n\n{checks}")
    command = " ".join(["python tools/model_card.py", "--model", relative(args.model)]
                       + [f"--images {i}" for i in args.images]
                       + [f"--pairs {args.pairs} --seed {args.seed} "
                          f"--max-keypoints {args.max_keypoints}"])
    text = CARD.read_text()
    text = replace_block(text, "evaluation", "\n".join(evaluations)
                         + f"\nRegenerate with `{command}`.\n")
    text = replace_block(text, "data", data_record(Path(args.split)))
    text = replace_block(text, "targets", "\n".join(targets))
    text = replace_block(text, "training", training_record(load_model(args.model)))
    CARD.write_text(text)
    print("\n".join(evaluations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
