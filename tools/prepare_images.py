#!/usr/bin/env python3
"""Make the local image folders for training and held-out evaluation from image folders.

    python tools/prepare_images.py ../shared/data/kitti_raw_0001 ../shared/data/tum_freiburg \
        --cover 192 256 --holdout 0.2 --output runs/data

Each source folder (its images, sorted by name) is split into a training part and a held-out part
(the LAST `holdout` fraction: neighbouring video frames are near duplicates, so a contiguous tail
block leaks less than a random pick). A folder given with `--train-only` goes wholly to training:
use it for a dataset whose held-out part lives elsewhere (CamVid's `train/`, whose `val/` is the
held-out set). Images are scaled (aspect kept) so they just cover
`--cover H W`, the training crop (with `--no-upscale`, smaller images are kept at their own size:
the training loader scales them up to the crop itself, and upscaled copies only cost adaptation
time), and written flat as <output>/{train,heldout}/<folder>__<name>.png
with split.json listing every file. The output is a local cache outside the repository: the
source licences forbid redistribution, so never commit it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2

SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".bmp"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--cover", nargs=2, type=int, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--train-only", nargs="+", type=Path, default=[], metavar="FOLDER",
                        help="folders used wholly for training (no held-out part)")
    parser.add_argument("--no-upscale", action="store_true",
                        help="keep images that are smaller than --cover at their own size")
    args = parser.parse_args(argv)
    split = {"cover_hw": args.cover, "holdout": args.holdout, "no_upscale": args.no_upscale,
             "train": [], "heldout": []}
    train_only = set(args.train_only)
    for source in [*args.sources, *args.train_only]:
        if not source.is_dir():
            print(f"prepare_images: {source} is not a folder", file=sys.stderr)
            return 2
        # label/depth PNGs of annotated datasets are not photographs
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in SUFFIXES
                        and "gtFine" not in p.name)
        n_held = 0 if source in train_only else int(round(len(images) * args.holdout))
        for index, path in enumerate(images):
            part = "heldout" if index >= len(images) - n_held else "train"
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                print(f"prepare_images: skipping unreadable {path}", file=sys.stderr)
                continue
            h, w = image.shape[:2]
            scale = max(args.cover[0] / h, args.cover[1] / w)
            if args.no_upscale and scale > 1:
                scale = 1.0
            elif scale != 1:
                size = (max(args.cover[1], round(w * scale)), max(args.cover[0], round(h * scale)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1
                                   else cv2.INTER_LINEAR)
            # camvid/train -> camvid_train__<name>: a bare 'train' would not say which dataset
            prefix = source.name if source.name not in ("train", "val", "test") \
                else f"{source.parent.name}_{source.name}"
            target = args.output / part / f"{prefix}__{path.stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), image)
            split[part].append({"source": str(path), "file": str(target), "size_hw": [h, w]})
    (args.output / "split.json").write_text(json.dumps(split, indent=1))
    print(f"{len(split['train'])} training and {len(split['heldout'])} held-out images "
          f"in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
