"""tools/model_card.py: the tables it writes into models/README.md, on hand-made summaries."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("model_card", ROOT / "tools" / "model_card.py")
model_card = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_card)


def summary(keypoints, rep, mle):
    return {"keypoints": keypoints, "repeatability@3px": rep, "localization_error": mle,
            "homography_accuracy@1px": 0.5, "homography_accuracy@3px": 0.9,
            "homography_accuracy@5px": 0.95, "homography_auc@3px": 0.6, "mma": {"3": 0.8}}


def test_threshold_table_lists_each_threshold_highest_first():
    table = model_card.threshold_table("generated pairs", [
        (0.015, summary(610, 0.756, 1.039)), (0.0, summary(1000, 0.632, 1.209)),
        (0.005, summary(757, 0.701, 1.101))])
    rows = [line for line in table.splitlines() if line.startswith("| 0")]
    assert [row.split(" | ")[0] for row in rows] == ["| 0.015", "| 0.005", "| 0"]
    assert rows[0] == "| 0.015 | 610 | 0.756 | 1.039 | 0.500 | 0.900 | 0.950 | 0.600 | 0.800 |"
    assert "3 detection thresholds" in table


def test_replace_block_keeps_the_rest_of_the_card():
    text = "head\n<!-- t:start -->\nold\n<!-- t:end -->\ntail\n"
    assert model_card.replace_block(text, "t", "new\n") == \
        "head\n<!-- t:start -->\nnew\n<!-- t:end -->\ntail\n"


def test_reuse_needs_the_same_command_and_metric_code(tmp_path, monkeypatch):
    """A stored run is reused only when it was measured with today's metric formulas: after a
    change to metrics.py the card measures again instead of copying stale figures."""
    import json
    import os

    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    output = tmp_path / "run"
    output.mkdir()
    flags = ["--model", str(model), "--images", "x"]
    command = " ".join(["superseg-eval", *flags, "--output", str(output)])
    calls = []

    def fake_eval(argv):  # stands in for superseg-eval: records the call, writes a record
        calls.append(argv)
        (output / "metrics.json").write_text(json.dumps({"config": {}, "fresh": True}))
        return 0

    monkeypatch.setattr(model_card, "eval_main", fake_eval)
    for code, reused in [(model_card.metrics_code_version(), True), ("0123456789ab", False)]:
        stored = {"config": {"command": command, "metrics_code": code}, "fresh": False}
        (output / "metrics.json").write_text(json.dumps(stored))
        os.utime(output / "metrics.json", (model.stat().st_mtime + 10,) * 2)
        calls.clear()
        record = model_card.run_eval(flags, output, reuse=True)
        assert record["fresh"] is not reused and len(calls) == (0 if reused else 1)


def test_config_names_ending_in_round_are_config_names_unless_the_run_made_labels():
    assert model_card.config_and_round(
        {"name": "keypoints_cpu_round1", "data": {"labels": "adapt"}}) == ("keypoints_cpu", 1)
    reused = {"name": "camvid_cpu_round4", "data": {"labels": "runs/camvid_cpu_round2/labels"}}
    assert model_card.config_and_round(reused) == ("camvid_cpu_round4", None)
    assert model_card.adaptation_record(reused) == "reused: `runs/camvid_cpu_round2/labels`"
    assert model_card.adaptation_record({"name": "magicpoint_cpu", "data": {}}) == "-"


def test_training_record_says_which_parts_each_stage_trained():
    class Model:  # the two attributes training_record reads from a loaded checkpoint
        trained_heads = {"detector": True, "semantic": True}
        meta = {"stage": "labelled", "name": "camvid_semantic_dense", "step": 1000,
                "config": {"name": "camvid_semantic_dense", "train_only": ["semantic"],
                           "data": {"size": [192, 256]}},
                "history": [{"stage": "joint", "name": "keypoints_cpu", "step": 1500,
                             "config": {"name": "keypoints_cpu", "data": {"size": [192, 256]}}}]}

    rows = [line.split(" | ") for line in model_card.training_record(Model()).splitlines()
            if line.startswith("| joint") or line.startswith("| labelled")]
    assert [(row[1], row[2]) for row in rows] == [("keypoints_cpu", "-"),
                                                   ("camvid_semantic_dense", "semantic")]


def test_pose_record_names_the_held_out_pairs_and_the_protocol(tmp_path):
    row = {"keypoints": 216.4, "matches": 167.2, "epipolar_precision@1px": 0.755,
           "epipolar_precision@3px": 0.924, "pose_auc@5deg": 0.447, "pose_auc@10deg": 0.7,
           "pose_auc@20deg": 0.849, "median_rotation_error": 0.2,
           "median_translation_error": 2.6, "pose_failures": 0.0, "ms_per_image": 33.0}
    record = {"config": {"dataset": {"layout": "sequence", "gaps": [1, 2, 4], "pairs": 59,
                                     "pairs_listed": 315, "heldout": "runs/data/split.json"},
                         "max_keypoints": 1000,
                         "ransac": {"draws": 20, "threshold_px": 1.0}},
              "methods": {"superseg": {"semantic_filter": "on"}},
              "summaries": {"superseg": row, "sift": {**row, "pose_auc@5deg": 0.69}}}
    text = model_card.pose_record("../shared/data/kitti_raw_0001", record, tmp_path)
    assert "| superseg | 216 | 167 | 0.755 | 0.924 | 0.447 | 0.700 | 0.849 | 0.20 | 2.60 |" in text
    assert "| sift |" in text and "0.690" in text
    assert "59 of 315 (sequence, frame gaps 1, 2, 4)" in text
    assert "`runs/data/split.json` holds out from training" in text
    assert "semantic filter on" in text and "20 RANSAC draws" in text
