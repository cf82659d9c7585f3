"""superseg-make-bag: a ROS 2 bag (Image + CameraInfo) from an image folder, a Cityscapes sequence
folder or a video, without rosbag2.

INPUT is a folder of images (sorted by name), a Cityscapes leftImg8bit_sequence/<split>/<city>
folder (CameraInfo from camera/<split>/<city>/<city>_<seq>_*_camera.json), one image, or a video.
Calibration from --camera-info or --fx/--fy/--cx/--cy overrides the Cityscapes JSON; without any
calibration no CameraInfo topic is written (the node then publishes NaN normalised coordinates).
A plain image folder may carry its own intrinsics (camera_info.yaml, camera.yaml,
calibration.yaml, cam.txt or K.txt) and frame times (times.txt, timestamps.txt or Unix-time file
names), used unless given here. An unreadable image is skipped (exit 1) unless --strict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bags import ENCODINGS, STORAGES, BagError, intrinsics, load_calibration, open_source, \
    write_bag

PROG = "superseg-make-bag"


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 640x480, got {text!r}")
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="image folder, Cityscapes sequence folder, or video")
    p.add_argument("-o", "--output", required=True, type=Path, help="bag folder to create")
    p.add_argument("--rate", type=float, help="frames per second (default: the video's fps, "
                   "17 for Cityscapes sequences, an image folder's frame times, else 10)")
    p.add_argument("--storage", default="mcap", choices=STORAGES)
    p.add_argument("--encoding", default="rgb8", choices=ENCODINGS)
    cal = p.add_argument_group("calibration (else from the Cityscapes camera JSON or the "
                               "folder's calibration file, or none)")
    cal.add_argument("--camera-info", type=Path, metavar="FILE",
                     help="ROS camera_calibration .yaml, Cityscapes camera .json, or a text "
                          "3x3 K (KITTI cam.txt)")
    cal.add_argument("--fx", type=float)
    cal.add_argument("--fy", type=float, help="default: fx")
    cal.add_argument("--cx", type=float)
    cal.add_argument("--cy", type=float)
    cal.add_argument("--no-camera-info", action="store_true", help="write no CameraInfo topic")
    p.add_argument("--sequence", help="Cityscapes: only this <seq> snippet (e.g. 000049)")
    p.add_argument("--max-frames", type=int, metavar="N")
    p.add_argument("--resize", type=parse_size, metavar="WxH",
                   help="resize frames (the calibration is scaled with them)")
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--info-topic", default="/camera/camera_info")
    p.add_argument("--frame-id", default="camera")
    p.add_argument("--start-time", type=float, metavar="SECONDS",
                   help="first stamp, seconds since the epoch (default: now)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (exit 2, no bag) instead of "
                        "skipping it")
    p.add_argument("--force", action="store_true", help="replace an existing bag at --output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def calibration_from_args(args):
    given = [n for n in ("fx", "fy", "cx", "cy") if getattr(args, n) is not None]
    if args.no_camera_info and (given or args.camera_info):
        raise BagError("--no-camera-info contradicts --camera-info/--fx/--cx/--cy; drop one")
    if given and args.camera_info:
        raise BagError("give either --camera-info or --fx/--fy/--cx/--cy, not both")
    if args.camera_info:
        return load_calibration(args.camera_info)
    if given:
        missing = [f"--{n}" for n in ("fx", "cx", "cy") if getattr(args, n) is None]
        if missing:
            raise BagError(f"intrinsics need --fx, --cx and --cy (missing {' '.join(missing)})")
        return intrinsics(args.fx, args.fy, args.cx, args.cy)
    return None


def print_report(args, source, rate: float, report) -> None:
    """One stderr line per skipped file, then the summary line on stdout."""
    for name, reason in report.skipped:
        print(f"{PROG}: skipped {name}: {reason}", file=sys.stderr)
    info = (f"{report.camera_info} CameraInfo on {args.info_topic}" if report.camera_info
            else "no CameraInfo (no calibration given or found)")
    n_skipped = len(report.skipped)
    skipped = f", {n_skipped} unreadable file{'s' * (n_skipped > 1)} skipped" if n_skipped else ""
    print(f"{PROG}: {report.frames} frames ({source.kind}{skipped}) at {rate:g} Hz on "
          f"{args.image_topic}, {info} -> {report.path} ({args.storage}, "
          f"{report.size_bytes / 1e6:.1f} MB, {report.duration_s:.2f} s of data, written in "
          f"{report.seconds:.1f} s)")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.max_frames is not None and args.max_frames < 1:
            raise BagError(f"--max-frames must be at least 1, got {args.max_frames}")
        if args.rate is not None and not args.rate > 0:
            raise BagError(f"--rate must be positive, got {args.rate}")
        source = open_source(args.input, calibration_from_args(args), args.no_camera_info,
                             args.sequence, args.rate)
        rate = args.rate or source.default_rate
        for note in source.notes:
            print(f"{PROG}: note: {note}", file=sys.stderr)
        start = None if args.start_time is None else round(args.start_time * 1e9)
        frames = source.frames(args.max_frames, args.resize, strict=args.strict)
        report = write_bag(frames, args.output, rate, storage=args.storage,
                           image_topic=args.image_topic, info_topic=args.info_topic,
                           frame_id=args.frame_id, encoding=args.encoding, start_stamp=start,
                           force=args.force, total=source.total(args.max_frames),
                           progress=not args.quiet)
    except BagError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written to {args.output}", file=sys.stderr)
        return 130
    print_report(args, source, rate, report)
    return 1 if report.skipped else 0  # the bag is usable, but not everything is in it


if __name__ == "__main__":
    sys.exit(main())
