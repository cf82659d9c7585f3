"""superseg_msgs: generated Python types, and a real round trip between two processes over DDS."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ros_helpers

N, D, H, W = 500, 256, 480, 640


@pytest.fixture(scope="module", autouse=True)
def workspace():
    ros_helpers.require_workspace()


def make_arrays(rng):
    """Non-trivial values for every array field (NaN included, as without CameraInfo)."""
    x_norm = rng.normal(size=N).astype(np.float32)
    x_norm[::7] = np.nan
    desc = rng.normal(size=(N, D)).astype(np.float32)
    return {
        "x": rng.uniform(0, W - 1, N).astype(np.float32),
        "y": rng.uniform(0, H - 1, N).astype(np.float32),
        "score": np.sort(rng.uniform(0, 1, N).astype(np.float32))[::-1].copy(),
        "class_id": rng.integers(0, 19, N, dtype=np.uint8),
        "group_id": rng.integers(0, 4, N, dtype=np.uint8),
        "stable": rng.uniform(size=N) < 0.7,
        "x_normalized": x_norm,
        "y_normalized": rng.normal(size=N).astype(np.float32),
        "descriptors": desc / np.linalg.norm(desc, axis=1, keepdims=True),
        "mask": np.where(rng.uniform(size=(H, W)) < 0.5, 255, 0).astype(np.uint8),
    }


def test_workspace_imports_the_source_tree(tmp_path):
    """With install/ sourced, `superseg_ros` is the editable source tree, not a copy or symlink."""
    code = "import superseg_ros; print(superseg_ros.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == str(ros_helpers.REPO / "superseg_ros" / "__init__.py")


def test_numpy_arrays_fill_the_array_fields(rng):
    from superseg_msgs.msg import Descriptors, Keypoints, StabilityMask

    a = make_arrays(rng)
    kp = Keypoints(width=W, height=H)
    for name in ("x", "y", "score", "class_id", "group_id", "x_normalized", "y_normalized"):
        setattr(kp, name, a[name])
        np.testing.assert_array_equal(np.asarray(getattr(kp, name)), a[name])
    kp.stable = a["stable"].tolist()  # bool[] is a plain list of bool
    desc = Descriptors(dimension=D, count=N, data=a["descriptors"].ravel())
    np.testing.assert_array_equal(np.asarray(desc.data).reshape(N, D), a["descriptors"])
    sm = StabilityMask(threshold=0.5, group_names=["static", "flat", "dynamic", "unstable"],
                       stable_groups=np.array([0, 1], np.uint8))
    sm.mask.data = a["mask"].ravel()
    assert bytes(sm.mask.data) == a["mask"].tobytes()


# Child process: publishes one of each message (reliable, transient local so a late subscriber
# still gets it), then spins until the test stops it.
PUBLISHER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from superseg_ros.ros.loopback import require_loopback
    require_loopback()
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from superseg_msgs.msg import Descriptors, Keypoints, StabilityMask

    a = dict(np.load(sys.argv[1]))
    n, d = a["descriptors"].shape
    h, w = a["mask"].shape
    rclpy.init()
    node = rclpy.create_node("superseg_test_publisher")
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    stamp = Time(sec=12, nanosec=345)

    kp = Keypoints(width=w, height=h)
    kp.header.stamp, kp.header.frame_id = stamp, "camera"
    for name in ("x", "y", "score", "class_id", "group_id", "x_normalized", "y_normalized"):
        setattr(kp, name, a[name])
    kp.stable = a["stable"].tolist()
    desc = Descriptors(dimension=d, count=n, data=a["descriptors"].ravel())
    desc.header = kp.header
    sm = StabilityMask(threshold=0.5, group_names=["static", "flat", "dynamic", "unstable"],
                       stable_groups=np.array([0, 1], np.uint8))
    sm.header = kp.header
    sm.mask.header, sm.mask.height, sm.mask.width = kp.header, h, w
    sm.mask.encoding, sm.mask.step, sm.mask.data = "mono8", w, a["mask"].ravel()

    pubs = [(node.create_publisher(type(m), "superseg_test/" + type(m).__name__, qos), m)
            for m in (kp, desc, sm)]
    for pub, msg in pubs:
        pub.publish(msg)
    print("published", flush=True)
    deadline = time.monotonic() + 60  # never outlive a crashed test run for long
    try:
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
""")


def test_round_trip_between_processes(rclpy_node, rng, tmp_path):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from superseg_msgs.msg import Descriptors, Keypoints, StabilityMask

    a = make_arrays(rng)
    np.savez(tmp_path / "arrays.npz", **a)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got = {}
    for cls in (Keypoints, Descriptors, StabilityMask):
        rclpy_node.create_subscription(cls, "superseg_test/" + cls.__name__,
                                       lambda m, c=cls: got.setdefault(c, m), qos)

    with ros_helpers.python_process(["-c", PUBLISHER, str(tmp_path / "arrays.npz")],
                                    tmp_path / "publisher.log") as child:
        arrived = ros_helpers.spin_until(rclpy_node, lambda: len(got) == 3, timeout=20.0)
        assert arrived, f"received {sorted(c.__name__ for c in got)}; publisher log:\n" \
                        + child.output()

    kp, desc, sm = got[Keypoints], got[Descriptors], got[StabilityMask]
    for msg in (kp, desc, sm, sm.mask):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
        assert msg.header.frame_id == "camera"
    assert (kp.width, kp.height) == (W, H)
    for name in ("x", "y", "score", "class_id", "group_id", "x_normalized", "y_normalized"):
        field = np.asarray(getattr(kp, name))
        assert field.dtype == a[name].dtype, name
        np.testing.assert_array_equal(field, a[name], err_msg=name)  # NaN == NaN here
    assert np.isnan(np.asarray(kp.x_normalized)).sum() == np.isnan(a["x_normalized"]).sum() > 0
    assert list(kp.stable) == a["stable"].tolist()
    assert (desc.dimension, desc.count) == (D, N)
    np.testing.assert_array_equal(np.asarray(desc.data, np.float32).reshape(N, D), a["descriptors"])
    assert list(sm.group_names) == ["static", "flat", "dynamic", "unstable"]
    assert list(sm.stable_groups) == [0, 1] and sm.threshold == 0.5
    assert (sm.mask.height, sm.mask.width, sm.mask.encoding, sm.mask.step) == (H, W, "mono8", W)
    np.testing.assert_array_equal(np.frombuffer(bytes(sm.mask.data), np.uint8).reshape(H, W),
                                  a["mask"])


def test_require_loopback_refuses_unsafe_environments(tmp_path):
    from superseg_ros.ros.loopback import PROFILE_PATH, loopback_environment, require_loopback

    safe = loopback_environment({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    require_loopback(safe)
    assert safe["RMW_IMPLEMENTATION"] == "rmw_cyclonedds_cpp"  # an explicit choice is kept
    assert safe["FASTDDS_DEFAULT_PROFILES_FILE"] == str(PROFILE_PATH) and PROFILE_PATH.is_file()
    for unsafe in ({**safe, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"},
                   {k: v for k, v in safe.items() if k != "FASTDDS_DEFAULT_PROFILES_FILE"},
                   {**safe, "FASTDDS_DEFAULT_PROFILES_FILE": str(tmp_path / "missing.xml")}):
        with pytest.raises(RuntimeError, match="loopback"):
            require_loopback(unsafe)


def test_stability_mask_carries_the_models_class_table():
    """A CamVid-trained model publishes CamVid's class names and their groups, so a subscriber
    can read Keypoints.class_id without knowing which dataset the model learned."""
    from types import SimpleNamespace

    from superseg_ros.ros.messages import stability_mask_msg
    from superseg_ros.semantics import semantics_for
    from std_msgs.msg import Header

    table = semantics_for("classes", "camvid")
    result = SimpleNamespace(stability_mask=np.ones((4, 6), bool))
    msg = stability_mask_msg(result, Header(frame_id="cam"), table, [0, 1], 0.5)
    assert list(msg.class_names) == table["classes"] and msg.class_names[8] == "Car"
    assert list(msg.class_groups) == table["class_to_group"] and msg.class_groups[8] == 2
    assert list(msg.group_names) == table["groups"] and list(msg.stable_groups) == [0, 1]
    assert (msg.mask.height, msg.mask.width) == (4, 6)
