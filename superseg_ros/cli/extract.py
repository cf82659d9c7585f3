"""superseg-extract: keypoints, descriptors and stability for an image or a folder of images.

Writes per image <stem>.npz with keypoints (N, 2 float32 x, y), scores, descriptors (N, D unit
norm), labels, groups (uint8, 255 = semantics off), stable (bool); with --overlay also
<stem>_overlay.png and, when the semantic filter ran, <stem>_mask.png (255 = stable) and
<stem>_groups.png.

--dense adds per-pixel maps at input resolution to each npz: group_map (H, W uint8, the
stability group of the argmax class of the class probabilities upsampled bilinearly) and
stable_prob (H, W float16, P(stable groups)). It needs the semantic filter (a trained semantic
head, semantic_filter auto or on); without it the tool exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..backends import BACKEND_CHOICES
from ..bags import IMAGE_SUFFIXES
from ..checkpoint import RANDOM, CheckpointError, open_model
from ..config import ConfigError, read_parameters
from ..extractor import Extractor
from ..visualize import colorize_groups, draw_keypoints



def parse_args(argv):
    p = argparse.ArgumentParser(prog="superseg-extract", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="checkpoint path, or 'random' for an untrained network "
                        "(default: the bundled model in models/)")
    p.add_argument("--input", required=True, type=Path, help="an image or a folder of images")
    p.add_argument("--output", required=True, type=Path, help="folder for the results")
    p.add_argument("--config", type=Path,
                   help="parameter YAML (config/superseg.yaml format); flags below override it")
    p.add_argument("--max-keypoints", type=int)
    p.add_argument("--threshold", type=float, help="detection threshold")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backend", choices=BACKEND_CHOICES,
                   help="inference backend (default: the config's, else torch); auto = the "
                        "fastest installed for the device")
    p.add_argument("--keep-unstable", action="store_true",
                   help="keep keypoints on unstable regions, flagged stable=False")
    p.add_argument("--no-subpixel", action="store_true", help="keep NMS peaks on the pixel grid")
    p.add_argument("--overlay", action="store_true", help="also write overlay and mask PNGs")
    p.add_argument("--dense", action="store_true",
                   help="also write group_map (uint8) and stable_prob (float16), per pixel at "
                        "input resolution, to each npz (needs a trained semantic head)")
    return p.parse_args(argv)


def extractor_config(args) -> dict:
    conf = {}
    if args.config:
        conf = dict(read_parameters(args.config).get("extractor", {}))
    if args.max_keypoints is not None:
        conf["max_keypoints"] = args.max_keypoints
    if args.threshold is not None:
        conf["detection_threshold"] = args.threshold
    if args.backend is not None:
        conf["backend"] = args.backend
    if args.keep_unstable:
        conf["keep_unstable"] = True
    if args.no_subpixel:
        conf["subpixel"] = False
    return conf


def list_images(path: Path) -> list[Path]:
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ConfigError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return images
    if path.is_file():
        return [path]
    raise ConfigError(f"input {path} does not exist")


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ValueError(f"cannot read {path}: not an image or an unsupported format")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def dense_unavailable(extractor: Extractor, model_name: str) -> str:
    """Why --dense cannot run (the semantic filter is off) and what to do instead."""
    if extractor.config["semantic_filter"] == "off":
        return ("--dense needs the semantic filter, but extractor.semantic_filter is off in "
                "--config; set it to auto or on, or drop --dense")
    return (f"--dense needs the semantic filter, but {model_name}'s semantic head was never "
            "trained; pass --model a checkpoint of the labelled stage (training/README.md), or "
            "drop --dense")


def write_results(out_dir: Path, stem: str, image: np.ndarray, result: dict, model_name: str,
                  overlay: bool, dense: bool = False) -> None:
    arrays = {k: result[k] for k in (
        "keypoints", "scores", "descriptors", "labels", "groups", "stable")}
    if dense:  # float16: a probability map needs no more, and it halves the file
        arrays.update(group_map=result["group_map"].astype(np.uint8),
                      stable_prob=result["stable_prob"].astype(np.float16))
    np.savez(out_dir / f"{stem}.npz", **arrays, model=np.array(model_name))
    if not overlay:
        return
    mask = result.get("stability_mask")
    status = "semantic filter off" if mask is None else f"{int(result['stable'].sum())} stable"
    title = f"{model_name} | {len(result['keypoints'])} keypoints, {status}"
    cv2.imwrite(str(out_dir / f"{stem}_overlay.png"),
                draw_keypoints(image, result["keypoints"], result["stable"], title,
                               result.get("group_map")))
    if mask is not None:
        cv2.imwrite(str(out_dir / f"{stem}_mask.png"), mask.astype(np.uint8) * 255)
        cv2.imwrite(str(out_dir / f"{stem}_groups.png"), colorize_groups(result["group_map"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        images = list_images(args.input)
        model, model_name = open_model(args.model)
        extractor = Extractor(model, extractor_config(args), device=args.device,
                              dense=args.dense)
        if args.dense and not extractor.semantic_active:
            raise ConfigError(dense_unavailable(extractor, model_name))
    except (CheckpointError, ConfigError) as exc:
        print(f"superseg-extract: error: {exc}", file=sys.stderr)
        return 2
    if args.model == RANDOM:
        print(f"superseg-extract: using {model_name}", file=sys.stderr)
    print(f"superseg-extract: {extractor.backend_note}", file=sys.stderr)
    if extractor.semantic_note:
        print(f"superseg-extract: {extractor.semantic_note}", file=sys.stderr)
    args.output.mkdir(parents=True, exist_ok=True)

    failed, counts = [], []
    for path in tqdm(images, desc="extract", unit="img", disable=len(images) < 2):
        try:
            image = read_rgb(path)
            result = extractor(image).unbatch()[0]
        except ValueError as exc:  # one bad file must not cost the others
            failed.append(f"{path.name}: {exc}")
            continue
        write_results(args.output, path.stem, image, result, model_name, args.overlay,
                      args.dense)
        counts.append(len(result["keypoints"]))
    done = len(images) - len(failed)
    mean = f", {np.mean(counts):.0f} keypoints/image" if counts else ""
    print(f"superseg-extract: {done}/{len(images)} images -> {args.output}{mean}")
    for line in failed:
        print(f"superseg-extract: error: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
