"""`make demo`: a camera sequence through superseg_node, as separate processes over ROS 2.

    input (rendered sequence | your bag, images, video) -> bag -> superseg-play
        -> superseg_node -> superseg-record -> overlay PNGs + summary.json

Overlays keep the input's names (overlay/<input name>.png; for a bag without frame names,
overlay/<header stamp>.png), so each can be matched back to its input frame.

Uses the bundled model when one ships in models/; until then an explicitly labelled randomly
initialised network (its keypoints show the pipeline works, not what a trained model finds).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from .checkpoint import RANDOM, bundled_model_path
from .cli.record import DEFAULT_TOPICS
from .ros.processes import start_python, stop_process


def render_scene(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic RGB street-like scene: facades with windows, a checkerboard, a road."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), (150, 180, 215), np.uint8)  # sky
    horizon = height // 2
    cv2.rectangle(img, (0, horizon), (width, height), (90, 90, 95), -1)  # road
    cv2.fillPoly(img, [np.array([[width // 2 - 8, horizon], [width // 2 + 8, horizon],
                                 [width // 2 + 40, height], [width // 2 - 40, height]])],
                 (230, 230, 230))
    x = 0
    while x < width:  # facades of random widths and heights, with window grids
        w, h = int(rng.integers(70, 140)), int(rng.integers(height // 5, horizon - 10))
        colour = tuple(int(c) for c in rng.integers(60, 200, 3))
        cv2.rectangle(img, (x, horizon - h), (x + w, horizon), colour, -1)
        for wy in range(horizon - h + 12, horizon - 20, 28):
            for wx in range(x + 10, x + w - 18, 24):
                cv2.rectangle(img, (wx, wy), (wx + 12, wy + 16), (40, 50, 70), -1)
        x += w + int(rng.integers(0, 12))
    cell = max(8, width // 40)  # a calibration-board-like patch on the road
    x0, y0 = width // 8, horizon + height // 8
    for i in range(4):
        for j in range(6):
            if (i + j) % 2 == 0:
                cv2.rectangle(img, (x0 + j * cell, y0 + i * cell),
                              (x0 + (j + 1) * cell, y0 + (i + 1) * cell), (20, 20, 20), -1)
    img = cv2.GaussianBlur(img, (3, 3), 0.8)
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def render_sequence(frames: int = 24, height: int = 240, width: int = 320, seed: int = 0):
    """A camera panning right across a street while a car drives left: frames as RGB arrays."""
    street = render_scene(height, width * 2, seed)
    for i in range(frames):
        x0 = i * width // frames  # pan: the static scene moves left in the image
        frame = street[:, x0:x0 + width].copy()
        car_x = width - 90 - i * (width // frames)  # the car drives against the pan
        y = height // 2 + height // 10
        cv2.rectangle(frame, (car_x, y), (car_x + 70, y + 30), (200, 30, 30), -1)
        cv2.rectangle(frame, (car_x + 12, y - 14), (car_x + 52, y), (170, 20, 20), -1)
        for wheel in (car_x + 14, car_x + 56):
            cv2.circle(frame, (wheel, y + 30), 7, (20, 20, 20), -1)
        yield frame


def start(module: str, args: list[str], log: Path) -> subprocess.Popen:
    return start_python(["-m", module, *args], log)


def wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"{log.name}: '{text}' did not appear; its log:\n"
                       + log.read_text(errors="replace")[-3000:])


class DemoError(Exception):
    """Input the demo cannot use; the message says what to fix (exit 2)."""


def input_bag(source: Path | None, out: Path, rate: float | None = None,
              camera_info: Path | None = None) -> Path:
    """The bag to play: the user's bag, a bag made from their images/video (rate and intrinsics
    from the folder, or from `rate` / `camera_info`), or the rendered default sequence."""
    if source is not None and not source.exists():
        raise DemoError(f"INPUT {source} does not exist; give a bag folder, an image folder, "
                        f"a Cityscapes sequence folder or a video")
    if source is not None and (source / "metadata.yaml").is_file():
        if rate is not None or camera_info is not None:
            raise DemoError(f"{source} is a bag: it has its own timing and CameraInfo "
                            f"(RATE/--rate and CAMERA_INFO/--camera-info apply to images and "
                            f"videos; --rate-factor changes a bag's replay speed)")
        return source
    bag = out / "input_bag"
    args = ["--output", str(bag), "--force"]
    if rate is not None:
        args += ["--rate", str(rate)]
    if camera_info is not None:
        args += ["--camera-info", str(camera_info)]
    if source is None:
        frames = out / "input_frames"
        frames.mkdir(parents=True, exist_ok=True)
        for stale in frames.glob("*.png"):
            stale.unlink()
        for i, frame in enumerate(render_sequence()):
            cv2.imwrite(str(frames / f"{i:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        source = frames
        if rate is None:
            args += ["--rate", "2"]
        if camera_info is None:
            args += ["--fx", "250", "--cx", "159.5", "--cy", "119.5"]
    from .cli import make_bag

    status = make_bag.main([str(source), *args])
    if status == 1:  # some frames were unreadable: make-bag named them, the rest is in the bag
        print(f"demo: continuing without the unreadable frames of {source}", file=sys.stderr)
    elif status != 0:
        raise DemoError(f"could not make a bag from {source} (superseg-make-bag said why above)")
    return bag


def node_counters(bag: Path) -> dict:
    """The node's last /diagnostics values (frames received, processed, skipped, errors)."""
    from .bags import iter_bag

    values = {}
    for _, _, msg, _ in iter_bag(bag, ["/diagnostics"], deserialize=True):
        for status in msg.status:
            values.update({kv.key: kv.value for kv in status.values})
    return values


def overlay_name(stamp_ns: int, frame_names: dict[int, str]) -> str:
    """The input frame's file name (a video's 'frame 12' -> 'frame_12.png'), else the stamp."""
    name = frame_names.get(stamp_ns)
    if name is None:
        sec, nsec = divmod(stamp_ns, 1_000_000_000)
        return f"{sec}.{nsec:09d}.png"
    return Path(name.replace(" ", "_")).stem + ".png"


def export_overlays(bag: Path, folder: Path, frame_names: dict[int, str]) -> int:
    """Overlay images of the recorded outputs, named after their input frames (the node keeps
    the input's header stamp, which the input bag maps to a frame name)."""
    from .bags import iter_bag
    from .ros.image_conversion import image_to_array

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):  # from an earlier run
        stale.unlink()
    count = 0
    for count, (_, _, msg, _) in enumerate(iter_bag(bag, ["/superseg/overlay"],
                                                     deserialize=True), start=1):
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        cv2.imwrite(str(folder / overlay_name(stamp_ns, frame_names)),
                    cv2.cvtColor(image_to_array(msg), cv2.COLOR_RGB2BGR))
    return count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", type=Path, default=Path("demo_output"))
    p.add_argument("--input", type=Path,
                   help="a bag, image folder, Cityscapes sequence folder or video "
                        "(default: a sequence the demo renders)")
    p.add_argument("--model", help="checkpoint (default: the bundled model, else random)")
    p.add_argument("--rate-factor", type=float, default=1.0, help="replay speed")
    p.add_argument("--rate", type=float, metavar="HZ",
                   help="frame rate of an image folder (default: from its times, else 10)")
    p.add_argument("--camera-info", type=Path, metavar="FILE",
                   help="intrinsics for images or a video (ROS camera YAML, Cityscapes JSON or "
                        "a 3x3 text K; default: a calibration file in the folder, else none)")
    args = p.parse_args(argv)
    try:
        return run(args)
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    from .bags import BagError, bag_frame_names, bag_topics

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or (None if bundled_model_path() else RANDOM)
    if model == RANDOM:
        print("demo: no trained model ships in models/ yet, so this demo runs a RANDOMLY "
              "INITIALISED network (labelled as such on every overlay)")
    bag = input_bag(args.input, out, args.rate, args.camera_info)
    recorded = out / "outputs_bag"
    try:
        topics = bag_topics(bag)
    except BagError as exc:
        raise DemoError(str(exc)) from None
    image_topic = next((t for t, (kind, _) in topics.items() if kind.endswith("/Image")), None)
    if image_topic is None:
        raise DemoError(f"{bag} has no sensor_msgs/Image topic (topics: "
                        f"{', '.join(sorted(topics)) or 'none'})")
    info_topic = next((t for t, (kind, _) in topics.items() if kind.endswith("/CameraInfo")),
                      None)
    node_args = ["--image", image_topic, "--camera-info", info_topic or "camera_info",
                 "--param", "extractor.keep_unstable:=true",  # publish rejected ones, flagged
                 "--param", "qos.profile:=reliable",  # a replayed bag should lose no frame
                 *(["--model", model] if model else [])]
    if info_topic is None:  # nothing to wait for: keypoints without normalised coordinates
        node_args += ["--param", "sync.camera_info_timeout:=0.0"]
    node = start("superseg_ros.ros.launch_cli", node_args, out / "node.log")
    recorder = player = None
    try:
        wait_for_line(out / "node.log", "listening on", node, 120)
        recorder = start("superseg_ros.cli.record",
                         ["--output", str(recorded), "--force", "--summary",
                          str(out / "summary.json"), "--topics", *DEFAULT_TOPICS,
                          "/diagnostics"], out / "record.log")
        wait_for_line(out / "record.log", "recording /superseg/overlay", recorder, 60)
        time.sleep(1.0)  # let discovery match the recorder before the first frame
        # Stamps stay as recorded, so each output names its input frame; the node measures its
        # own latency (input received -> published) for /diagnostics.
        player = start("superseg_ros.cli.play",
                       [str(bag), "--wait-for-subscribers", "60",
                        "--rate-factor", str(args.rate_factor)], out / "play.log")
        player.wait()
        time.sleep(3.0)  # the node finishes the last frame, the recorder receives it
    finally:
        for process in (player, recorder, node):
            if process is not None:
                stop_process(process)
    if player.returncode != 0:
        print(f"demo: the player failed, see {out / 'play.log'}", file=sys.stderr)
        return 1
    frames = export_overlays(recorded, out / "overlay", bag_frame_names(bag))
    summary = json.loads((out / "summary.json").read_text())
    keypoints = summary["topics"].get("/superseg/keypoints", {})
    counters = node_counters(recorded)
    print(f"demo: {frames} overlay frames in {out / 'overlay'}/, outputs in {recorded}/")
    print("demo: node frames received {frames_received}, processed {frames_processed}, "
          "skipped (network slower than the camera) {frames_skipped}, errors {errors}, "
          "processing ms p50 {processing_ms_p50}, latency in the node (input received -> "
          "published) ms p50 {node_latency_ms_p50}".format_map(
              collections.defaultdict(lambda: "?", counters)))
    masks = summary["topics"].get("/superseg/stability_mask", {}).get("messages", 0)
    print(f"demo: keypoints per frame {keypoints.get('keypoints_per_frame')}, share flagged "
          f"unstable (red on the overlays) {keypoints.get('unstable_share')}, stability masks "
          f"published {masks}; full summary in {out / 'summary.json'}")
    return 0 if frames else 1


if __name__ == "__main__":
    sys.exit(main())
