"""superseg-adapt: homographic adaptation, i.e. keypoint pseudo-labels for a folder of images.

    superseg-adapt --model runs/magicpoint/best.pt --images ../shared/data/coco/train2014 \
        --output labels/coco_round1 --set resize=[240,320]

Writes <output>/<relative image path without suffix>.npz (keypoints float32 (N, 2) x, y in
original pixels, scores, image_size (H, W), source), previews/*.png and adaptation.json.
Re-running resumes: finished images are skipped unless --overwrite.
--config takes a training config with an `adaptation:` block or a file of adaptation keys only;
--set KEY=VALUE (YAML value, dotted keys for nested ones, e.g. homography.rotation_deg=30)
overrides it. Exit codes: 0 ok, 1 some images could not be read (listed), 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from ..checkpoint import RANDOM, CheckpointError, open_model
from ..config import ConfigError, apply_overrides, read_yaml
from ..extractor import resolve_device
from .adaptation import adapt_folder, adaptation_config, list_images

PROG = "superseg-adapt"


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--model", required=True,
                   help="checkpoint path, or 'random' (untrained: meaningless labels, tests only)")
    p.add_argument("--images", required=True, type=Path, help="image folder (searched recursively)")
    p.add_argument("--output", required=True, type=Path, help="folder for the label files")
    p.add_argument("--config", type=Path, help="YAML: a training config with an `adaptation:` "
                                               "block, or adaptation keys only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one adaptation setting (repeatable), e.g. num_homographies=50")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true", help="label again images already done")
    p.add_argument("--preview", type=int, default=8, metavar="N",
                   help="write overlays of the first N labelled images to previews/ (default 8)")
    return p.parse_args(argv)


def read_config_file(path: Path | None) -> dict:
    """The adaptation settings in a YAML file: its `adaptation:` block if it has one."""
    if path is None:
        return {}
    data = read_yaml(path, "config") or {}
    if isinstance(data, dict) and "adaptation" in data:
        data = data["adaptation"] or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of adaptation settings")
    return data


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.preview < 0:
            raise ConfigError("--preview must be >= 0")
        conf = adaptation_config(apply_overrides(read_config_file(args.config), args.overrides,
                                                    example="num_homographies=50"))
        list_images(args.images, exclude=args.output)  # fail before loading a model
        device = resolve_device(args.device)
        model, description = open_model(args.model, device)
    except (CheckpointError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.model == RANDOM:
        print(f"{PROG}: WARNING: {description}. Pseudo-labels from random weights are "
              "MEANINGLESS; use them to test the pipeline only, never for training.",
              file=sys.stderr)
    if args.model != RANDOM:
        description = str(Path(args.model).resolve())  # the encoder is in model_config
    try:
        summary = adapt_folder(model, args.images, args.output, conf, device=device,
                               preview=args.preview, overwrite=args.overwrite,
                               model_description=description)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    mean = summary["keypoints_per_image_mean"]
    print(f"{PROG}: {summary['labelled']} labelled, {summary['skipped_existing']} already done, "
          f"{summary['failed']} failed of {summary['images']} images -> {args.output}"
          + (f" ({mean:.0f} keypoints/image)" if mean is not None else ""))
    for line in summary["failures"]:
        print(f"{PROG}: error: {line}", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
