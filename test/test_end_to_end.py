"""A bag made by superseg-make-bag, replayed by superseg-play through superseg_node and recorded
by superseg-record: four processes over real DDS on loopback (this is what `make demo` runs)."""

import json

import cv2
import pytest

import ros_helpers  # noqa: F401  (loopback-only DDS for every child process)
from superseg_ros import demo
from superseg_ros.checkpoint import save_checkpoint
from superseg_ros.network import SuperSegmentation

from conftest import TINY

ros_helpers.import_rclpy()


def test_demo_refuses_unusable_input_with_a_clear_message(tmp_path, capsys):
    out = tmp_path / "out"
    assert demo.main(["--input", str(tmp_path / "missing"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("no images here")
    assert demo.main(["--input", str(junk), "--output", str(out)]) == 2
    assert "no images" in capsys.readouterr().err
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "metadata.yaml").write_text("not: a bag\n")
    assert demo.main(["--input", str(bag), "--output", str(out)]) == 2
    assert "not a readable ROS 2 bag" in capsys.readouterr().err
    assert demo.main(["--input", str(bag), "--output", str(out), "--rate", "1"]) == 2
    assert "--rate-factor" in capsys.readouterr().err


def test_demo_takes_rate_and_camera_info_for_an_image_folder(tmp_path):
    from superseg_ros.bags import bag_frame_names, iter_bag

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(demo.render_sequence(frames=3, height=48, width=64)):
        cv2.imwrite(str(frames / f"camvid_{i:03d}.png"), frame)
    camera = tmp_path / "camera.yaml"
    camera.write_text("image_width: 64\nimage_height: 48\ncamera_matrix: {rows: 3, cols: 3, "
                      "data: [50, 0, 31.5, 0, 50, 23.5, 0, 0, 1]}\n")
    bag = demo.input_bag(frames, tmp_path / "out", rate=1.0, camera_info=camera)
    messages = list(iter_bag(bag, deserialize=True))
    image_times = [t for topic, t, _, kind in messages if kind.endswith("/Image")]
    assert [b - a for a, b in zip(image_times, image_times[1:])] == [10**9, 10**9]  # 1 Hz
    info = next(m for _, _, m, kind in messages if kind.endswith("/CameraInfo"))
    assert info.k[0] == 50 and info.k[2] == 31.5
    assert sorted(bag_frame_names(bag).values()) == [f"camvid_{i:03d}.png" for i in range(3)]


@pytest.mark.parametrize("calibrated", [True, False])
def test_bag_replays_through_the_node_end_to_end(tmp_path, calibrated, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(demo.render_sequence(frames=5, height=96, width=128)):
        cv2.imwrite(str(frames / f"{i:03d}.png"), frame)
    bag = tmp_path / "bag"
    from superseg_ros.cli import make_bag
    calibration = ["--fx", "100", "--cx", "63.5", "--cy", "47.5"] if calibrated else []
    assert make_bag.main([str(frames), "--output", str(bag), "--rate", "4", *calibration]) == 0

    checkpoint = save_checkpoint(SuperSegmentation(TINY), tmp_path / "tiny.pt")
    out = tmp_path / "out"
    assert demo.main(["--input", str(bag), "--model", str(checkpoint), "--output", str(out)]) == 0

    counters = demo.node_counters(out / "outputs_bag")
    assert counters["frames_received"] == "5" and counters["errors"] == "0"
    processed = int(counters["frames_processed"])
    assert processed + int(counters["frames_skipped"]) == 5 and processed >= 3
    summary = json.loads((out / "summary.json").read_text())
    keypoints = summary["topics"]["/superseg/keypoints"]
    assert keypoints["messages"] == processed
    assert keypoints["keypoints_per_frame"]["min"] > 0
    overlays = sorted(p.name for p in (out / "overlay").glob("*.png"))
    assert len(overlays) == processed
    assert set(overlays) <= {p.name for p in frames.iterdir()}  # named after their inputs
    assert "keypoints per frame" in capsys.readouterr().out
    assert keypoints["unstable_share"] == "filter off"  # a tiny random model: no filter


def test_play_waits_for_a_node_that_is_still_starting(tmp_path):
    """The player (default options) starts first, the node a second later: the node, still
    importing torch and loading its model when playback would have begun, gets every frame."""
    import time

    from diagnostic_msgs.msg import DiagnosticArray

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(demo.render_sequence(frames=6, height=48, width=64)):
        cv2.imwrite(str(frames / f"{i:03d}.png"), frame)
    bag = tmp_path / "bag"
    from superseg_ros.cli import make_bag
    assert make_bag.main([str(frames), "--output", str(bag), "--rate", "20", "--fx", "50",
                          "--cx", "31.5", "--cy", "23.5", "-q"]) == 0
    checkpoint = save_checkpoint(SuperSegmentation(TINY), tmp_path / "tiny.pt")

    with ros_helpers.ros_node("replay_probe") as probe:
        statuses = []
        probe.create_subscription(DiagnosticArray, "/diagnostics",
                                  lambda m: statuses.extend(m.status), 10)
        node_args = ["-m", "superseg_ros.ros.launch_cli", "--model", str(checkpoint),
                     "--namespace", "replay", "--param", "qos.profile:=reliable"]
        play_args = ["-m", "superseg_ros.cli.play", str(bag),
                     "--remap", "/camera/image_raw:=/replay/image",
                     "--remap", "/camera/camera_info:=/replay/camera_info"]
        # the player first: the node comes up while it already runs (as a bag played right
        # after `ros2 launch`)
        with ros_helpers.python_process(play_args, tmp_path / "play.log") as player:
            time.sleep(1.0)
            with ros_helpers.python_process(node_args, tmp_path / "node.log") as node:
                deadline = time.monotonic() + 90
                while player.popen.poll() is None and time.monotonic() < deadline:
                    ros_helpers.spin_until(probe, lambda: False, 0.2)

                def received():
                    values = ros_helpers.last_status(statuses, "/replay/superseg_node")
                    return values and values["frames_received"]
                ros_helpers.spin_until(probe, lambda: received() == "6", 10)
                assert player.popen.returncode == 0, player.output()
                assert received() == "6", f"{player.output()}\n{node.output()}"
                assert "waiting up to 30 s for subscribers" in player.output()
