#!/usr/bin/env python3
"""Regenerate the measured parts of models/README.md from real evaluation runs.

    python tools/model_card.py --model models/superseg.pt --hpatches ../shared/data/hpatches_v4 \\
        --images runs/data/heldout --images runs/data480/heldout --pairs 41 \\
        --segmentation ../shared/data/camvid --dataset camvid \\
        --reference-model runs/superseg_before_issue11.pt

Runs superseg-eval (the model with its semantic filter off, as a detector: without sub-pixel
refinement, with the filter, OpenCV SIFT and ORB, on the same pairs) on real HPatches pairs at
native resolution and at SuperPoint's 480x640 protocol (--hpatches-size), once per held-out folder
of generated pairs, and
superseg-eval --segmentation on the labelled frames, superseg-eval --poses on real posed pairs
(the held-out frames of --split only); with --reference-model, the keypoint runs
again for the previous model (before/after). It writes, between the markers in models/README.md:
  - the evaluation tables (copied from the runs' metrics.md, never typed by hand),
  - the segmentation and keypoint-filter tables,
  - the relative-pose tables,
  - the before/after table,
  - the training record read from the checkpoint itself (stages, steps, wall time, configs).
The runs' full output (JSON, plots, overlays) stays in --output.
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
from superseg_ros.evaluation.cli import main as eval_main, metrics_code_version  # noqa: E402
from superseg_ros.extractor import DEFAULT_EXTRACTOR_CONFIG  # noqa: E402
from superseg_ros.evaluation.poses import COLUMNS as POSE_COLUMNS  # noqa: E402
from superseg_ros.evaluation.report import markdown_table  # noqa: E402
from superseg_ros.evaluation.segmentation import (SWEEP_HEADER, filter_rows,  # noqa: E402
                                                  iou_rows, markdown, sweep_rows)

CARD = ROOT / "models" / "README.md"


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"model_card: {CARD} lacks the markers {start} ... {end}")
    return pattern.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", text)


def config_and_round(conf: dict) -> tuple[str, int | None]:
    """The config file a run came from and its label round: a run that labels its own images
    (data.labels: adapt) is named <config>_round<r>; any other name is the config's own, even
    one that ends in _round<r> (camvid_cpu_round4.yaml)."""
    match = re.fullmatch(r"(.*)_round(\d+)", str(conf.get("name")))
    if match and conf.get("data", {}).get("labels") == "adapt":
        return match.group(1), int(match.group(2))
    return str(conf.get("name")), None


def adaptation_record(conf: dict) -> str:
    """The homographic adaptation that made a label round's pseudo-labels, read from the
    adaptation.json superseg-adapt wrote beside them (runs/<name>/labels_round<r>)."""
    _, label_round = config_and_round(conf)
    labels = conf.get("data", {}).get("labels")
    if labels not in (None, "adapt"):
        return f"reused: `{labels}`"
    if label_round is None:
        return "-"
    path = ROOT / Path(conf["output"]).parent / f"labels_round{label_round}" / "adaptation.json"
    if not path.is_file():
        return f"({relative(path)} not found)"
    summary = json.loads(path.read_text())
    homographies = conf.get("adaptation", {}).get("num_homographies")
    return (f"{summary['labelled']} images x {homographies} homographies, "
            f"{summary['keypoints_per_image_mean']:.1f} points/image, "
            f"{summary['wall_time_s'] / 60:.1f} min")


def trained_parts(conf: dict) -> str:
    """A stage's `train_only` (the only parts it trained), "-" without one: then every part its
    losses reach learned."""
    return ", ".join(conf.get("train_only") or []) or "-"


def training_record(model) -> str:
    stages = list(model.meta.get("history", [])) + [
        {k: v for k, v in model.meta.items() if k != "history"}]
    lines = ["| stage | run | train_only | pseudo-labels before it | steps | wall time | batch "
             "| resolution | config |", "|---|---|---|---|--:|--:|--:|---|---|"]
    for s in stages:
        conf = s.get("config", {})
        data = conf.get("data", {})
        size = data.get("size") or [data.get("shapes", {}).get("height"),
                                    data.get("shapes", {}).get("width")]
        lines.append(f"| {s.get('stage')} | {s.get('name')} | {trained_parts(conf)} | "
                     f"{adaptation_record(conf)} | "
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


def detector_row(summaries: dict) -> str:
    """The row that measures the keypoints themselves: the model without the semantic filter
    when the run has that ablation (the filter, trained on street scenes, also removes keypoints
    on sky and trees of the generic images, which says nothing about the detector)."""
    return "superseg-no-semantic" if "superseg-no-semantic" in summaries else "superseg"


# issue 12's keypoint targets, on real HPatches pairs at native resolution, 1000 keypoints
KEYPOINT_TARGETS = (
    ("homography accuracy@3px >= SIFT's", "homography_accuracy@3px", "sift", 1.0),
    ("repeatability@3px >= SIFT's", "repeatability@3px", "sift", 1.0),
)


def quality_targets(summaries: dict) -> str:
    """The project's keypoint targets, checked on this run's numbers (not typed by hand), on
    the detector_row; the sub-pixel ablation is of the same row (same keypoints, refinement
    off): it must lower the localisation error by >= 10 % and must not lower H@1."""
    row = detector_row(summaries)
    model, no_sub = summaries[row], summaries.get("superseg-no-subpixel", {})
    nan = float("nan")
    checks = [(name, model[key], summaries[ref][key], model[key] >= bound * summaries[ref][key])
              for name, key, ref, bound in KEYPOINT_TARGETS]
    without = no_sub.get("localization_error", nan)
    checks += [
        ("localisation error with sub-pixel <= 0.9 x without (reference: 0.9 x without)",
         model["localization_error"], 0.9 * without, model["localization_error"] <= 0.9 * without),
        ("sub-pixel refinement does not lower H accuracy@1px (reference: without)",
         model["homography_accuracy@1px"], no_sub.get("homography_accuracy@1px", nan),
         model["homography_accuracy@1px"] >= no_sub.get("homography_accuracy@1px", nan)),
    ]
    lines = [f"Checked on `{row}`, {model['keypoints']:.0f} keypoints per image "
             f"(SIFT {summaries['sift']['keypoints']:.0f}).", "",
             "| target | this model | reference | met |", "|---|--:|--:|:-:|"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} | {'yes' if ok else 'NO'} |"
              for name, a, b, ok in checks]
    return "\n".join(lines) + "\n"


def run_eval(flags: list[str], output: Path, reuse: bool = False) -> dict:
    """One superseg-eval run; its metrics.json. With `reuse`, an earlier run in `output` with the
    same command and metric code, newer than the model file, is read instead of run again."""
    flags = flags + ["--output", str(output)]
    metrics = output / "metrics.json"
    if reuse and metrics.is_file():
        record = json.loads(metrics.read_text())
        model = Path(flags[flags.index("--model") + 1])
        if record["config"].get("command") == " ".join(["superseg-eval", *flags]) \
                and record["config"].get("metrics_code") == metrics_code_version() \
                and metrics.stat().st_mtime > model.stat().st_mtime:
            print(f"model_card: reusing {metrics}")
            return record
    code = eval_main(flags)
    if code != 0:
        raise SystemExit(f"model_card: superseg-eval {' '.join(flags)} exited {code}")
    return json.loads((output / "metrics.json").read_text())


def pair_flags(args, model: str, kind: str, folder: str, size=None,
               threshold: float | None = None) -> list[str]:
    """superseg-eval flags of one keypoint run: HPatches pairs (at `size` (H, W), or native) or
    generated pairs of a folder. The model runs as a detector, its semantic filter off (a street
    filter says nothing about keypoints on HPatches' paintings and walls); a model with a trained
    semantic head also runs with its filter (`superseg-with-semantic`). With `threshold`, the
    model alone at that detection threshold (no baselines, ablations or overlays)."""
    flags = ["--model", model, "--max-keypoints", str(args.max_keypoints), "--seed",
             str(args.seed), "--semantic-filter", "off"]
    if threshold is not None:
        flags += ["--baselines", "none", "--overlays", "0",
                  "--extractor", f"detection_threshold={threshold}"]
    else:
        semantic = load_model(model).trained_heads["semantic"]
        flags += ["--baselines", "sift,orb",
                  "--ablations", "subpixel,semantic" if semantic else "subpixel"]
    if kind == "hpatches":
        return flags + ["--hpatches", folder] + \
            (["--size", str(size[0]), str(size[1])] if size else [])
    return flags + ["--images", folder, "--pairs", str(args.pairs)]


def describe_pairs(args, kind: str, folder: str, record: dict, output: Path) -> str:
    config = record.get("config", {})
    sizes = config.get("resolution", {})
    size_text = ""
    if sizes.get("image_a_min_hw"):
        (h0, w0), (h1, w1) = sizes["image_a_min_hw"], sizes["image_a_max_hw"]
        size_text = f", images from {h0}x{w0} to {h1}x{w1} (height x width)"
    n = record["summaries"]["superseg"].get("pairs", "?")
    rows = ("`superseg` is the model with its semantic filter off (the detector itself); "
            "`superseg-no-subpixel` the same without sub-pixel refinement; "
            "`superseg-with-semantic` the same with the filter on. ")
    if kind == "hpatches":
        return (f"{rows}Pairs: {n} real HPatches pairs (image 1 to images 2-6 of each sequence, "
                f"ground-truth homographies) from `{folder}`{size_text}, "
                f"{args.max_keypoints} keypoints per image.\n")
    dataset = config.get("dataset", config)
    return (f"{rows}Pairs: {args.pairs} generated from `{folder}`{size_text} (seed {args.seed}; "
            f"homography ranges and sampling rule in `{relative(output)}/config.json`: "
            f"{json.dumps(dataset.get('homography', ''))}), {args.max_keypoints} keypoints "
            "per image.\n")


BEFORE_AFTER = (("keypoints", "keypoints per image", True),
                ("repeatability@3px", "repeatability@3px", True),
                ("localization_error", "localisation error (px)", False),
                ("homography_accuracy@1px", "H accuracy@1px", True),
                ("homography_accuracy@3px", "H accuracy@3px", True),
                ("homography_accuracy@5px", "H accuracy@5px", True),
                ("homography_auc@3px", "H AUC@3px", True),
                ("mma@3px", "MMA@3px", True),
                ("nn_map", "NN mAP", True),
                ("matching_score", "matching score", True))


THRESHOLD_COLUMNS = BEFORE_AFTER[:8]

POSE_BEFORE_AFTER = (("keypoints", "keypoints per image", True),
                     ("matches", "matches per pair", True),
                     ("epipolar_precision@1px", "epipolar precision@1px", True),
                     ("epipolar_precision@3px", "epipolar precision@3px", True),
                     ("pose_auc@5deg", "pose AUC@5deg", True),
                     ("pose_auc@10deg", "pose AUC@10deg", True),
                     ("pose_auc@20deg", "pose AUC@20deg", True),
                     ("median_rotation_error", "median rotation error (deg)", False),
                     ("median_translation_error", "median translation error (deg)", False))


def threshold_table(title: str, rows: list[tuple[float, dict]]) -> str:
    """The same model at several detection thresholds on the same pairs: what filling the
    keypoint budget costs in precision."""
    lines = [f"On {title}, the model as a detector (semantic filter off), "
             f"{len(rows)} detection thresholds:", "",
             "| detection threshold | " + " | ".join(label for _, label, _ in THRESHOLD_COLUMNS)
             + " |", "|--:|" + "--:|" * len(THRESHOLD_COLUMNS)]
    for threshold, summary in sorted(rows, key=lambda row: -row[0]):
        lines.append(f"| {threshold:g} | " + " | ".join(
            format_value(key, summary_value(summary, key)) for key, _, _ in THRESHOLD_COLUMNS)
            + " |")
    return "\n".join(lines) + "\n"


def format_value(key: str, value) -> str:
    """A summary value as the card prints it: counts whole, rates and pixels to 3 decimals."""
    if value is None:
        return "-"
    return f"{value:.0f}" if key in ("keypoints", "matches") else f"{value:.3f}"


def summary_value(summary: dict, key: str):
    if key.startswith("mma@"):  # the MMA curve is stored per threshold
        return summary.get("mma", {}).get(key[4:-2])
    return summary.get(key)


def before_after(name: str, before: dict, after: dict, metrics=BEFORE_AFTER) -> str:
    """The previous model against this one on the same pairs, detector against detector
    (detector_row of each); 'better' follows each metric's direction (lower localisation error
    is better)."""
    rows = detector_row(before), detector_row(after)
    lines = [f"On {name} (`{rows[0]}` before, `{rows[1]}` after):", "",
             "| metric | before | after | better |", "|---|--:|--:|:-:|"]
    for key, label, higher in metrics:
        a, b = summary_value(before[rows[0]], key), summary_value(after[rows[1]], key)
        if a is None or b is None:
            continue
        better = "=" if abs(a - b) < 5e-4 else ("yes" if (b > a) == higher else "no")
        lines.append(f"| {label} | {format_value(key, a)} | {format_value(key, b)} | {better} |")
    return "\n".join(lines) + "\n"


SEGMENTATION_TARGETS = (  # issue 11, on held-out labelled street frames
    ("4-group mIoU >= 0.75", lambda r: r["groups"]["miou"], 0.75),
    ("dynamic-object IoU >= 0.55", lambda r: r["groups"]["iou"]["dynamic_object"], 0.55),
    ("keypoints on dynamic objects removed >= 80 %", lambda r: r["dynamic_removed_share"], 0.80),
    ("keypoints on static/flat kept >= 90 %", lambda r: r["static_flat_kept_share"], 0.90),
    ("moonshot: 4-group mIoU >= 0.85", lambda r: r["groups"]["miou"], 0.85),
    ("moonshot: keypoints on dynamic objects removed >= 90 %",
     lambda r: r["dynamic_removed_share"], 0.90),
)


def segmentation_record(record: dict, output: Path, root: str, split: str) -> str:
    """The segmentation and keypoint-filter tables of a superseg-eval --segmentation run, and
    the targets checked on them."""
    seg, filt = record["segmentation"], record["keypoint_filter"]
    config = record["config"]
    values = {**seg, **filt["shares"]}
    lines = [f"On `{root}` split `{split}` ({config['evaluated']} frames at their own "
             f"resolution, {config.get('max_keypoints')} keypoints per frame; never trained "
             "on, used for model selection):", "", "Stability groups (predicted group = group of "
             "the argmax class):", ""]
    lines += markdown(["group", "IoU"], iou_rows(seg["groups"]))
    if seg["classes"] is not None:
        lines += ["", "Classes:", ""] + markdown(["class", "IoU"], iou_rows(seg["classes"]))
    lines += ["", "The keypoint filter (every detected keypoint, with the filter's verdict):", ""]
    lines += markdown(["keypoints", "count", "share"], filter_rows(filt["counts"],
                                                                   filt["shares"]))
    if filt.get("sweep"):
        lines += ["", f"The filter at other `mask_threshold` values (the shipped default is "
                  f"{config['mask_threshold']}; P(stable groups) at each keypoint's nearest "
                  "pixel):", ""]
        lines += markdown(SWEEP_HEADER, sweep_rows(filt["sweep"]))
    lines += ["", "| target | measured | met |", "|---|--:|:-:|"]
    for name, value_of, bound in SEGMENTATION_TARGETS:
        value = value_of(values)
        lines.append(f"| {name} | {value:.3f} | {'yes' if value >= bound else 'NO'} |")
    lines += ["", f"Full output (confusion matrices, plots, overlays): `{relative(output)}`."]
    return "\n".join(lines) + "\n"


def pose_flags(args, model: str, folder: str) -> list[str]:
    """superseg-eval flags of one relative-pose run on the held-out pairs of `folder`: the model
    as shipped (filter auto), without sub-pixel refinement and, when its semantic head is
    trained, without the filter; SIFT and ORB."""
    semantic = load_model(model).trained_heads["semantic"]
    return ["--model", model, "--max-keypoints", str(args.max_keypoints), "--seed",
            str(args.seed), "--poses", folder, "--heldout", args.split, "--gaps", args.pose_gaps,
            "--baselines", "sift,orb",
            "--ablations", "subpixel,semantic" if semantic else "subpixel"]


def pose_record(folder: str, record: dict, output: Path) -> str:
    dataset = record["config"]["dataset"]
    gaps = (f", frame gaps {', '.join(str(g) for g in dataset['gaps'])}"
            if dataset.get("gaps") else "")
    rows = ("`superseg` is the model as shipped (semantic filter "
            f"{record['methods']['superseg']['semantic_filter']}); `superseg-no-subpixel` the "
            "same without sub-pixel refinement; `superseg-no-semantic` the same without the "
            "filter. ")
    return (f"### `{folder}`\n\n{markdown_table(record['summaries'], POSE_COLUMNS)}\n\n{rows}"
            f"Pairs: {dataset['pairs']} of {dataset['pairs_listed']} ({dataset['layout']}"
            f"{gaps}), only those whose two images `{relative(dataset['heldout'])}` holds out "
            f"from training; {record['config']['max_keypoints']} keypoints per image; "
            f"{record['config']['ransac']['draws']} RANSAC draws per pair, threshold "
            f"{record['config']['ransac']['threshold_px']:g} px. Full output: "
            f"`{relative(output)}`.\n")


def relative(path) -> str:
    path = Path(path).resolve()
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "superseg.pt"))
    p.add_argument("--reference-model",
                   help="the previous model, evaluated on the same pairs (before/after table)")
    p.add_argument("--hpatches", help="HPatches-format sequences (real pairs)")
    p.add_argument("--hpatches-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                   help="the second HPatches run resizes every image to HxW (SuperPoint's "
                        "protocol, default 480 640)")
    p.add_argument("--images", action="append", default=[],
                   help="held-out image folder (repeat for several resolutions)")
    p.add_argument("--segmentation", help="labelled frames for superseg-eval --segmentation")
    p.add_argument("--dataset", default="camvid", help="layout of --segmentation")
    p.add_argument("--poses", action="append", default=[],
                   help="real posed pairs for superseg-eval --poses (a KITTI-style sequence or "
                        "a pair list); only the pairs --split holds out (repeatable)")
    p.add_argument("--pose-gaps", default="1,2,4",
                   help="frame gaps of the --poses sequences (default 1,2,4)")
    p.add_argument("--segmentation-split", default="val")
    p.add_argument("--pairs", type=int, default=41)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-keypoints", type=int, default=1000)
    p.add_argument("--output", default=str(ROOT / "runs" / "model_card_eval"),
                   help="superseg-eval output; one subfolder per evaluation")
    p.add_argument("--split", default=str(ROOT / "runs" / "data" / "split.json"),
                   help="split.json written by tools/prepare_images.py")
    p.add_argument("--thresholds", type=float, nargs="*", default=[0.005, 0.0],
                   help="on the generated pairs, also run the model at these detection "
                        "thresholds (the threshold table; default 0.005 0)")
    p.add_argument("--reuse", action="store_true",
                   help="read superseg-eval runs already in --output (same command, newer than "
                        "the model file) instead of running them again")
    args = p.parse_args(argv)
    if not args.images and not args.hpatches:
        p.error("give --hpatches and/or --images")
    same_split(Path(args.split), args.images)
    output = Path(args.output)
    evaluations, targets, comparisons, thresholds = [], [], [], []
    runs = ([("hpatches", args.hpatches, None), ("hpatches", args.hpatches, args.hpatches_size)]
            if args.hpatches else []) + [("images", folder, None) for folder in args.images]
    for kind, folder, size in runs:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", relative(folder)).strip("_")
        name += f"_{size[0]}x{size[1]}" if size else ""
        record = run_eval(pair_flags(args, args.model, kind, folder, size), output / name,
                          args.reuse)
        title = (f"real HPatches pairs `{folder}`"
                 + (f", resized to {size[0]}x{size[1]}" if size else ", native resolution")) \
            if kind == "hpatches" else f"generated pairs from `{folder}`"
        evaluations.append(f"### {title}\n\n{markdown_table(record['summaries'])}\n\n"
                           f"{describe_pairs(args, kind, folder, record, output / name)}")
        if kind == "hpatches" and size is None:  # the targets are set at native resolution
            targets.append(f"On {title}:\n\n{quality_targets(record['summaries'])}")
        if kind == "images" and args.thresholds:
            default = DEFAULT_EXTRACTOR_CONFIG["detection_threshold"]
            rows = [(default, record["summaries"]["superseg"])]
            rows += [(t, run_eval(pair_flags(args, args.model, kind, folder, threshold=t),
                                  output / f"{name}_threshold{t:g}",
                                  args.reuse)["summaries"]["superseg"])
                     for t in args.thresholds if t != default]
            thresholds.append(threshold_table(title, rows))
        if args.reference_model:
            before = run_eval(pair_flags(args, args.reference_model, kind, folder, size),
                              output / f"{name}_reference", args.reuse)
            comparisons.append(before_after(title, before["summaries"], record["summaries"]))
    command = " ".join(["python tools/model_card.py", "--model", relative(args.model)]
                       + ([f"--hpatches {args.hpatches} --hpatches-size "
                           f"{args.hpatches_size[0]} {args.hpatches_size[1]}"]
                          if args.hpatches else [])
                       + [f"--images {i}" for i in args.images]
                       + [f"--pairs {args.pairs} --seed {args.seed} "
                          f"--max-keypoints {args.max_keypoints}"]
                       + ([f"--thresholds {' '.join(f'{t:g}' for t in args.thresholds)}"]
                          if args.images else [])
                       + ([f"--segmentation {args.segmentation} --dataset {args.dataset}"]
                          if args.segmentation else [])
                       + [f"--poses {folder}" for folder in args.poses]
                       + ([f"--pose-gaps {args.pose_gaps}"] if args.poses else [])
                       + ([f"--reference-model {relative(args.reference_model)}"]
                          if args.reference_model else []))
    text = CARD.read_text()
    text = replace_block(text, "evaluation", "\n".join(evaluations)
                         + f"\nRegenerate with `{command}`.\n")
    text = replace_block(text, "data", data_record(Path(args.split)))
    text = replace_block(text, "targets", "\n".join(targets))
    if thresholds:
        text = replace_block(text, "thresholds", "\n".join(thresholds))
    if comparisons:
        text = replace_block(text, "before_after",
                             f"Before: `{relative(args.reference_model)}`; after: "
                             f"`{relative(args.model)}`; same pairs, same keypoint budget.\n\n"
                             + "\n".join(comparisons))
    if args.segmentation:
        seg_output = output / f"segmentation_{args.dataset}_{args.segmentation_split}"
        record = run_eval(["--model", args.model, "--segmentation", args.segmentation,
                           "--dataset", args.dataset, "--split", args.segmentation_split,
                           "--max-keypoints", str(args.max_keypoints)], seg_output, args.reuse)
        text = replace_block(text, "segmentation", segmentation_record(
            record, seg_output, args.segmentation, args.segmentation_split))
    if args.poses:
        poses = []
        for folder in args.poses:
            name = "poses_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", relative(folder)).strip("_")
            record = run_eval(pose_flags(args, args.model, folder), output / name, args.reuse)
            poses.append(pose_record(folder, record, output / name))
            if args.reference_model:
                before = run_eval(pose_flags(args, args.reference_model, folder),
                                  output / f"{name}_reference", args.reuse)
                poses.append(f"Against `{relative(args.reference_model)}`, detector against "
                             "detector:\n\n" + before_after(
                                 "the same pairs", before["summaries"], record["summaries"],
                                 POSE_BEFORE_AFTER))
        text = replace_block(text, "poses", "\n".join(poses))
    text = replace_block(text, "training", training_record(load_model(args.model)))
    CARD.write_text(text)
    print("\n".join(evaluations + comparisons))
    return 0


if __name__ == "__main__":
    sys.exit(main())
