"""superseg-bench-node: what superseg_node adds on top of the bare network, at 640x480.

1. In this process: median time of the network alone and of the whole extractor
   (preprocess + network + post-processing) on the same image and weights.
2. superseg_node in a separate process; this process publishes one rgb8 Image + CameraInfo at a
   time and waits for the Keypoints with that stamp: the round trip covers DDS transport both
   ways, decoding, the extractor, message building, serialisation and publishing.
Node overhead = round trip - network. Both numbers come from this run, as a ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv):
    p = argparse.ArgumentParser(prog="superseg-bench-node", description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--frames", type=int, default=10, help="timed frames (after 2 warm-up)")
    p.add_argument("--max-keypoints", type=int, default=1000)
    args = p.parse_args(argv)
    if args.frames < 1 or args.height < 8 or args.width < 8:
        p.error("--frames must be >= 1 and the image at least 8x8")
    return args


def bare_timings(model, image, frames: int, max_keypoints: int) -> dict:
    import torch

    from ..extractor import Extractor

    extractor = Extractor(model, {"max_keypoints": max_keypoints}, device="cpu")
    network, total = [], []
    with torch.inference_mode():
        for i in range(frames + 2):
            t0 = time.perf_counter()
            batch, sizes = extractor.preprocess(image)
            t1 = time.perf_counter()
            outputs = extractor.network(batch)
            t2 = time.perf_counter()
            extractor.postprocess(outputs, sizes)
            t3 = time.perf_counter()
            if i >= 2:
                network.append((t2 - t1) * 1e3)
                total.append((t3 - t0) * 1e3)
    return {"network": statistics.median(network), "extractor": statistics.median(total)}


def node_round_trips(checkpoint: Path, image, frames: int, max_keypoints: int, log: Path):
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from superseg_msgs.msg import Keypoints

    from ..ros.image_conversion import make_image
    from ..ros.processes import child_environment, start_python, stop_process

    os.environ.update(child_environment())  # this process joins the node's loopback-only domain
    node_process = start_python(
        ["-m", "superseg_ros.ros.launch_cli", "--model", str(checkpoint),
         "--param", "qos.profile:=reliable",
         "--param", f"extractor.max_keypoints:={max_keypoints}"], log)
    rclpy.init()
    node = rclpy.create_node("superseg_bench_client")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, "image", qos)
    info_pub = node.create_publisher(CameraInfo, "camera_info", qos)
    received = {}
    node.create_subscription(
        Keypoints, "superseg/keypoints",
        lambda m: received.setdefault((m.header.stamp.sec, m.header.stamp.nanosec),
                                      time.perf_counter()), qos)
    height, width = image.shape[:2]
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob",
                      k=[500.0, 0, width / 2, 0, 500.0, height / 2, 0, 0, 1], d=[0.0] * 5)
    trips = []
    try:
        deadline = time.monotonic() + 120
        while node.count_subscribers("image") == 0 or node.count_publishers(
                "superseg/keypoints") == 0:
            if time.monotonic() > deadline or node_process.poll() is not None:
                raise RuntimeError("superseg_node did not start; see " + str(log))
            rclpy.spin_once(node, timeout_sec=0.1)
        time.sleep(1.0)
        for i in range(frames + 2):
            msg = make_image(image, "rgb8")
            msg.header.stamp = node.get_clock().now().to_msg()
            info.header = msg.header
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            sent = time.perf_counter()
            image_pub.publish(msg)
            info_pub.publish(info)
            end = time.monotonic() + 30
            while key not in received and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.01)
            if key not in received:
                raise RuntimeError(f"no keypoints for frame {i} within 30 s; see {log}")
            if i >= 2:
                trips.append((received[key] - sent) * 1e3)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        stop_process(node_process)
    return statistics.median(trips), min(trips), max(trips)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from ..checkpoint import save_checkpoint
    from ..demo import render_scene
    from ..network import SuperSegmentation

    torch.manual_seed(0)
    model = SuperSegmentation({"encoder": args.encoder}).eval()
    image = render_scene(args.height, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(model, Path(tmp) / "bench.pt")
        bare = bare_timings(model, image, args.frames, args.max_keypoints)
        median, low, high = node_round_trips(checkpoint, image, args.frames,
                                             args.max_keypoints, Path(tmp) / "node.log")
    added = median - bare["network"]
    print(f"# superseg-bench-node: {args.encoder} (random weights), {args.height}x{args.width} "
          f"rgb8, max {args.max_keypoints} keypoints, all outputs published, median of "
          f"{args.frames} frames, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print()
    print("| stage | ms | share of round trip |")
    print("|---|--:|--:|")
    print(f"| network alone (in-process) | {bare['network']:.1f} | "
          f"{bare['network'] / median:.0%} |")
    print(f"| extractor: preprocess + network + post-processing | {bare['extractor']:.1f} | "
          f"{bare['extractor'] / median:.0%} |")
    print(f"| node round trip: publish Image -> receive Keypoints (min {low:.0f}, max "
          f"{high:.0f}) | {median:.1f} | 100% |")
    print(f"| **added by the node** (round trip - network) | **{added:.1f}** | "
          f"{added / median:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
