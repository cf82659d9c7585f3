"""superseg-bench-node: the node's own time per stage of a frame, and what it adds to inference.

superseg_node runs in a child process (loopback-only DDS) on the bundled model (--model,
--backend); this process publishes one rgb8 Image + CameraInfo at a time and waits for the
Keypoints with that stamp. The stage times come from the node itself (its /diagnostics: p50/p95
of each stage, timed per frame in SuperSegNode._process), not from subtracting medians measured
elsewhere:
    convert    Image -> array (and CameraInfo -> camera model, cached)
    inference  FrameProcessor.process: resize + extractor (preprocess, network, post-processing)
    messages   building every enabled output message (all are enabled here)
    publish    the publish calls
    overhead   per frame, the node's whole processing minus inference
The round trip is what this client saw: publish Image -> receive Keypoints, DDS both ways.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_OVERHEAD_MS = 10.0  # issue 10: the node adds at most this over inference, median, 640x480
WARMUP = 2  # frames first, not in the client's round trips (the node's window keeps them)
# stage rows of the table: the node's STAGES, then the whole frame and receive -> published
EXTRA_ROWS = {"processing": "whole frame (processing)",
              "node_latency": "received -> published (incl. queueing)"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="superseg-bench-node", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, metavar="PATH|random",
                   help="checkpoint for the node (default: the bundled model)")
    p.add_argument("--backend", help="the node's extractor.backend (default: the node's own, "
                                     "torch)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--frames", type=int, default=100,
                   help=f"timed frames, after {WARMUP} warm-up; 100 or more fill the node's "
                        "window, so its percentiles leave the warm-up out")
    p.add_argument("--max-keypoints", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=60.0, help="s to wait for each output")
    args = p.parse_args(argv)
    if args.frames < 1 or args.height < 8 or args.width < 8:
        p.error("--frames must be >= 1 and the image at least 8x8")
    return args


def node_arguments(model: str | None, backend: str | None, max_keypoints: int,
                   namespace: str = "") -> list[str]:
    """`python ARGS` that start superseg_node for the bench: reliable input QoS, every output."""
    args = ["-m", "superseg_ros.ros.launch_cli", "--param", "qos.profile:=reliable",
            "--param", f"extractor.max_keypoints:={max_keypoints}"]
    if model:
        args += ["--model", model]
    if backend:
        args += ["--param", f"extractor.backend:={backend}"]
    if namespace:
        args += ["--namespace", namespace]
    return args


class Client:
    """The bench's side of the wire: sends frames one at a time, reads the node's /diagnostics.

    Works on any rclpy node and context (the tests pass their own)."""

    def __init__(self, node, namespace: str = ""):
        import rclpy.executors
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from superseg_msgs.msg import Keypoints

        prefix = f"/{namespace.strip('/')}" if namespace.strip("/") else ""
        self.node, self.node_name = node, f"{prefix}/superseg_node"
        self.keypoints_topic = f"{prefix}/superseg/keypoints"
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = node.create_publisher(Image, f"{prefix}/image", qos)
        self.info_pub = node.create_publisher(CameraInfo, f"{prefix}/camera_info", qos)
        self.received, self.statuses = {}, []
        node.create_subscription(Keypoints, self.keypoints_topic, self._on_keypoints, qos)
        node.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: self.statuses.extend(m.status), 10)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)

    def _on_keypoints(self, msg):
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.received.setdefault(stamp, time.perf_counter())

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.01)
        return predicate()

    def wait_for_node(self, process, timeout: float) -> None:
        """Until the node subscribes to images and publishes keypoints; RuntimeError if its
        process ends first or it takes longer than `timeout`."""
        def ready():
            return process.poll() is not None or (
                self.image_pub.get_subscription_count() > 0
                and self.node.count_publishers(self.keypoints_topic) > 0)
        if not self.spin_until(ready, timeout) or process.poll() is not None:
            raise RuntimeError("superseg_node did not start")
        self.spin_until(lambda: False, 0.5)  # let discovery settle in both directions

    def round_trip(self, image, timeout: float) -> float:
        """Milliseconds from publishing `image` (rgb8, with a CameraInfo) to its Keypoints."""
        from sensor_msgs.msg import CameraInfo

        from ..ros.image_conversion import make_image

        height, width = image.shape[:2]
        msg = make_image(image, "rgb8")
        msg.header.stamp = self.node.get_clock().now().to_msg()
        info = CameraInfo(header=msg.header, width=width, height=height,
                          distortion_model="plumb_bob", d=[0.0] * 5,
                          k=[500.0, 0, width / 2, 0, 500.0, height / 2, 0, 0, 1])
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        sent = time.perf_counter()
        self.image_pub.publish(msg)
        self.info_pub.publish(info)
        if not self.spin_until(lambda: key in self.received, timeout):
            raise RuntimeError(f"no keypoints within {timeout:.0f} s")
        return (self.received[key] - sent) * 1e3

    def node_status(self, frames: int, timeout: float) -> dict:
        """The node's newest /diagnostics values once they count `frames` processed frames."""
        def latest():
            for status in reversed(self.statuses):
                if status.name.startswith(f"{self.node_name}:"):
                    return {kv.key: kv.value for kv in status.values}
            return {}

        def counted():
            return int(latest().get("frames_processed", 0)) >= frames
        if not self.spin_until(counted, timeout):
            raise RuntimeError(f"/diagnostics of {self.node_name} never counted {frames} frames")
        return latest()

    def close(self):
        self.executor.remove_node(self.node)
        self.executor.shutdown()


def stage_rows(values: dict) -> list[tuple[str, float, float]]:
    """(stage, p50 ms, p95 ms) from the node's diagnostics, its stages first."""
    from ..ros.node import STAGES

    names = {**{s: s for s in STAGES}, **EXTRA_ROWS}
    keys = {**{s: f"stage_{s}_ms" for s in STAGES},
            **{s: f"{s}_ms" for s in EXTRA_ROWS}}
    return [(names[s], float(values[f"{keys[s]}_p50"]), float(values[f"{keys[s]}_p95"]))
            for s in keys]


def render(args, values: dict, trips: list[float]) -> str:
    from ..ros.node import WINDOW

    overhead = float(values["stage_overhead_ms_p50"])
    counted = min(args.frames + WARMUP, WINDOW)
    lines = [
        f"# superseg-bench-node: {values.get('model', '?')}, backend "
        f"{args.backend or 'node default'}, {args.height}x{args.width} rgb8, max "
        f"{args.max_keypoints} keypoints, every output published, {args.frames} frames",
        "",
        f"Per-stage times from the node's /diagnostics (its last {counted} frames"
        + (f", {WARMUP} of them warm-up" if args.frames + WARMUP <= WINDOW else "") + ").",
        "",
        "| stage | p50 ms | p95 ms |",
        "|---|--:|--:|",
        *(f"| {name} | {p50:.1f} | {p95:.1f} |" for name, p50, p95 in stage_rows(values)),
        "",
        f"Node overhead over inference (median of per-frame processing - inference): "
        f"{overhead:.1f} ms; target <= {TARGET_OVERHEAD_MS:.0f} ms: "
        f"{'met' if overhead <= TARGET_OVERHEAD_MS else 'NOT met'}"
        + ("" if (args.height, args.width) == (480, 640) else " (the target is for 480x640)")
        + ".",
        f"Round trip seen by the client (publish Image -> receive Keypoints, DDS both ways): "
        f"median {statistics.median(trips):.1f} ms, min {min(trips):.1f}, max {max(trips):.1f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import os

    import rclpy
    from tqdm import tqdm

    from ..demo import render_scene
    from ..ros.processes import child_environment, start_python, stop_process

    image = render_scene(args.height, args.width)
    os.environ.update(child_environment())  # this client joins the node's loopback-only domain
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "node.log"
        process = start_python(node_arguments(args.model, args.backend, args.max_keypoints), log)
        context = rclpy.context.Context()
        rclpy.init(context=context)
        node = rclpy.create_node("superseg_bench_client", context=context)
        client = Client(node)
        try:
            client.wait_for_node(process, args.timeout)
            frames = tqdm(range(WARMUP + args.frames), desc="superseg-bench-node", unit="frame",
                          file=sys.stderr)
            trips = [client.round_trip(image, args.timeout) for _ in frames][WARMUP:]
            values = client.node_status(WARMUP + args.frames, args.timeout)
        except RuntimeError as exc:
            print(f"superseg-bench-node: error: {exc}; the node's log:\n{log.read_text()}",
                  file=sys.stderr)
            return 1
        finally:
            client.close()
            node.destroy_node()
            rclpy.try_shutdown(context=context)
            stop_process(process)
    print(render(args, values, trips), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
