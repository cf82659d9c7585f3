"""Live-node fuzz over real DDS (issue 13): malformed Image, CompressedImage and CameraInfo
messages interleaved with good frames, published to a running superseg_node.

The node must stay up, count every bad frame in /diagnostics by its reason, log each reason
once, and publish a result for every good frame it did not skip as stale. Paced runs (one frame
at a time) check the counts exactly; a burst checks that nothing is lost silently:
received = processed + errors + skipped, and every processed frame was published.
"""

import collections
import random
import time

import cv2
import numpy as np
import pytest

import ros_helpers
from superseg_ros.checkpoint import save_checkpoint
from superseg_ros.demo import render_scene
from superseg_ros.network import SuperSegmentation

from conftest import TINY

rclpy = ros_helpers.import_rclpy()
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from superseg_msgs.msg import Keypoints  # noqa: E402

from fuzz import jpeg_declaring, png_declaring  # noqa: E402
from superseg_ros.ros.image_conversion import make_image  # noqa: E402

QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
HEIGHT, WIDTH = 60, 80
NODE_PARAMS = ["--param", "qos.profile:=reliable", "--param", "qos.depth:=200",
               "--param", "diagnostics_period:=0.2", "--param", "sync.queue_size:=200",
               "--param", "extractor.max_keypoints:=50", "--param", "publish.overlay:=false",
               "--param", "publish.mask_image:=false", "--param", "publish.group_image:=false"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch
    torch.manual_seed(5)
    return save_checkpoint(SuperSegmentation(TINY), tmp_path_factory.mktemp("m") / "tiny.pt")


def camera_info(width=WIDTH, height=HEIGHT, k=None, model="plumb_bob"):
    info = CameraInfo(width=width, height=height, distortion_model=model)
    info.k = k or [70.0, 0.0, WIDTH / 2, 0.0, 70.0, HEIGHT / 2, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    return info


def raw_cases(scene):
    """(reason or None for a good frame, Image, CameraInfo) makers."""
    def good():
        return None, make_image(scene, "rgb8"), camera_info()

    def truncated():
        msg = make_image(scene, "rgb8")
        msg.data = bytes(msg.data)[:random.randrange(0, len(msg.data))]
        return "truncated", msg, camera_info()

    def short_step():
        msg = make_image(scene, "rgb8")
        msg.step = random.randrange(0, WIDTH * 3)
        return "step_too_small", msg, camera_info()

    def encoding():
        return "unsupported_encoding", Image(height=HEIGHT, width=WIDTH, step=WIDTH * 4,
                                             encoding=random.choice(["32FC1", "yuv422", "x"]),
                                             data=bytes(WIDTH * 4 * HEIGHT)), camera_info()

    def zero():
        return "zero_size", Image(height=0, width=random.choice([0, WIDTH]), encoding="rgb8",
                                  step=0), camera_info()

    def huge():  # a 100000 x 100000 declaration with a few bytes: refused, nothing allocated
        return "truncated", Image(height=100_000, width=100_000, encoding="rgb8",
                                  step=300_000, data=bytes(64)), camera_info(100_000, 100_000)

    def nan_info():
        k = [float("nan")] * 9 if random.random() < 0.5 else \
            [0.0, 0.0, 40.0, 0.0, -5.0, 30.0, 0.0, 0.0, 1.0]
        return "camera_info_invalid", make_image(scene, "rgb8"), camera_info(k=k)

    def other_size():
        return "camera_info_size_mismatch", make_image(scene, "rgb8"), camera_info(640, 480)

    def distortion():
        return "camera_info_invalid", make_image(scene, "rgb8"), camera_info(model="wavy")

    return [good, good, good, truncated, short_step, encoding, zero, huge, nan_info, other_size,
            distortion]


def compressed_cases(scene):
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))[1].tobytes()

    def good():
        return None, CompressedImage(format="jpeg", data=jpeg)

    def cut():
        return "undecodable", CompressedImage(format="jpeg",
                                              data=jpeg[:random.randrange(1, 200)])

    def garbage():
        return "undecodable", CompressedImage(format="png", data=bytes(
            random.randrange(256) for _ in range(random.randrange(1, 300))))

    def huge():
        data = random.choice([png_declaring(100_000, 100_000), jpeg_declaring(30_000, 30_000)])
        return "compressed_too_large", CompressedImage(format="png", data=data)

    def empty():
        return "compressed_empty", CompressedImage(format="jpeg", data=b"")

    def depth():
        return "compressed_depth", CompressedImage(format="16UC1; compressedDepth png",
                                                   data=jpeg)

    return [good, good, cut, garbage, huge, empty, depth]


class Wire:
    """The test's side: publishes frames, collects keypoints and the node's diagnostics."""

    def __init__(self, node, namespace, compressed):
        prefix = f"/{namespace}"
        kind, topic = (CompressedImage, "image/compressed") if compressed else (Image, "image")
        self.node = node
        self.image_pub = node.create_publisher(kind, f"{prefix}/{topic}", QOS)
        self.info_pub = node.create_publisher(CameraInfo, f"{prefix}/camera_info", QOS)
        self.keypoints, self.statuses = [], []
        node.create_subscription(Keypoints, f"{prefix}/superseg/keypoints", self.keypoints.append,
                                 QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda a: self.statuses.extend(a.status), 50)
        self.node_name = f"{prefix}/superseg_node"
        self.stamp = 1_000_000_000

    def ready(self, timeout=60):
        return ros_helpers.spin_until(
            self.node, lambda: self.node.count_subscribers(self.image_pub.topic_name) > 0
            and self.node.count_subscribers(self.info_pub.topic_name) > 0
            and self.node.count_publishers(f"{self.node_name.rsplit('/', 1)[0]}"
                                           "/superseg/keypoints") > 0, timeout)

    def send(self, image, info=None):
        self.stamp += 50_000_000
        image.header.stamp.sec, image.header.stamp.nanosec = divmod(self.stamp, 10**9)
        if info is not None:
            info.header = image.header
            self.info_pub.publish(info)
        self.image_pub.publish(image)
        return image.header.stamp

    def values(self) -> dict:
        return ros_helpers.last_status(self.statuses, self.node_name) or {}

    def count(self, key) -> int:
        return int(self.values().get(key, 0))

    def published(self, stamp) -> bool:
        return any(k.header.stamp == stamp for k in self.keypoints)


def run_paced(wire, cases, frames, seed, with_info):
    """One frame at a time: a good one until its keypoints arrive, a bad one until the node has
    counted it. Returns the reasons sent (Counter) and the good frames that got no output."""
    random.seed(seed)
    sent, missing = collections.Counter(), []
    for _ in range(frames):
        case = random.choice(cases)()
        reason, image = case[0], case[1]
        info = case[2] if with_info else None
        errors_before = wire.count("errors")
        stamp = wire.send(image, info)
        if reason is None:
            sent["good"] += 1
            if not ros_helpers.spin_until(wire.node, lambda: wire.published(stamp), 20):
                missing.append(stamp)
        else:
            sent[reason] += 1
            ros_helpers.spin_until(wire.node, lambda: wire.count("errors") > errors_before, 20)
    return sent, missing


def settle(wire, timeout=30):
    """Wait until every received frame is accounted for in the node's diagnostics."""
    def done():
        v = wire.values()
        if not v:
            return False
        return int(v["frames_received"]) == accounted(v)
    ros_helpers.spin_until(wire.node, done, timeout)
    ros_helpers.spin_until(wire.node, lambda: False, 0.5)  # one more diagnostics period


ACCOUNTS = ("frames_processed", "errors", "frames_skipped", "frames_unpaired",
            "frames_waiting_for_camera_info")


def accounted(values) -> int:
    """Every received image ends in exactly one of these (see the node's diagnostics)."""
    return sum(int(values[k]) for k in ACCOUNTS)


def check_log_once(log: str, reasons) -> None:
    for reason in reasons:
        lines = [line for line in log.splitlines() if f"[{reason}: logged once" in line]
        assert len(lines) == 1, f"reason {reason} logged {len(lines)} times:\n{log[-3000:]}"


def report(title, sent, values):
    print(f"\n{title}")
    print("| reason | sent | counted by the node |")
    print("|---|--:|--:|")
    for reason, n in sorted(sent.items()):
        counted = values.get("frames_processed") if reason == "good" else \
            values.get(f"errors.{reason}", 0)
        print(f"| {reason} | {n} | {counted} |")
    print({k: values[k] for k in ("frames_received", "frames_processed", "frames_skipped",
                                  "errors") if k in values})


def test_raw_images_and_camera_info(tmp_path, checkpoint):
    scene = render_scene(HEIGHT, WIDTH, seed=1)
    args = ["-m", "superseg_ros.ros.launch_cli", "--model", str(checkpoint), "--namespace",
            "fuzzraw", *NODE_PARAMS]
    with ros_helpers.python_process(args, tmp_path / "node.log") as child, \
            ros_helpers.ros_node("fuzz_raw_client") as node:
        wire = Wire(node, "fuzzraw", compressed=False)
        assert wire.ready(), child.output()
        sent, missing = run_paced(wire, raw_cases(scene), 70, seed=0, with_info=True)
        settle(wire)
        values = wire.values()
        report("paced: raw Image + CameraInfo", sent, values)
        assert child.popen.poll() is None, child.output()
        assert not missing, f"good frames without output: {missing}"
        assert int(values["frames_processed"]) == sent["good"] == len(wire.keypoints)
        bad = {r: n for r, n in sent.items() if r != "good"}
        assert {r: int(values.get(f"errors.{r}", 0)) for r in bad} == bad  # exactly, by reason
        assert int(values["errors"]) == sum(bad.values())
        assert int(values["frames_skipped"]) == 0
        check_log_once(child.output(), bad)

        # burst: no pacing; the node may skip stale frames, but nothing is lost silently
        before = {k: int(values[k]) for k in ("frames_received",) + ACCOUNTS}
        published_before = len(wire.keypoints)
        random.seed(1)
        burst = collections.Counter()
        for _ in range(120):
            reason, image, info = random.choice(raw_cases(scene))()
            burst[reason or "good"] += 1
            wire.send(image, info)
            ros_helpers.spin_until(node, lambda: False, 0.005)
        settle(wire)
        after = wire.values()
        delta = {k: int(after[k]) - v for k, v in before.items()}
        counted = {k: int(after[k]) - int(values.get(k, 0)) for k in after
                   if k.startswith("errors.") or k == "frames_processed"}
        report("burst: raw Image + CameraInfo (120 frames, no pacing; counts of the burst)",
               burst, {**after, **counted})
        print("delta", delta, "published", len(wire.keypoints) - published_before)
        assert child.popen.poll() is None, child.output()
        assert delta["frames_received"] == 120
        assert delta["frames_received"] == sum(delta[k] for k in ACCOUNTS)
        assert len(wire.keypoints) - published_before == delta["frames_processed"]
        assert delta["errors"] <= sum(n for r, n in burst.items() if r != "good")
        check_log_once(child.output(), bad)


def test_compressed_images(tmp_path, checkpoint):
    scene = render_scene(HEIGHT, WIDTH, seed=2)
    args = ["-m", "superseg_ros.ros.launch_cli", "--model", str(checkpoint), "--namespace",
            "fuzzjpeg", "--param", "use_compressed:=true",
            "--param", "sync.camera_info_timeout:=0.0", *NODE_PARAMS]
    with ros_helpers.python_process(args, tmp_path / "node.log") as child, \
            ros_helpers.ros_node("fuzz_jpeg_client") as node:
        wire = Wire(node, "fuzzjpeg", compressed=True)
        assert wire.ready(), child.output()
        sent, missing = run_paced(wire, [lambda c=c: (*c(), None) for c in
                                         compressed_cases(scene)], 40, seed=0, with_info=True)
        settle(wire)
        values = wire.values()
        report("paced: CompressedImage", sent, values)
        assert child.popen.poll() is None, child.output()
        assert not missing, f"good frames without output: {missing}"
        bad = {r: n for r, n in sent.items() if r != "good"}
        assert {r: int(values.get(f"errors.{r}", 0)) for r in bad} == bad
        assert int(values["frames_processed"]) == sent["good"]
        check_log_once(child.output(), bad)
        assert np.isfinite(wire.keypoints[-1].x).all()
