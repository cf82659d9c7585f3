"""superseg_node in its own process, driven over real DDS on loopback.

One node process (a tiny checkpoint, network at half scale) serves every test here; the test
process publishes Image + CameraInfo and checks what comes back against the same FrameProcessor
run in-process on the same checkpoint.
"""

import re
import time

import cv2
import numpy as np
import pytest

import ros_helpers
from superseg_ros.checkpoint import load_model, save_checkpoint
from superseg_ros.demo import render_scene
from superseg_ros.extractor import Extractor
from superseg_ros.frame_processor import FrameProcessor
from superseg_ros.network import SuperSegmentation

from conftest import TINY

rclpy = ros_helpers.import_rclpy()
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from superseg_msgs.msg import Descriptors, Keypoints  # noqa: E402

from superseg_ros.ros.image_conversion import make_image  # noqa: E402

K = [180.0, 0.0, 150.0, 0.0, 185.0, 100.0, 0.0, 0.0, 1.0]
D = [-0.2, 0.05, 0.001, -0.002, 0.0]
EXTRACTOR = {"max_keypoints": 150, "detection_threshold": 0.0}
QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    return save_checkpoint(SuperSegmentation(TINY), path)


@pytest.fixture(scope="module")
def node_process(tmp_path_factory, checkpoint):
    log = tmp_path_factory.mktemp("node") / "node.log"
    params = ["--param", "scale:=0.5", "--param", "sync.camera_info_timeout:=1.0",
              "--param", "qos.profile:=reliable"]
    params += sum((["--param", f"extractor.{k}:={v}"] for k, v in EXTRACTOR.items()), [])
    args = ["-m", "superseg_ros.ros.launch_cli", "--model", str(checkpoint), *params]
    with ros_helpers.python_process(args, log) as child:
        yield child


class Client:
    """The test's side of the wire: publishes frames, collects the node's outputs."""

    def __init__(self, node):
        self.node = node
        self.image_pub = node.create_publisher(Image, "image", QOS)
        self.info_pub = node.create_publisher(CameraInfo, "camera_info", QOS)
        self.keypoints, self.descriptors, self.diagnostics = [], [], []
        node.create_subscription(Keypoints, "superseg/keypoints", self.keypoints.append, QOS)
        node.create_subscription(Descriptors, "superseg/descriptors", self.descriptors.append,
                                 QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def send(self, image_msg, info_msg=None, stamp_ns=None):
        stamp_ns = stamp_ns or self.node.get_clock().now().nanoseconds
        image_msg.header.stamp.sec, image_msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        self.image_pub.publish(image_msg)
        if info_msg is not None:
            info_msg.header = image_msg.header
            self.info_pub.publish(info_msg)
        return image_msg.header

    def wait_for(self, stamp, timeout=30.0):
        def found():
            return any(k.header.stamp == stamp for k in self.keypoints) and \
                any(d.header.stamp == stamp for d in self.descriptors)

        assert ros_helpers.spin_until(self.node, found, timeout), "no output for that frame"
        return (next(k for k in self.keypoints if k.header.stamp == stamp),
                next(d for d in self.descriptors if d.header.stamp == stamp))


def camera_info(width=300, height=200):
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    info.k, info.d = K, D
    return info


@pytest.fixture(scope="module")
def client(node_process):
    with ros_helpers.ros_node("superseg_test_client") as node:
        client = Client(node)
        ready = ros_helpers.spin_until(
            node, lambda: node.count_publishers("superseg/keypoints") > 0
            and node.count_subscribers("image") > 0, 60)
        assert ready, f"node did not come up:\n{node_process.output()}"
        yield client


@pytest.fixture(scope="module")
def scene():
    return render_scene(200, 300, seed=4)


def test_outputs_match_the_in_process_pipeline(client, checkpoint, scene):
    image = make_image(scene, "rgb8")
    image.header.frame_id = "front_camera"
    header = client.send(image, camera_info())
    keypoints, descriptors = client.wait_for(header.stamp)

    # header and resolution are the input image's
    assert keypoints.header.frame_id == "front_camera" and keypoints.header.stamp == header.stamp
    assert (keypoints.width, keypoints.height) == (300, 200)

    # the network ran at half scale; keypoints are in input pixels, as the plain pipeline says
    extractor = Extractor(load_model(checkpoint), EXTRACTOR, device="cpu")
    expected = FrameProcessor(extractor, scale=0.5).process(scene)
    xy = np.stack([np.asarray(keypoints.x), np.asarray(keypoints.y)], 1)
    np.testing.assert_allclose(xy, expected.keypoints, atol=1e-4)
    assert xy[:, 0].max() > 150 and xy[:, 1].max() > 100  # spans the full-size frame
    assert descriptors.count == len(xy) and descriptors.dimension == 32
    block = np.asarray(descriptors.data, np.float32).reshape(descriptors.count, -1)
    np.testing.assert_allclose(block, expected.descriptors, atol=1e-5)

    # normalised coordinates are OpenCV's undistortion with the CameraInfo's K and D
    reference = cv2.undistortPoints(xy.reshape(-1, 1, 2).astype(np.float64),
                                    np.array(K).reshape(3, 3), np.array(D)).reshape(-1, 2)
    normalized = np.stack([np.asarray(keypoints.x_normalized),
                           np.asarray(keypoints.y_normalized)], 1)
    np.testing.assert_allclose(normalized, reference, atol=2e-4)


def test_bgr_with_row_padding_gives_the_same_keypoints(client, scene):
    reference = client.wait_for(client.send(make_image(scene, "rgb8"), camera_info()).stamp)[0]
    bgr = np.ascontiguousarray(scene[..., ::-1])
    padded = np.zeros((200, 300 * 3 + 16), np.uint8)
    padded[:, :900] = bgr.reshape(200, 900)
    msg = Image(height=200, width=300, encoding="bgr8", step=916, data=padded.tobytes())
    got = client.wait_for(client.send(msg, camera_info()).stamp)[0]
    np.testing.assert_allclose(np.asarray(got.x), np.asarray(reference.x), atol=1e-4)


def bad_frames(scene):
    good = make_image(scene, "rgb8")
    truncated = make_image(scene, "rgb8")
    truncated.data = bytes(good.data)[: len(good.data) // 2]
    yield "unsupported encoding", Image(height=2, width=2, encoding="32FC1", step=8,
                                        data=bytes(16)), camera_info(2, 2)
    yield "zero-sized image", Image(height=0, width=0, encoding="rgb8", step=0), camera_info()
    yield "truncated image", truncated, camera_info()
    yield "CameraInfo of another size", make_image(scene, "rgb8"), camera_info(640, 480)
    nan_info = camera_info()
    nan_info.k = [float("nan")] * 9
    yield "NaN in CameraInfo", make_image(scene, "rgb8"), nan_info


def errors_reported(client):
    for array in reversed(client.diagnostics):
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            if "errors" in values:
                return int(values["errors"]), values
    return None, {}


def test_malformed_input_is_counted_and_the_node_keeps_serving(client, node_process, scene):
    before, _ = errors_reported(client)
    cases = list(bad_frames(scene))
    for _, msg, info in cases:
        client.send(msg, info)
        time.sleep(0.3)  # one at a time: the node keeps only the newest frame
        ros_helpers.spin_until(client.node, lambda: False, 0.3)
    keypoints, _ = client.wait_for(client.send(make_image(scene, "rgb8"), camera_info()).stamp)
    assert len(keypoints.x) > 0

    def counted():
        errors, _ = errors_reported(client)
        return errors is not None and errors - (before or 0) >= len(cases)

    assert ros_helpers.spin_until(client.node, counted, 10), errors_reported(client)
    assert node_process.popen.poll() is None
    log = node_process.output()
    for text in ("unsupported image encoding", "32FC1", "zero size", "truncated", "640x480", "NaN"):
        assert text.lower() in log.lower(), f"no clear log line mentioning {text!r}:\n{log}"


def test_compressed_images_without_camera_info_are_processed_after_the_timeout(tmp_path,
                                                                              checkpoint):
    """A second node on its own topics, fed JPEG CompressedImages; no CameraInfo ever arrives."""
    from sensor_msgs.msg import CompressedImage

    args = ["-m", "superseg_ros.ros.launch_cli", "--model", str(checkpoint), "--namespace",
            "lonely", "--param", "sync.camera_info_timeout:=0.5", "--param",
            "qos.profile:=reliable", "--param", "use_compressed:=true"]
    with ros_helpers.python_process(args, tmp_path / "node.log") as child:
        with ros_helpers.ros_node("lonely_client") as node:
            pub = node.create_publisher(CompressedImage, "/lonely/image/compressed", QOS)
            got = []
            node.create_subscription(Keypoints, "/lonely/superseg/keypoints", got.append, QOS)
            assert ros_helpers.spin_until(node, lambda: node.count_subscribers(
                "/lonely/image/compressed") > 0, 60), child.output()
            jpeg = cv2.imencode(".jpg", cv2.cvtColor(render_scene(64, 96), cv2.COLOR_RGB2BGR))[1]
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
                msg.header.stamp = node.get_clock().now().to_msg()
                pub.publish(msg)
                ros_helpers.spin_until(node, lambda: bool(got), 0.3)
            assert got, child.output()
            assert (got[0].width, got[0].height) == (96, 64) and len(got[0].x) > 0
            assert np.isnan(np.asarray(got[0].x_normalized)).all()
            assert "no CameraInfo" in child.output()


def test_a_wrong_parameter_stops_the_node_with_a_clear_message(tmp_path, checkpoint):
    args = ["-m", "superseg_ros.ros.launch_cli", "--model", str(checkpoint), "--param",
            "extractor.max_keypoint:=5"]
    with ros_helpers.python_process(args, tmp_path / "node.log") as child:
        child.popen.wait(timeout=60)
        assert child.popen.returncode == 2
        assert "unknown superseg_node.extractor key 'max_keypoint'" in child.output()


def set_parameters(client, **values):
    from rcl_interfaces.msg import Parameter
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter as RclpyParameter

    service = client.node.create_client(SetParameters, "/superseg_node/set_parameters")
    assert ros_helpers.spin_until(client.node, service.service_is_ready, 10)
    request = SetParameters.Request(parameters=[
        Parameter(name=name.replace("__", "."),
                  value=RclpyParameter(name, value=value).get_parameter_value())
        for name, value in values.items()])
    future = service.call_async(request)
    assert ros_helpers.spin_until(client.node, future.done, 10)
    client.node.destroy_client(service)
    return future.result().results


def test_parameters_change_at_run_time_where_safe(client, scene):
    [result] = set_parameters(client, extractor__max_keypoints=20)
    assert result.successful, result.reason
    keypoints, descriptors = client.wait_for(client.send(make_image(scene, "rgb8"),
                                                         camera_info()).stamp)
    assert len(keypoints.x) == 20 and descriptors.count == 20

    [result] = set_parameters(client, model="other.pt")
    assert not result.successful and "restart" in result.reason
    [result] = set_parameters(client, extractor__semantic_filter="sometimes")
    assert not result.successful and "semantic_filter" in result.reason
    [result] = set_parameters(client, extractor__max_keypoints=EXTRACTOR["max_keypoints"])
    assert result.successful


# --- namespaces, parameter files, shutdown --------------------------------------------------


def shipped_config_with(tmp_path, **values):
    """config/superseg.yaml exactly as shipped (its node key untouched), some values changed."""
    text = (ros_helpers.REPO / "config" / "superseg.yaml").read_text()
    for key, value in values.items():
        text, count = re.subn(rf"^(\s*{key}:)[ \t]+\S+", rf"\g<1> {value}", text, flags=re.M)
        assert count == 1, key
    path = tmp_path / "superseg.yaml"
    path.write_text(text)
    return path


def wait_for_log(child, text, timeout=60.0):
    deadline = time.monotonic() + timeout
    while text not in child.output() and time.monotonic() < deadline:
        assert child.popen.poll() is None, child.output()
        time.sleep(0.2)
    assert text in child.output(), child.output()


def test_a_namespaced_node_applies_the_shipped_parameter_file(tmp_path, checkpoint):
    """superseg-launch --namespace front with the shipped file: its values reach
    /front/superseg_node (max_keypoints 20, the model it names), and the node says so."""
    config = shipped_config_with(tmp_path, model=f'"{checkpoint}"', max_keypoints=20,
                                 detection_threshold=0.0, profile="reliable")
    args = ["-m", "superseg_ros.ros.launch_cli", "--config", str(config), "--namespace", "front"]
    with ros_helpers.python_process(args, tmp_path / "node.log") as child:
        with ros_helpers.ros_node("front_client") as node:
            image_pub = node.create_publisher(Image, "/front/image", QOS)
            info_pub = node.create_publisher(CameraInfo, "/front/camera_info", QOS)
            got = []
            node.create_subscription(Keypoints, "/front/superseg/keypoints", got.append, QOS)
            assert ros_helpers.spin_until(
                node, lambda: image_pub.get_subscription_count() > 0, 60), child.output()
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                image = make_image(render_scene(200, 300, seed=4), "rgb8")
                image.header.stamp = node.get_clock().now().to_msg()
                info = camera_info()
                info.header = image.header
                image_pub.publish(image)
                info_pub.publish(info)
                ros_helpers.spin_until(node, lambda: bool(got), 0.5)
            assert got, child.output()
            assert len(got[0].x) == 20
            log = child.output()
            assert f"parameter file {config}: " in log and "/front/superseg_node" in log
            assert "extractor.max_keypoints=20" in log and f"model {checkpoint.name}" in log


def test_the_node_warns_when_a_parameter_file_is_keyed_for_another_namespace(tmp_path,
                                                                              checkpoint):
    old = tmp_path / "old.yaml"
    old.write_text("superseg_node:\n  ros__parameters:\n    extractor: {max_keypoints: 20}\n")
    args = ["-m", "superseg_ros.ros.node", "--ros-args", "--params-file", str(old),
            "-r", "__ns:=/elsewhere", "-p", f"model:={checkpoint}"]
    with ros_helpers.python_process(args, tmp_path / "node.log") as child:
        wait_for_log(child, "listening on")
        log = child.output()
        assert f"{old}: no parameters for /elsewhere/superseg_node" in log
        assert "'/**/superseg_node:'" in log and "NOT applied" in log


def test_sigint_abandons_a_frame_in_flight_and_exits_promptly(tmp_path):
    """ros2 launch escalates to SIGTERM 5 s after SIGINT: the node must not wait for a
    forward pass. The dilated architecture (the one shipped before the lean default) on a
    1600x2400 frame takes about 5 s here, long enough to be caught in flight."""
    import signal

    from superseg_ros.checkpoint import save_checkpoint
    from superseg_ros.cli.bench import REFERENCE_CONFIG
    from superseg_ros.network import SuperSegmentation

    slow = save_checkpoint(SuperSegmentation(REFERENCE_CONFIG), tmp_path / "dilated.pt")
    args = ["-m", "superseg_ros.ros.launch_cli", "--namespace", "slow", "--model", str(slow),
            "--param", "qos.profile:=reliable", "--param", "sync.camera_info_timeout:=0.0"]
    with ros_helpers.python_process(args, tmp_path / "node.log") as child:
        with ros_helpers.ros_node("slow_client") as node:
            pub = node.create_publisher(Image, "/slow/image", QOS)
            statuses = []
            node.create_subscription(DiagnosticArray, "/diagnostics",
                                     lambda m: statuses.extend(m.status), 10)
            assert ros_helpers.spin_until(node, lambda: pub.get_subscription_count() > 0,
                                          60), child.output()
            frame = np.random.default_rng(0).integers(0, 255, (1600, 2400, 3), np.uint8)
            msg = make_image(frame, "rgb8")
            msg.header.stamp = node.get_clock().now().to_msg()
            pub.publish(msg)

            def in_flight():
                values = ros_helpers.last_status(statuses, "/slow/superseg_node")
                return values and values["frames_received"] == "1" \
                    and values["frames_processed"] == "0"
            assert ros_helpers.spin_until(node, in_flight, 60), child.output()
        started = time.monotonic()
        child.popen.send_signal(signal.SIGINT)
        child.popen.wait(timeout=60)
        seconds = time.monotonic() - started
        print(f"SIGINT -> exit with a frame in flight: {seconds:.2f} s")
        assert child.popen.returncode == 0, child.output()
        assert "abandoned the frame in flight" in child.output()
        assert seconds < 5.0, f"took {seconds:.1f} s: ros2 launch would have sent SIGTERM"
