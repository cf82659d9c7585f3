"""Stage 3 (cityscapes): data, losses, loss weighting, mIoU, init from other stages, resume and
two-process (torchrun, gloo) training, on a tiny Cityscapes-format tree made here.

The real-format fixture ../shared/data/cityscapes_pseudo is only read (skipped without it).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY
from superseg_ros.checkpoint import load_model, save_checkpoint
from superseg_ros.config import ConfigError, merge_config
from superseg_ros.homography import scaling_matrix, warp_image, warp_points
from superseg_ros.network import SuperSegmentation
from superseg_ros.semantics import IGNORE, semantics_for
from superseg_ros.training.labelled_data import LabelledPairs, labelled_data_config
from superseg_ros.training.config import load_config, training_config
from superseg_ros.training.road_homography import cityscapes_road_homography
from superseg_ros.training.stages import (STAGES, confusion_matrix, intersection_over_union,
                                          label_pixels)
from superseg_ros.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
PSEUDO = ROOT.parent / "shared" / "data" / "cityscapes_pseudo"
CAMERA = {"extrinsic": {"baseline": 0.209313, "pitch": 0.038, "roll": 0.0, "yaw": -0.0195,
                        "x": 1.7, "y": 0.1, "z": 1.22},
          "intrinsic": {"fx": 2262.52, "fy": 2265.30, "u0": 1096.98, "v0": 513.137}}
VEHICLE = {"gpsHeading": 10.0, "gpsLatitude": 50.7, "gpsLongitude": 7.1,
           "outsideTemperature": 12.5, "speed": 12.0, "yawRate": 0.05}
SIZE = (96, 192)                  # frames on disk (1024x2048 / 10.67)
CROP = [64, 128]                  # training crops
# (split, city, sequence, has a neighbour in leftImg8bit_sequence)
FRAMES = (("train", "aachen", 0, True), ("train", "aachen", 1, True),
          ("train", "bonn", 2, False), ("val", "frankfurt", 0, True),
          ("val", "frankfurt", 1, True))
SKY, BUILDING, ROAD, CAR, VEGETATION = 23, 11, 7, 26, 21


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread avoids OpenMP waiting on the shared 2 cores."""


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, np.ndarray):
        assert cv2.imwrite(str(path), data)
    else:
        path.write_text(json.dumps(data))


def frame_content(k: int):
    """A street-like frame: sky, buildings with windows, vegetation, road, a car; its label ids
    and the corners of its rectangles (the pseudo-labels)."""
    h, w = SIZE
    rng = np.random.default_rng(k)
    ids = np.full((h, w), BUILDING, np.uint8)
    ids[:20] = SKY
    ids[60:] = ROAD
    ids[20:60, 150:] = VEGETATION
    ids[0:2, :] = 0                       # 'unlabeled' -> ignore
    image = np.zeros((h, w, 3), np.uint8)
    colours = {SKY: (230, 200, 150), BUILDING: (90, 90, 100), ROAD: (120, 60, 120),
               VEGETATION: (40, 140, 60), 0: (0, 0, 0), CAR: (30, 30, 220)}
    for label, colour in colours.items():
        image[ids == label] = colour
    corners = []
    for _ in range(6):                    # windows: corners to detect
        x, y = int(rng.integers(5, 130)), int(rng.integers(24, 48))
        cv2.rectangle(image, (x, y), (x + 8, y + 7), (220, 220, 60), -1)
        corners += [(x, y), (x + 8, y), (x, y + 7), (x + 8, y + 7)]
    x0 = int(rng.integers(20, 110))
    ids[64:84, x0:x0 + 36] = CAR
    image[64:84, x0:x0 + 36] = colours[CAR]
    corners += [(x0, 64), (x0 + 35, 64), (x0, 83), (x0 + 35, 83)]
    image = np.clip(image.astype(np.int16) + rng.integers(-6, 7, image.shape), 0, 255)
    return image.astype(np.uint8)[..., ::-1].copy(), ids, np.array(corners, np.float32)


def make_cityscapes(root: Path, labels: Path | None = None) -> Path:
    """Frames 19 of a few snippets in the official layout, with gtFine labelIds, camera and
    vehicle JSON, the next video frame (except bonn), and superseg-adapt pseudo-labels."""
    for k, (split, city, seq, neighbour) in enumerate(FRAMES):
        stem = f"{city}_{seq:06d}_000019"
        bgr, ids, corners = frame_content(k)
        _write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", bgr)
        _write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
        _write(root / "camera" / split / city / f"{stem}_camera.json", CAMERA)
        _write(root / "vehicle" / split / city / f"{stem}_vehicle.json", VEHICLE)
        if neighbour:
            _write(root / "leftImg8bit_sequence" / split / city /
                   f"{city}_{seq:06d}_000020_leftImg8bit.png", bgr)
        if labels is not None and split == "train":
            path = labels / city / f"{stem}_leftImg8bit.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, keypoints=corners, scores=np.ones(len(corners), np.float32),
                     image_size=np.array(SIZE, np.int32), source=f"{city}/{stem}_leftImg8bit.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("cityscapes")
    make_cityscapes(base / "cityscapes", base / "labels")
    return base / "cityscapes", base / "labels"


def stage3_config(tmp_path, tree, **changes):
    root, labels = tree
    raw = {"name": "cs", "stage": "cityscapes", "output": str(tmp_path / "cs"), "device": "cpu",
           "model": dict(TINY),
           "data": {"root": str(root), "labels": str(labels), "size": CROP,
                    "scale": [0.7, 1.0]},
           "loss": {"max_points": 64},
           "validation": {"images": 2, "pairs": 2, "max_keypoints": 100},
           "schedule": {"iterations": 3, "decay": "constant"}, "batch_size": 2,
           "log_every": 1, "image_every": 100, "checkpoint_every": 100, "validate_every": 0,
           "tensorboard": False}
    for key, value in changes.items():  # data: merged; anything else: replaced
        raw[key] = dict(raw[key], **value) if key == "data" else value
    return training_config(raw)


def train_records(output) -> list[dict]:
    lines = (Path(output) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# --- configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cityscapes_4070ti.yaml", "cityscapes_cpu.yaml"])
def test_shipped_cityscapes_configs_are_valid(name):
    conf = load_config(ROOT / "training" / "configs" / name)
    stage = STAGES[conf["stage"]]
    assert conf["stage"] == "labelled"
    merge_config(stage.loss_defaults, conf["loss"], where="loss")
    merge_config(stage.validation_defaults, conf["validation"], where="validation")
    data = labelled_data_config(conf["data"])
    assert data["label_mode"] == "classes"
    if "4070ti" in name:
        assert conf["amp"] and conf["grad_clip"] > 0 and conf["schedule"]["decay"] == "cosine"
        assert conf["schedule"]["iterations"] == 50000 and conf["schedule"]["warmup"] > 0
        assert conf["batch_size"] * conf["accumulate"] == 16


def test_runs_saved_before_the_new_keys_still_resume():
    from superseg_ros.training.config import config_differences
    current = training_config({"stage": "magicpoint"})
    saved = json.loads(json.dumps(current))
    del saved["accumulate"], saved["distributed"], saved["init"]["reset_semantic"]
    assert config_differences(saved, current) == []
    assert config_differences(saved, dict(current, accumulate=2)) == ["accumulate"]


def test_step_items_split_each_step_between_processes():
    from superseg_ros.training.data import IndexRange, StepItems
    assert list(StepItems(2, 4, 3)) == list(IndexRange(6, 12))  # one process: as before
    # step 1 of 2 processes x batch 2 x 2 micro-batches covers items 8..15
    assert list(StepItems(1, 2, 2, world=2, rank=0, accumulate=2)) == [8, 9, 12, 13]
    assert list(StepItems(1, 2, 2, world=2, rank=1, accumulate=2)) == [10, 11, 14, 15]
    assert len(StepItems(1, 3, 2, world=2, rank=1, accumulate=2)) == 8


# --- data -----------------------------------------------------------------------------------------


def test_view_b_follows_the_road_homography(tree):
    root, labels = tree
    still = {"perspective": 0.0, "scale": [1.0, 1.0], "rotation_deg": 0.0, "translation": 0.0,
             "patch_ratio": 1.0}
    ds = LabelledPairs({"root": str(root), "labels": str(labels), "size": CROP,
                          "scale": [0.7, 1.0]}, still, {"enabled": False}, 3, seed=1)
    seen = set()
    for index in range(6):
        g = ds.item_geometry(index)
        frame = g["frame"]
        seen.add(frame["city"])
        # the expected H: the road homography at 1024x2048, into the file, into the crop
        to_crop = g["T"] @ scaling_matrix(SIZE[1] / 2048, SIZE[0] / 1024)
        if frame["city"] == "bonn":      # no neighbouring frame: no ego-motion
            expected = np.eye(3)
            assert not g["ego_motion"]
        else:
            road = cityscapes_road_homography(CAMERA, VEHICLE, 1 / 17)
            expected = to_crop @ road @ np.linalg.inv(to_crop)
            assert g["ego_motion"]
        np.testing.assert_allclose(g["H"], expected / expected[2, 2], atol=1e-9)
    assert seen == {"aachen", "bonn"}


def test_view_b_labels_and_keypoints_are_where_h_puts_those_of_a(tree):
    root, labels = tree
    ds = LabelledPairs({"root": str(root), "labels": str(labels), "size": CROP,
                          "scale": [0.7, 1.0]}, {}, {"enabled": False}, 3, seed=2)
    index = next(i for i in range(10) if ds.item_geometry(i)["ego_motion"])
    item, g = ds[index], ds.item_geometry(index)
    H = item["H"].numpy()
    assert not np.allclose(H, np.eye(3), atol=1e-3)
    seg_a, seg_b = item["segmentation_a"].numpy(), item["segmentation_b"].numpy()
    valid_b = item["valid_b"].numpy()
    h, w = seg_a.shape
    assert (seg_b[~valid_b] == IGNORE).all() and valid_b.mean() > 0.5
    # every pixel well inside a label region of A lands on the same label in B
    checked = 0
    for label in np.unique(seg_a):
        inner = cv2.erode((seg_a == label).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        ys, xs = np.nonzero(inner)
        q = np.round(warp_points(H, np.stack([xs, ys], 1).astype(float))).astype(int)
        inside = (q[:, 0] >= 0) & (q[:, 0] < w) & (q[:, 1] >= 0) & (q[:, 1] < h)
        inside[inside] &= valid_b[q[inside, 1], q[inside, 0]]
        assert (seg_b[q[inside, 1], q[inside, 0]] == label).all(), label
        checked += inside.sum()
    assert checked > 0.4 * h * w
    # and B's label map is A's warped (nearest), so the car keeps its shape
    assert ((seg_b == 13).sum() > 0) == ((seg_a == 13).sum() > 0)
    # keypoints: labelled positions in B are exact warps of A's
    pixels, offsets, has = label_pixels(item["labels_b"][None], item["offsets_b"][None],
                                        item["valid_cells_b"][None])
    got = (pixels[0][has[0]].double() + offsets[0][has[0]].double()).numpy()
    expected = warp_points(H, g["points"])
    assert len(got) > 3
    assert np.linalg.norm(got[:, None] - expected[None], axis=-1).min(1).max() < 1e-4
    # the image: B = A warped by H
    a = item["image_a"].numpy().transpose(1, 2, 0)
    b = warp_image(a, H, border=cv2.BORDER_CONSTANT)
    assert np.abs(b - item["image_b"].numpy().transpose(1, 2, 0))[valid_b].max() <= 1 / 255
    # items are reproducible
    again = ds[index]
    assert all(torch.equal(item[k], again[k]) for k in item)


def test_dataset_errors(tree, tmp_path):
    root, labels = tree
    with pytest.raises(ConfigError, match="data.root"):
        LabelledPairs({"labels": str(labels)}, {}, {}, 3, 0)
    with pytest.raises(ConfigError, match="3 of 3 frames have no pseudo-labels"):
        LabelledPairs({"root": str(root), "labels": str(tmp_path)}, {}, {}, 3, 0)
    with pytest.raises(ConfigError, match="label_mode"):
        labelled_data_config({"root": "x", "label_mode": "classes20"})


@pytest.mark.skipif(not PSEUDO.is_dir(), reason="../shared/data/cityscapes_pseudo not present")
def test_reader_opens_the_real_format_fixture(tmp_path):
    image = cv2.imread(str(PSEUDO / "leftImg8bit/val/frankfurt/"
                                    "frankfurt_000000_000294_leftImg8bit.png"))
    labels = tmp_path / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.npz"
    labels.parent.mkdir()
    np.savez(labels, keypoints=np.array([[10.0, 20.0], [100.5, 60.25]], np.float32),
             scores=np.ones(2, np.float32), image_size=np.array(image.shape[:2], np.int32),
             source="frankfurt/frankfurt_000000_000294_leftImg8bit.png")
    ds = LabelledPairs({"root": str(PSEUDO), "split": "val", "labels": str(tmp_path),
                          "size": [64, 128], "label_mode": "groups4"}, {}, {}, 3, seed=0)
    item = ds[0]
    assert item["image_a"].shape == item["image_b"].shape == (3, 64, 128)
    assert item["segmentation_a"].shape == (64, 128)
    values = set(np.unique(item["segmentation_a"].numpy()).tolist())
    assert values <= {0, 1, 2, 3, IGNORE} and 1 in values  # road is flat
    assert float(item["ego_motion"]) == 0.0                # no camera/vehicle JSON there


# --- metrics --------------------------------------------------------------------------------------


def test_miou_by_hand():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 3]])
    predicted = np.array([[0, 1, 1, 1], [2, 0, 3, 3]])
    c = confusion_matrix(predicted, target, 4)
    assert c.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    miou, iou = intersection_over_union(c)
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 -> 1/3; class 1: 2/(2+1) ; class 2: 1/2; 3: 1
    np.testing.assert_allclose(iou, [1 / 3, 2 / 3, 1 / 2, 1.0])
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2 + 1) / 4)
    # a class in neither prediction nor target does not count
    miou, iou = intersection_over_union(confusion_matrix([0, 0], [0, 0], 3))
    assert miou == 1.0 and np.isnan(iou[1:]).all()


# --- losses and weighting -------------------------------------------------------------------------


def test_overfitting_one_batch_halves_the_segmentation_loss(tmp_path, tree):
    conf = stage3_config(tmp_path, tree)
    stage = STAGES["labelled"](conf, 3)
    torch.manual_seed(0)
    model = SuperSegmentation(TINY, semantics_for("classes")).train()
    batch = torch.utils.data.default_collate([stage.dataset[i] for i in range(2)])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        losses, out = stage.losses(model, batch, torch.Generator().manual_seed(0))
        total = stage.total_loss(losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    assert set(history[0]) == {"detector", "descriptor", "segmentation", "subpixel"}
    assert history[-1]["segmentation"] < 0.5 * history[0]["segmentation"]
    assert history[-1]["detector"] < history[0]["detector"]
    picture = stage.preview(batch, out)
    assert picture.shape == (CROP[0], 2 * CROP[1], 3) and picture.dtype == np.uint8


def test_uncertainty_weighting_is_kendalls_formula():
    from superseg_ros.training.stages import LossWeights
    weights = LossWeights(("a", "b"), "uncertainty", {"a": 1.0, "b": 1.0}, 0.5)
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(0.25)}
    total = weights(losses)
    expected = np.exp(-0.5) * 2.0 + 0.5 + np.exp(-0.5) * 0.25 + 0.5
    assert float(total.detach()) == pytest.approx(expected)
    total.backward()  # d/ds_i = 1 - exp(-s_i) L_i
    np.testing.assert_allclose(weights.log_variance.grad.numpy(),
                               [1 - np.exp(-0.5) * 2.0, 1 - np.exp(-0.5) * 0.25], rtol=1e-6)
    fixed = LossWeights(("a", "b"), "fixed", {"a": 2.0, "b": 4.0})
    assert float(fixed(losses)) == pytest.approx(5.0) and not list(fixed.parameters())


# --- the trainer -------------------------------------------------------------------------------


def test_pipeline_adapts_then_trains_fixed_weights(tmp_path, tree):
    """labels: adapt labels leftImg8bit/train with the init checkpoint, then trains; all four
    heads are trained, validation gives mIoU and the homography metrics, previews are written."""
    torch.manual_seed(0)
    start = SuperSegmentation(TINY)
    init = save_checkpoint(start, tmp_path / "stage2.pt",
                           trained_heads={"detector": True, "descriptor": True,
                                          "semantic": False, "subpixel": True})
    conf = stage3_config(tmp_path, tree, model={}, init={"checkpoint": str(init)},
                         data={"labels": "adapt"}, image_every=3,
                         adaptation={"num_homographies": 2, "batch_size": 2,
                                     "detection_threshold": 0.0, "max_keypoints": 50})
    from superseg_ros.training.cli import run_pipeline
    path = run_pipeline(conf, progress=False)
    out = Path(conf["output"])
    assert sorted(p.name for p in (out / "labels_round1" / "aachen").glob("*.npz")) == [
        "aachen_000000_000019_leftImg8bit.npz", "aachen_000001_000019_leftImg8bit.npz"]
    model = load_model(path)
    assert all(model.trained_heads.values())
    records = train_records(out / "round1")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert {"detector", "descriptor", "segmentation", "subpixel"} <= set(records[0])
    validation = [r for r in records if r["kind"] == "validation"][-1]
    for key in ("miou", "iou_flat_surface", "miou_classes", "homography_auc@3px"):
        assert key in validation, key
    assert 0.0 <= validation["miou"] <= 1.0
    assert (out / "round1" / "checkpoints" / "best.pt").exists()
    assert (out / "round1" / "previews" / "train_0000003.png").exists()


def test_uncertainty_weights_are_learned_logged_and_resumed_bit_identically(tmp_path, tree):
    changes = {"loss": {"max_points": 64, "weighting": "uncertainty"},
               "data": {"validation_split": ""}, "optimizer": {"lr": 0.01}}
    straight = Trainer(stage3_config(tmp_path, tree, output=str(tmp_path / "a"),
                                     schedule={"iterations": 4}, **changes), progress=False)
    straight.run()
    first = Trainer(stage3_config(tmp_path, tree, output=str(tmp_path / "b"),
                                  schedule={"iterations": 2}, **changes), progress=False)
    first.run()
    resumed = Trainer(stage3_config(tmp_path, tree, output=str(tmp_path / "b"),
                                    schedule={"iterations": 4}, **changes), progress=False)
    assert resumed.step == 2
    assert torch.equal(resumed.stage.loss_weights.log_variance,
                       first.stage.loss_weights.log_variance)
    resumed.run()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    s_a = straight.stage.loss_weights.log_variance.detach()
    assert torch.equal(s_a, resumed.stage.loss_weights.log_variance)
    assert (s_a.abs() > 0).all()             # optimised (they start at 0)
    records = [r for r in train_records(tmp_path / "b") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["log_variance_segmentation"] == pytest.approx(float(s_a[2]))
    assert records[-1]["weight_segmentation"] == pytest.approx(float(torch.exp(-s_a[2])))
    assert load_model(tmp_path / "b" / "model.pt").meta["loss_weights"]["log_variance_detector"] \
        == pytest.approx(float(s_a[0]))


def test_init_checkpoint_with_other_classes(tmp_path, tree):
    torch.manual_seed(0)
    start = SuperSegmentation(TINY)   # 19 classes
    init = save_checkpoint(start, tmp_path / "s2.pt")
    conf = stage3_config(tmp_path, tree, model={}, init={"checkpoint": str(init)},
                         data={"label_mode": "groups4"})
    with pytest.raises(ConfigError, match="reset_semantic"):
        Trainer(conf, progress=False)
    conf = stage3_config(tmp_path, tree, model={},
                         init={"checkpoint": str(init), "reset_semantic": True},
                         data={"label_mode": "groups4"})
    trainer = Trainer(conf, progress=False)
    model = trainer.model
    assert model.config["num_classes"] == 4 and model.semantics == semantics_for("groups4")
    assert model.semantic.classifier.weight.shape[0] == 4
    old = start.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("semantic.classifier"):
            assert torch.equal(value, old[key]), key
    # from scratch, the model follows the label mode; a contradicting num_classes is an error
    conf = stage3_config(tmp_path, tree, output=str(tmp_path / "x"),
                         data={"label_mode": "groups4"})
    assert Trainer(conf, progress=False).model.config["num_classes"] == 4
    conf = stage3_config(tmp_path, tree, output=str(tmp_path / "y"),
                         model=dict(TINY, num_classes=19), data={"label_mode": "groups4"})
    with pytest.raises(ConfigError, match="num_classes 19"):
        Trainer(conf, progress=False)


def test_init_checkpoint_with_a_changed_architecture(tmp_path, tree):
    """decoder_stride 8 -> 4 on a lean checkpoint: only the decoder's skip projection changes
    shape, so every other weight comes from the checkpoint; without the option it is an error."""
    torch.manual_seed(0)
    lean = {"preset": "lean", "encoder_width": 8, "neck_channels": 16, "head_channels": 16,
            "descriptor_dim": 32, "aspp_channels": 16, "low_level_channels": 8,
            "decoder_channels": 16}
    start = SuperSegmentation(dict(lean, num_classes=4), semantics_for("groups4"))
    start.trained_heads = {head: True for head in start.trained_heads}
    init = save_checkpoint(start, tmp_path / "s3.pt")
    conf = stage3_config(tmp_path, tree, model={"decoder_stride": 4},
                         init={"checkpoint": str(init)}, data={"label_mode": "groups4"})
    with pytest.raises(ConfigError, match="change_architecture"):
        Trainer(conf, progress=False)
    conf = stage3_config(tmp_path, tree, model={"decoder_stride": 4},
                         init={"checkpoint": str(init), "change_architecture": True},
                         data={"label_mode": "groups4"})
    model = Trainer(conf, progress=False).model
    assert model.config["decoder_stride"] == 4 and model.semantic.upsample == 1
    assert all(model.trained_heads.values())
    old, fresh = start.state_dict(), []
    for key, value in model.state_dict().items():
        if key in old and old[key].shape == value.shape:
            assert torch.equal(value, old[key]), key
        else:
            fresh.append(key)
    assert fresh and all(k.startswith("semantic.reduce.") for k in fresh), fresh
    out = model(torch.rand(1, 3, 64, 64))
    assert out["segmentation"].shape == (1, 4, 16, 16)
    conf = stage3_config(tmp_path, tree, output=str(tmp_path / "z"),
                         model={"decoder_stride": 5},
                         init={"checkpoint": str(init), "change_architecture": True},
                         data={"label_mode": "groups4"})
    with pytest.raises(ConfigError, match="decoder_stride"):
        Trainer(conf, progress=False)


# --- two processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(config: Path, *args) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [str(torchrun), "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(ROOT / "test" / "ddp_worker.py"), str(config),
           "--no-progress", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_two_processes_on_gloo_end_with_the_same_weights_and_resume(tmp_path, tree):
    # batch 1 per process, 2 micro-batches per step (DDP's no_sync path), learned loss weights
    # (their gradients are averaged outside DDP)
    conf = stage3_config(tmp_path, tree, output=str(tmp_path / "ddp"), batch_size=1,
                         accumulate=2, threads=1, schedule={"iterations": 2}, checkpoint_every=1,
                         loss={"max_points": 64, "weighting": "uncertainty"},
                         data={"validation_split": ""})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(conf))
    result = torchrun(path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(conf["output"])
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [2, 2]
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    assert torch.equal(ranks[0]["stage"]["log_variance"], ranks[1]["stage"]["log_variance"])
    assert (ranks[0]["stage"]["log_variance"] != 0).all()  # they were trained
    # one writer: one checkpoint folder, one line per step, model.pt = rank 0's weights
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]
    steps = [r["step"] for r in train_records(out) if r["kind"] == "train"]
    assert steps == [1, 2]
    saved = load_model(out / "model.pt").state_dict()
    assert all(torch.equal(v, ranks[0]["model"][k]) for k, v in saved.items())
    assert result.stdout.count("model: ") == 1
    # both processes resume from last.pt and go on in step
    result = torchrun(path, "--set", "schedule.iterations=3")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3]
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    assert [r["step"] for r in train_records(out) if r["kind"] == "train"] == [1, 2, 3]
    assert "resuming" in result.stderr + result.stdout
