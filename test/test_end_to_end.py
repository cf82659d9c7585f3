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
    assert len(list((out / "overlay").glob("*.png"))) == processed
    assert "keypoints per frame" in capsys.readouterr().out
