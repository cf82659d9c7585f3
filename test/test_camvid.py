"""CamVid: the label table (semantics.py), the SegNet-layout reader (training/camvid.py) and the
labelled training stage on it. Fixtures are tiny trees in the exact layout (conftest.make_camvid);
the real data in ../shared/data/camvid is only read (tests skip without it).
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import (CV_BUILDING, CV_CAR, CV_ROAD, CV_SKY, CV_UNLABELLED, TINY, camvid_frame,
                      make_camvid)
from superseg_ros.checkpoint import load_model, save_checkpoint
from superseg_ros.config import ConfigError
from superseg_ros.network import SuperSegmentation
from superseg_ros.semantics import (CAMVID, CAMVID_LABELS, CITYSCAPES, DYNAMIC, FLAT, GROUPS,
                                    IGNORE, STATIC, UNSTABLE, check_mode, ontology, remap_labels,
                                    semantics_for)
from superseg_ros.training.camvid import CamVidError, CamVidFrames
from superseg_ros.training.config import load_config, training_config
from superseg_ros.training.labelled_data import LabelledPairs, labelled_data_config

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "camvid"


# --- the table -----------------------------------------------------------------------------------


def test_camvid_table_is_the_segnet_order_with_the_issue_groups():
    assert [(lb.name, lb.id) for lb in CAMVID_LABELS] == [
        ("Sky", 0), ("Building", 1), ("Pole", 2), ("Road", 3), ("Pavement", 4), ("Tree", 5),
        ("SignSymbol", 6), ("Fence", 7), ("Car", 8), ("Pedestrian", 9), ("Bicyclist", 10),
        ("Unlabelled", 11)]
    groups = {lb.name: lb.group for lb in CAMVID_LABELS}
    assert {n for n, g in groups.items() if g == STATIC} == {"Building", "Pole", "SignSymbol",
                                                           "Fence"}
    assert {n for n, g in groups.items() if g == FLAT} == {"Road", "Pavement"}
    assert {n for n, g in groups.items() if g == DYNAMIC} == {"Car", "Pedestrian", "Bicyclist"}
    assert {n for n, g in groups.items() if g == UNSTABLE} == {"Sky", "Tree"}
    assert groups["Unlabelled"] == IGNORE


def test_every_lookup_is_derived_from_the_table():
    table = semantics_for("classes", "camvid")
    assert table["classes"] == [lb.name for lb in CAMVID_LABELS[:11]]
    assert table["class_to_group"] == [lb.group for lb in CAMVID_LABELS[:11]]
    assert table["groups"] == list(GROUPS)
    assert semantics_for("groups4", "camvid") == semantics_for("groups4", "cityscapes")
    classes, groups = CAMVID.lookup("classes"), CAMVID.lookup("groups4")
    for lb in CAMVID_LABELS:  # brute force over the table
        assert classes[lb.id] == (lb.id if lb.group != IGNORE else IGNORE)
        assert groups[lb.id] == lb.group
    assert (classes[12:] == IGNORE).all() and (groups[12:] == IGNORE).all()
    ids = np.array([[0, 3, 8, 11]], np.uint8)
    assert remap_labels(ids, "classes", "camvid").tolist() == [[0, 3, 8, 255]]
    assert remap_labels(ids, "groups4", "camvid").tolist() == [[UNSTABLE, FLAT, DYNAMIC, 255]]
    # Cityscapes' table is unchanged by the generalisation; 'classes19' is its old name
    assert CITYSCAPES.semantics("classes")["classes"][:3] == ["road", "sidewalk", "building"]
    assert check_mode("classes19") == "classes"
    with pytest.raises(ConfigError, match="modes are"):
        check_mode("classes11")
    with pytest.raises(ConfigError, match="camvid"):
        ontology("kitti")


def test_remap_rejects_values_outside_the_table():
    with pytest.raises(ValueError, match=r"\[12, 200\].*CamVid"):
        CAMVID.remap(np.array([0, 12, 200], np.uint8), "classes")


# --- the reader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pair_lists", [True, False])
def test_reader_reads_the_segnet_layout(tmp_path, pair_lists):
    root = make_camvid(tmp_path / "camvid", n_train=3, n_val=2, pair_lists=pair_lists)
    frames = CamVidFrames(root, "train")
    assert len(frames) == 3 and frames.frames == ["0001TP_000000", "0001TP_000030",
                                                  "0001TP_000060"]
    assert frames.images_dir == root / "train" and frames.labelled
    frame = frames[1]
    image, labels = camvid_frame(1)
    assert np.array_equal(frame["image"], image)            # RGB, as written
    assert np.array_equal(frame["label_ids"], labels)
    assert np.array_equal(frame["labels"]["classes"], CAMVID.remap(labels, "classes"))
    groups = frame["labels"]["groups4"]
    assert (groups[labels == CV_CAR] == DYNAMIC).all() and (groups[labels == CV_ROAD] == FLAT).all()
    assert (groups[labels == CV_SKY] == UNSTABLE).all()
    assert (groups[labels == CV_BUILDING] == STATIC).all()
    assert (groups[labels == CV_UNLABELLED] == IGNORE).all()
    assert frame["camera"] is None and frame["neighbour"] is None
    assert len(CamVidFrames(root, "val")) == 2


def test_reader_accepts_segnet_absolute_paths(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=1, n_val=1)
    (root / "val.txt").write_text("/SegNet/CamVid/val/0016E5_00000.png "
                                  "/SegNet/CamVid/valannot/0016E5_00000.png\n")
    assert CamVidFrames(root, "val").image_path(0) == root / "val" / "0016E5_00000.png"


def test_reader_errors_name_the_file_and_the_fix(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=2, n_val=1)
    with pytest.raises(CamVidError, match="test is not a folder.*folders in"):
        CamVidFrames(root, "test")
    (root / "trainannot" / "0001TP_000030.png").unlink()
    with pytest.raises(CamVidError, match="0001TP_000030.png does not exist"):
        CamVidFrames(root, "train")[1]
    cv2.imwrite(str(root / "trainannot" / "0001TP_000030.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(CamVidError, match="label size 10x10 does not match the image size 64x48"):
        CamVidFrames(root, "train")[1]
    cv2.imwrite(str(root / "trainannot" / "0001TP_000030.png"), np.full((48, 64), 31, np.uint8))
    with pytest.raises(CamVidError, match=r"values \[31\] are not CamVid label ids"):
        CamVidFrames(root, "train")[1]
    cv2.imwrite(str(root / "trainannot" / "0001TP_000030.png"), np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(CamVidError, match="single-channel"):
        CamVidFrames(root, "train")[1]
    (root / "val.txt").write_text("val/a.png\n")
    with pytest.raises(CamVidError, match=r"val.txt:1: expected 'image label'"):
        CamVidFrames(root, "val")


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/camvid is not here")
def test_the_real_camvid_reads():
    train, val = CamVidFrames(REAL, "train"), CamVidFrames(REAL, "val")
    assert (len(train), len(val)) == (367, 101)
    assert not set(train.frames) & set(val.frames)
    frame = val[0]
    assert frame["image"].shape == (360, 480, 3) and frame["label_ids"].max() <= 11


# --- stage 3 on CamVid -----------------------------------------------------------------------------


def test_shipped_camvid_config_is_valid():
    conf = load_config(ROOT / "training" / "configs" / "camvid_cpu.yaml")
    assert conf["stage"] == "labelled" and conf["init"]["reset_semantic"]
    data = labelled_data_config(conf["data"])
    assert data["dataset"] == "camvid" and data["split"] == "train"
    assert data["validation_split"] == "val" and data["label_mode"] == "classes"
    assert conf["loss"]["weighting"] == "uncertainty"
    follow_up = load_config(ROOT / "training" / "configs" / "camvid_cpu_stride4.yaml")
    assert follow_up["init"]["change_architecture"] and follow_up["model"] == {"decoder_stride": 4}
    assert follow_up["init"]["checkpoint"] == "runs/camvid_cpu/model.pt"
    assert labelled_data_config(follow_up["data"])["split"] == "train"


def test_class_balance_weights_come_from_the_training_labels(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=2, n_val=1)
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("0001TP_000000", "0001TP_000030"):
        np.savez(labels / f"{name}.npz", keypoints=np.zeros((0, 2), np.float32),
                 scores=np.zeros(0, np.float32), image_size=np.array([48, 64], np.int32),
                 source=f"{name}.png")
    data = {"dataset": "camvid", "root": str(root), "labels": str(labels), "size": [40, 56]}
    pairs = LabelledPairs(data, {}, {"probability": 0.0}, 3, seed=0)
    counts = pairs.class_pixel_counts(11)
    truth = sum(np.bincount(pairs.frames[k]["labels"]["classes"].ravel(), minlength=256)[:11]
                for k in range(2))
    assert counts.tolist() == truth.tolist() and counts.sum() > 0
    conf = training_config({"name": "cv", "stage": "labelled", "output": str(tmp_path / "o"),
                            "data": data, "loss": {"class_balance": 1.0}})
    from superseg_ros.training.stages import Labelled
    stage = Labelled(conf, 3)
    frequency = counts / counts.sum()
    present = counts > 0
    expected = np.ones(11)
    expected[present] = np.median(frequency[present]) / frequency[present]
    assert stage.class_weights.numpy() == pytest.approx(expected, rel=1e-5)
    assert Labelled(training_config({**conf, "loss": {}}), 3).class_weights is None
    with pytest.raises(ConfigError, match="class_balance"):
        Labelled(training_config({**conf, "loss": {"class_balance": -1}}), 3)


def test_data_config_errors():
    with pytest.raises(ConfigError, match="data.dataset"):
        labelled_data_config({"dataset": "kitti", "root": "x"})
    with pytest.raises(ConfigError, match="trainannot"):
        labelled_data_config({"dataset": "camvid"})
    with pytest.raises(ConfigError, match="CamVid has none"):
        labelled_data_config({"dataset": "camvid", "root": "x", "cities": ["aachen"]})


def test_pairs_use_the_mild_homography_and_warp_the_labels(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=2, n_val=1)
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("0001TP_000000", "0001TP_000030"):
        np.savez(labels / f"{name}.npz", keypoints=np.array([[10.0, 20.0]], np.float32),
                 scores=np.ones(1, np.float32), image_size=np.array([48, 64], np.int32),
                 source=f"{name}.png")
    data = {"dataset": "camvid", "root": str(root), "labels": str(labels), "size": [40, 56],
            "scale": [1.0, 1.0]}
    pairs = LabelledPairs(data, {}, {"probability": 0.0}, 3, seed=0)
    g = pairs.item_geometry(0)
    assert not g["ego_motion"] and np.allclose(g["H_road"], np.eye(3))
    assert np.allclose(g["H"], g["H_syn"] / g["H_syn"][2, 2])
    item = pairs[0]
    assert item["image_a"].shape == (3, 40, 56) and item["segmentation_a"].shape == (40, 56)
    seg = item["segmentation_a"].numpy()
    assert set(np.unique(seg)) <= set(range(11)) | {IGNORE}
    assert (seg == CV_CAR).any()                           # classes mode: CamVid's ids
    # labels of view B are A's moved by H (nearest): compare at B's pixels that A covers
    H = item["H"].numpy()
    seg_b = item["segmentation_b"].numpy()
    ys, xs = np.nonzero(seg_b != IGNORE)
    src = cv2.perspectiveTransform(np.stack([xs, ys], -1)[None].astype(np.float64),
                                   np.linalg.inv(H))[0]
    u, v = np.round(src[:, 0]).astype(int), np.round(src[:, 1]).astype(int)
    inside = (u >= 0) & (u < 56) & (v >= 0) & (v < 40)
    agree = seg[v[inside], u[inside]] == seg_b[ys[inside], xs[inside]]
    assert agree.mean() > 0.95  # nearest-neighbour rounding differs only at label edges


def test_a_few_iterations_of_stage_3_on_camvid(tmp_path):
    """The pipeline on the CamVid fixture: pseudo-labels by the stage-2 checkpoint, a new
    11-class classifier, four losses, validation on val, a checkpoint that carries CamVid's
    class table and a trained semantic head."""
    root = make_camvid(tmp_path / "camvid", n_train=3, n_val=2)
    torch.manual_seed(0)
    init = save_checkpoint(SuperSegmentation(TINY), tmp_path / "stage2.pt",
                           trained_heads={"detector": True, "descriptor": True,
                                          "semantic": False, "subpixel": True})
    conf = training_config({
        "name": "cv", "stage": "labelled", "output": str(tmp_path / "cv"), "device": "cpu",
        "init": {"checkpoint": str(init), "reset_semantic": True},
        "data": {"dataset": "camvid", "root": str(root), "labels": "adapt", "size": [40, 56],
                 "scale": [0.9, 1.0]},
        "adaptation": {"num_homographies": 2, "batch_size": 2, "detection_threshold": 0.0,
                       "max_keypoints": 30},
        "loss": {"max_points": 64, "weighting": "uncertainty"},
        "validation": {"images": 0, "pairs": 2, "max_keypoints": 100, "size": [48, 64]},
        "schedule": {"iterations": 3, "decay": "constant"}, "batch_size": 2, "log_every": 1,
        "image_every": 100, "checkpoint_every": 100, "validate_every": 0, "tensorboard": False})
    from superseg_ros.training.cli import run_pipeline
    path = run_pipeline(conf, progress=False)
    out = Path(conf["output"])
    assert sorted(p.name for p in (out / "labels_round1").glob("*.npz")) == [
        "0001TP_000000.npz", "0001TP_000030.npz", "0001TP_000060.npz"]
    model = load_model(path)
    assert all(model.trained_heads.values())
    assert model.semantics == semantics_for("classes", "camvid")
    assert model.config["num_classes"] == 11
    records = [json.loads(x) for x in (out / "round1" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert {"detector", "descriptor", "segmentation", "subpixel"} <= set(train[0])
    assert all(np.isfinite(r["loss"]) for r in train)
    validation = [r for r in records if r["kind"] == "validation"][-1]
    for key in ("miou", "miou_classes", "iou_dynamic_object", "homography_auc@3px"):
        assert key in validation, key
    assert 0.0 <= validation["miou"] <= 1.0
