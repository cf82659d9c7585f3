"""Segmentation and keypoint-filter metrics (hand-computed cases) and superseg-eval
--segmentation end to end on a tiny CamVid."""

import json
import math

import cv2
import numpy as np
import pytest
import torch

from conftest import BUILDING, CAR, TINY, ImageAsHeatmap, camvid_frame, make_camvid
from superseg_ros.checkpoint import load_model, save_checkpoint
from superseg_ros.evaluation import cli
from superseg_ros.evaluation.segmentation import (FILTER_COUNTS, confusion_matrix,
                                                  keypoint_filter_counts, keypoint_filter_summary,
                                                  pixel_index, segmentation_report,
                                                  sum_counts, threshold_sweep)
from superseg_ros.extractor import Extractor
from superseg_ros.network import SuperSegmentation
from superseg_ros.semantics import CAMVID, DYNAMIC, FLAT, GROUPS, IGNORE, STATIC, UNSTABLE
from superseg_ros.training.camvid import CamVidFrames

HEIGHT, WIDTH = 48, 64  # make_camvid's frames; its last 3 columns are Unlabelled


# --- metrics -------------------------------------------------------------------------------------


def test_segmentation_report_hand_computed():
    groups = [[3, 1, 0, 0],   # static: TP 3, FP 1 (a dynamic pixel), FN 1 -> 3/5
              [0, 2, 0, 0],   # flat: TP 2, FP 1, FN 0 -> 2/3
              [1, 0, 0, 0],   # dynamic: TP 0, FN 1 -> 0
              [0, 0, 0, 0]]   # unstable: in neither label nor prediction -> NaN, not in mIoU
    classes = [[1, 1], [0, 2]]  # a: 1 / (1 + 0 + 1); b: 2 / (2 + 1 + 0)
    report = segmentation_report(classes, groups, ["a", "b"])
    g = report["groups"]
    assert g["iou"]["static_structure"] == pytest.approx(0.6)
    assert g["iou"]["flat_surface"] == pytest.approx(2 / 3)
    assert g["iou"]["dynamic_object"] == 0 and math.isnan(g["iou"]["unstable_ambiguous"])
    assert g["miou"] == pytest.approx((0.6 + 2 / 3 + 0) / 3)
    assert g["pixel_accuracy"] == pytest.approx(5 / 7) and g["pixels"] == 7
    assert g["confusion"] == groups
    c = report["classes"]
    assert c["iou"] == pytest.approx({"a": 0.5, "b": 2 / 3})
    assert c["miou"] == pytest.approx(7 / 12) and c["pixel_accuracy"] == pytest.approx(0.75)
    assert segmentation_report(None, groups, ["a", "b"])["classes"] is None
    with pytest.raises(ValueError, match="3 names"):
        segmentation_report(classes, groups, ["a", "b", "c"])


def test_pixel_index_rounds_halves_up_and_clips():
    # pixel i covers [i - 0.5, i + 0.5): 0.5 is pixel 1 and 1.5 pixel 2 alike
    assert pixel_index([-0.6, -0.5, 0.49, 0.5, 1.5, 2.5, 3.4, 9.0], 4).tolist() == \
        [0, 0, 0, 1, 2, 3, 3, 3]


def test_keypoint_filter_counts_hand_computed():
    gt = np.array([[STATIC, FLAT, DYNAMIC, DYNAMIC],
                   [UNSTABLE, IGNORE, DYNAMIC, STATIC],
                   [FLAT, FLAT, UNSTABLE, UNSTABLE]], np.uint8)
    keypoints_stable = [
        ((0.0, 0.0), True),     # (0, 0) static, kept
        ((0.5, 0.0), False),    # x rounds up to 1: flat, removed (numpy's round says static)
        ((2.5, 0.4), False),    # (0, 3) dynamic, removed
        ((1.5, 0.5), True),     # (1, 2) dynamic, kept
        ((0.7, 0.6), True),     # (1, 1) ignore
        ((-3.0, 1.2), False),   # clipped to (1, 0): unstable, removed
        ((10.0, 9.0), True),    # clipped to (2, 3): unstable, kept
        ((0.49, 1.5), True),    # (2, 0) flat, kept
    ]
    keypoints = np.array([p for p, _ in keypoints_stable], np.float32)
    stable = np.array([s for _, s in keypoints_stable])
    assert keypoint_filter_counts(keypoints, stable, gt) == {
        "total": 8, "on_dynamic": 2, "dynamic_removed": 1, "on_static_flat": 3,
        "static_flat_kept": 2, "on_unstable": 2, "unstable_removed": 1, "on_ignore": 1}
    assert keypoint_filter_counts(np.zeros((0, 2)), np.zeros(0, bool), gt) == \
        dict.fromkeys(FILTER_COUNTS, 0)
    with pytest.raises(ValueError, match="stable flags"):
        keypoint_filter_counts(keypoints, stable[:3], gt)


def test_keypoint_filter_summary_over_summed_frames():
    a = {"total": 8, "on_dynamic": 2, "dynamic_removed": 1, "on_static_flat": 3,
         "static_flat_kept": 2, "on_unstable": 2, "unstable_removed": 1, "on_ignore": 1}
    b = keypoint_filter_counts([[0, 0], [1, 1]], [False, False],
                               np.full((2, 2), DYNAMIC, np.uint8))
    counts = sum_counts([a, b])
    assert counts["total"] == 10 and counts["on_dynamic"] == 4 and counts["dynamic_removed"] == 3
    assert keypoint_filter_summary(counts) == pytest.approx({
        "dynamic_share_filter_off": 4 / 10, "dynamic_removed_share": 3 / 4,
        "static_flat_kept_share": 2 / 3, "unstable_removed_share": 1 / 2})
    only_b = keypoint_filter_summary(b)  # nothing on static/flat or unstable there: NaN
    assert only_b["dynamic_share_filter_off"] == only_b["dynamic_removed_share"] == 1.0
    assert math.isnan(only_b["static_flat_kept_share"])
    assert math.isnan(only_b["unstable_removed_share"])
    nothing = keypoint_filter_summary(dict.fromkeys(FILTER_COUNTS, 0))
    assert all(math.isnan(v) for v in nothing.values())


def test_threshold_sweep_hand_computed():
    # two dynamic keypoints (p .2, .6), three static/flat (.4, .7, .9), one unstable (.5), one
    # on ignore (never counted)
    prob = [0.2, 0.6, 0.4, 0.7, 0.9, 0.5, 0.1]
    truth = [DYNAMIC, DYNAMIC, STATIC, FLAT, STATIC, UNSTABLE, IGNORE]
    rows = {r["threshold"]: r for r in threshold_sweep(prob, truth, (0.3, 0.5, 0.8))}
    assert rows[0.3] == pytest.approx({"threshold": 0.3, "dynamic_removed_share": 1 / 2,
                                       "static_flat_kept_share": 3 / 3,
                                       "unstable_removed_share": 0.0})
    assert rows[0.5] == pytest.approx({"threshold": 0.5, "dynamic_removed_share": 1 / 2,
                                       "static_flat_kept_share": 2 / 3,
                                       "unstable_removed_share": 0.0})  # p >= t is kept
    assert rows[0.8] == pytest.approx({"threshold": 0.8, "dynamic_removed_share": 2 / 2,
                                       "static_flat_kept_share": 1 / 3,
                                       "unstable_removed_share": 1.0})
    empty = threshold_sweep([], [], (0.5,))[0]
    assert all(math.isnan(empty[k]) for k in empty if k != "threshold")
    with pytest.raises(ValueError, match="2 probabilities but 1"):
        threshold_sweep([0.1, 0.2], [STATIC])


# --- superseg-eval --segmentation ----------------------------------------------------------------


@pytest.fixture
def camvid(tmp_path):
    return make_camvid(tmp_path / "camvid", n_train=1, n_val=2, height=HEIGHT, width=WIDTH)


def tiny_checkpoint(path, semantic_trained=False, camvid_classes=False):
    torch.manual_seed(0)
    model = SuperSegmentation({**TINY, "num_classes": 11}, CAMVID.semantics("classes")) \
        if camvid_classes else SuperSegmentation(TINY)
    return save_checkpoint(model, path, trained_heads={
        "detector": True, "descriptor": True, "semantic": semantic_trained, "subpixel": True})


@pytest.fixture
def checkpoint(tmp_path):
    """TINY random weights, 19 Cityscapes classes, semantic head untrained (--force-semantic)."""
    return tiny_checkpoint(tmp_path / "tiny.pt")


def evaluate(camvid, out, *extra, model=None):
    args = ["--segmentation", str(camvid), "--dataset", "camvid", "--output", str(out),
            "--device", "cpu"]
    return cli.main(args + (["--model", str(model)] if model else []) + list(extra))


def labelled_pixels(n_frames: int) -> int:
    return n_frames * HEIGHT * (WIDTH - 3)


def test_cli_writes_the_report(tmp_path, camvid, checkpoint, capsys, one_thread):
    out = tmp_path / "eval"
    code = evaluate(camvid, out, "--force-semantic", "--max-keypoints", "50", "--overlays", "1",
                    model=checkpoint)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "FORCED" in captured.err
    assert "dynamic_object" in captured.out and "on dynamic objects" in captured.out
    assert "per-class IoU: the model's classes are not camvid's" in captured.out

    record = json.loads((out / "metrics.json").read_text())
    assert set(record) >= {"config", "segmentation", "keypoint_filter", "frames", "notes"}
    config = record["config"]
    assert (config["dataset"], config["split"], config["frames"], config["max_keypoints"],
            config["mask_threshold"]) == ("camvid", "val", 2, 50, 0.5)
    assert config["metrics_code"] == cli.metrics_code_version()  # what --reuse compares
    groups = record["segmentation"]["groups"]
    assert record["segmentation"]["classes"] is None  # 19 Cityscapes classes vs CamVid's 11
    assert np.array(groups["confusion"]).sum() == groups["pixels"] == labelled_pixels(2)
    assert 0 <= groups["pixel_accuracy"] <= 1
    for value in list(groups["iou"].values()) + [groups["miou"]]:
        assert value is None or 0 <= value <= 1  # None (NaN) only for a group in neither
    counts, shares = record["keypoint_filter"]["counts"], record["keypoint_filter"]["shares"]
    assert 0 < counts["total"] <= 2 * 50
    assert counts["total"] == sum(counts[k] for k in (
        "on_dynamic", "on_static_flat", "on_unstable", "on_ignore"))
    assert counts == {k: sum(f[k] for f in record["frames"]) for k in counts}
    assert [f["name"] for f in record["frames"]] == ["0016E5_00000", "0016E5_00002"]
    for key, value in shares.items():  # NaN (None in JSON) only where nothing is counted
        assert (value is None) == (counts[{"dynamic_share_filter_off": "total",
                                           "dynamic_removed_share": "on_dynamic",
                                           "static_flat_kept_share": "on_static_flat",
                                           "unstable_removed_share": "on_unstable"}[key]] == 0)

    sweep = record["keypoint_filter"]["sweep"]
    assert [r["threshold"] for r in sweep] == pytest.approx([0.1 * i for i in range(1, 10)])
    removed = [r["dynamic_removed_share"] for r in sweep if r["dynamic_removed_share"] is not None]
    kept = [r["static_flat_kept_share"] for r in sweep if r["static_flat_kept_share"] is not None]
    assert removed == sorted(removed) and kept == sorted(kept, reverse=True)  # monotone in t

    markdown = (out / "metrics.md").read_text()
    for text in ("## Per-group IoU", "## Per-class IoU", "not camvid's", "## Keypoint filter",
                 "| on dynamic objects |", "## The filter at other thresholds"):
        assert text in markdown
    assert [p.name for p in (out / "overlays").iterdir()] == ["0016E5_00000.png"]
    pytest.importorskip("matplotlib")
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "filter_thresholds.png", "group_confusion.png", "group_iou.png"]


def test_cli_confusion_equals_a_direct_extractor_run(tmp_path, camvid, checkpoint, one_thread):
    out = tmp_path / "eval"
    assert evaluate(camvid, out, "--force-semantic", "--max-keypoints", "30", "--overlays", "0",
                    model=checkpoint) == 0
    record = json.loads((out / "metrics.json").read_text())
    extractor = Extractor(load_model(checkpoint), {"semantic_filter": "on",
                                                   "force_semantic": True, "keep_unstable": True,
                                                   "max_keypoints": 30}, "cpu", dense=True)
    confusion, total = np.zeros((4, 4), np.int64), 0
    for frame in CamVidFrames(camvid, "val"):
        result = extractor(frame["image"]).unbatch()[0]
        confusion += confusion_matrix(result["group_map"], frame["labels"]["groups4"], 4)
        total += len(result["keypoints"])
    assert record["segmentation"]["groups"]["confusion"] == confusion.tolist()
    assert record["keypoint_filter"]["counts"]["total"] == total
    assert not (out / "overlays").exists()


def test_cli_per_class_iou_when_the_model_has_the_datasets_classes(tmp_path, camvid, one_thread):
    model = tiny_checkpoint(tmp_path / "camvid_classes.pt", semantic_trained=True,
                            camvid_classes=True)
    out = tmp_path / "eval"
    assert evaluate(camvid, out, "--max-keypoints", "10", "--overlays", "0", model=model) == 0
    classes = json.loads((out / "metrics.json").read_text())["segmentation"]["classes"]
    assert list(classes["iou"]) == CAMVID.semantics("classes")["classes"]
    # CamVid's ignore pixels are the same for classes and groups
    assert classes["pixels"] == labelled_pixels(2)
    assert "| Sky |" in (out / "metrics.md").read_text()
    pytest.importorskip("matplotlib")
    assert (out / "plots" / "class_iou.png").is_file()


def test_predicted_classes_give_the_extractors_groups(tmp_path, one_thread):
    model = load_model(tiny_checkpoint(tmp_path / "m.pt", semantic_trained=True,
                                       camvid_classes=True))
    extractor = Extractor(model, {"keep_unstable": True}, "cpu", dense=True)
    image = camvid_frame(0, 45, 61)[0]  # odd size: the padding must be cropped the same way
    result = extractor(image).unbatch()[0]
    classes = result["class_map"]
    assert classes.shape == (45, 61)
    lookup = np.array(model.semantics["class_to_group"])
    np.testing.assert_array_equal(lookup[classes], result["group_map"])


def test_cli_constant_prediction_gives_the_label_counts(tmp_path, camvid, monkeypatch):
    """A model that calls every pixel 'building' (static): each label row of the group
    confusion lands in the static column, and the filter keeps every keypoint."""
    fake = ImageAsHeatmap(class_left=BUILDING, class_right=BUILDING)
    monkeypatch.setattr(cli, "open_model", lambda spec, device="cpu": (fake, "fake"))
    out = tmp_path / "eval"
    assert evaluate(camvid, out, "--overlays", "0") == 0
    record = json.loads((out / "metrics.json").read_text())
    expected = np.zeros((4, 4), np.int64)
    for index in (1, 2):  # make_camvid numbers frames across splits: train 0, val 1 and 2
        groups = CAMVID.remap(camvid_frame(index, HEIGHT, WIDTH)[1], "groups4")
        for g in range(4):
            expected[g, STATIC] += int((groups == g).sum())
    groups = record["segmentation"]["groups"]
    assert groups["confusion"] == expected.tolist()
    static = expected[STATIC, STATIC] / expected.sum()
    assert groups["iou"] == pytest.approx(dict(zip(GROUPS, [static, 0.0, 0.0, 0.0])))
    assert groups["miou"] == pytest.approx(static / 4)
    counts = record["keypoint_filter"]["counts"]
    assert counts["dynamic_removed"] == counts["unstable_removed"] == 0
    assert counts["static_flat_kept"] == counts["on_static_flat"]
    for row in record["keypoint_filter"]["sweep"]:  # P(stable) = 1 everywhere: nothing removed
        assert row["static_flat_kept_share"] == 1.0
        assert row["dynamic_removed_share"] in (0.0, None)


def make_cityscapes(root, height=24, width=48):
    """One Cityscapes val frame: building (id 11) on the left half, car (id 26) on the right, an
    'unlabeled' (id 0, ignore) band at x = 10..11; a random red channel (the fake heatmap) with
    its strongest peak in that band."""
    stem = "aachen_000000_000019"
    image = np.random.default_rng(0).integers(0, 200, (height, width, 3), dtype=np.uint8)
    image[12, 11, 0] = 255
    ids = np.full((height, width), 11, np.uint8)
    ids[:, width // 2:] = 26
    ids[:, 10:12] = 0
    for folder, name, array in (("leftImg8bit", "leftImg8bit", image[..., ::-1]),
                                ("gtFine", "gtFine_labelIds", ids)):
        (root / folder / "val" / "aachen").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / folder / "val" / "aachen" / f"{stem}_{name}.png"), array)
    return root


def test_cli_cityscapes_perfect_prediction(tmp_path, monkeypatch):
    """The fake model's halves are building | car, as are the labels: every IoU is 1, the filter
    removes every keypoint on the car and keeps every one on the building."""
    root = make_cityscapes(tmp_path / "cityscapes")
    fake = ImageAsHeatmap(class_left=BUILDING, class_right=CAR)
    monkeypatch.setattr(cli, "open_model", lambda spec, device="cpu": (fake, "fake"))
    out = tmp_path / "eval"
    assert cli.main(["--segmentation", str(root), "--dataset", "cityscapes", "--output",
                     str(out), "--device", "cpu"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    classes, groups = record["segmentation"]["classes"], record["segmentation"]["groups"]
    assert classes["iou"]["building"] == classes["iou"]["car"] == classes["miou"] == 1.0
    assert sum(v is not None for v in classes["iou"].values()) == 2  # the others: in neither
    assert groups["iou"]["static_structure"] == groups["iou"]["dynamic_object"] == 1.0
    assert groups["pixels"] == classes["pixels"] == 24 * (48 - 2)
    counts = record["keypoint_filter"]["counts"]
    assert counts["on_dynamic"] > 0 and counts["on_static_flat"] > 0 and counts["on_ignore"] > 0
    assert counts["dynamic_removed"] == counts["on_dynamic"]
    assert counts["static_flat_kept"] == counts["on_static_flat"]
    assert record["keypoint_filter"]["shares"]["dynamic_removed_share"] == 1.0
    assert [p.name for p in (out / "overlays").iterdir()] == ["aachen_000000_000019.png"]


def test_cli_unreadable_frame_costs_itself(tmp_path, camvid, checkpoint, capsys):
    (camvid / "valannot" / "0016E5_00002.png").write_bytes(b"not a png")
    out = tmp_path / "eval"
    assert evaluate(camvid, out, "--force-semantic", "--overlays", "0", model=checkpoint) == 1
    assert "0016E5_00002.png: unreadable label PNG" in capsys.readouterr().err
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["evaluated"] == 1 and len(record["frames"]) == 1


@pytest.mark.parametrize("args, message", [
    (["--segmentation", "CAMVID"], "--segmentation needs --dataset"),
    (["--segmentation", "CAMVID", "--dataset", "cityscapes"],
     "is not a cityscapes folder"),
    (["--segmentation", "EMPTY", "--dataset", "camvid"], "is not a camvid folder"),
    (["--segmentation", "MISSING", "--dataset", "camvid"], "no such folder"),
    (["--segmentation", "CAMVID", "--dataset", "camvid", "--split", "test"],
     "test is not a folder"),
    (["--segmentation", "CAMVID", "--dataset", "camvid", "--pairs", "3"],
     "--pairs: only with --images"),
    (["--images", "CAMVID/val", "--dataset", "camvid"], "--dataset: only with --segmentation"),
])
def test_cli_bad_segmentation_input_exits_2(tmp_path, camvid, checkpoint, capsys, args,
                                            message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("CAMVID", str(camvid)).replace("EMPTY", str(tmp_path / "empty"))
            .replace("MISSING", str(tmp_path / "missing")) for a in args]
    out = tmp_path / "out"
    force = [] if "--images" in args else ["--force-semantic"]
    assert cli.main(args + force + ["--model", str(checkpoint), "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_untrained_semantic_head_needs_force(tmp_path, camvid, checkpoint, capsys):
    out = tmp_path / "out"
    assert evaluate(camvid, out, model=checkpoint) == 2
    err = capsys.readouterr().err
    assert "semantic head was never trained" in err and "--force-semantic" in err
    assert not out.exists()
