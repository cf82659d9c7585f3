"""Training stages, trainer, configs and resume, on the CPU with a tiny network."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY
from superseg_ros.checkpoint import load_model
from superseg_ros.config import ConfigError
from superseg_ros.homography import sample_homography, warp_points
from superseg_ros.training import augment, data
from superseg_ros.training.cli import main as train_main
from superseg_ros.training.config import load_config, training_config
from superseg_ros.training.stages import STAGES, average_precision, label_pixels, \
    match_detections
from superseg_ros.training.synthetic_shapes import SyntheticShapes
from superseg_ros.training.trainer import Trainer, TrainingError, learning_rate_factor

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def magicpoint_config(tmp_path, **changes):
    raw = {"name": "mp", "stage": "magicpoint", "output": str(tmp_path / "mp"), "device": "cpu",
           "model": dict(TINY), "data": {"shapes": {"height": 64, "width": 80}},
           "schedule": {"iterations": 4, "decay": "constant"}, "batch_size": 3,
           "log_every": 1, "image_every": 2, "checkpoint_every": 2, "validate_every": 0,
           "validation": {"images": 4}, "tensorboard": False}
    raw.update(changes)
    return training_config(raw)


def write_labelled_folder(folder: Path, n: int = 4, size=(96, 128)):
    """Synthetic images with their exact corners stored as superseg-adapt pseudo-labels."""
    shapes = SyntheticShapes({"height": size[0], "width": size[1]}, seed=5)
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True), labels.mkdir()
    for i in range(n):
        item = shapes.sample(i)
        cv2.imwrite(str(images / f"{i:03d}.png"), item.image)
        np.savez(labels / f"{i:03d}.npz", keypoints=item.corners.astype(np.float32),
                 scores=np.ones(len(item.corners), np.float32),
                 image_size=np.array(item.image.shape, np.int32), source=f"{i:03d}.png")
    return images, labels


def joint_config(tmp_path, images, labels, **changes):
    raw = {"name": "joint", "stage": "joint", "output": str(tmp_path / "joint"), "device": "cpu",
           "model": dict(TINY),
           "data": {"images": str(images), "labels": str(labels), "size": [64, 96]},
           "loss": {"max_points": 64},
           "schedule": {"iterations": 3, "decay": "constant"}, "batch_size": 2,
           "log_every": 1, "image_every": 100, "checkpoint_every": 100, "validate_every": 0,
           "tensorboard": False}
    raw.update(changes)
    return training_config(raw)


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    conf = load_config(path)
    stage = STAGES[conf["stage"]]
    from superseg_ros.config import merge_config
    merge_config(stage.loss_defaults, conf["loss"], where="loss")
    merge_config(stage.validation_defaults, conf["validation"], where="validation")
    if conf["stage"] == "magicpoint":
        data.ShapesDataset(conf["data"], conf["homography"], conf["photometric"], 3, 0)
    elif conf["stage"] == "labelled":
        from superseg_ros.training.labelled_data import labelled_data_config
        labelled_data_config(conf["data"])
    else:
        merge_config(data.PAIR_DATA_DEFAULTS, conf["data"], where="data")
    from superseg_ros.training.adaptation import adaptation_config
    adaptation_config(conf["adaptation"])
    from superseg_ros.network.superseg import model_config
    model_config(conf["model"])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="batch_sise"):
        training_config({"batch_sise": 3})
    path = tmp_path / "c.yaml"
    path.write_text("stage: magicpoint\nschedule: {iterations: 5}\n")
    assert load_config(path, ["schedule.iterations=7"])["schedule"]["iterations"] == 7
    with pytest.raises(ConfigError, match="schedule key .iteratons"):
        load_config(path, ["schedule.iteratons=7"])
    with pytest.raises(ConfigError, match="stage"):
        training_config({"stage": "stage3"})


def test_learning_rate_schedule():
    sched = {"iterations": 100, "warmup": 10, "decay": "cosine", "min_lr_ratio": 0.01}
    f = [learning_rate_factor(s, sched) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.01, abs=1e-3)


# --- data ----------------------------------------------------------------------------------------


def test_keypoint_targets_skip_invalid_pixels_and_cells():
    valid = np.ones((16, 16), bool)
    valid[:, 12:] = False
    t = data.keypoint_targets(np.array([[3.25, 2.0], [13.0, 3.0]]), valid,
                              np.random.default_rng(0))
    assert t["labels"][0, 0] == 2 * 8 + 3 and t["labels"][0, 1] == 64  # second point invalid
    assert torch.allclose(t["offsets"][0, 0], torch.tensor([0.25, 0.0]))
    assert t["valid_cells"].tolist() == [[True, False], [True, False]]


def test_label_pixels_decode_cell_labels():
    labels = torch.tensor([[[9, 64], [63, 0]]])
    offsets = torch.zeros(1, 2, 2, 2)
    pixels, _, has = label_pixels(labels, offsets, torch.ones_like(labels, dtype=torch.bool))
    assert has.tolist() == [[True, False, True, True]]
    assert pixels[0, 0].tolist() == [1, 1] and pixels[0, 2].tolist() == [7, 15]
    assert pixels[0, 3].tolist() == [8, 8]


def test_shapes_items_are_reproducible_and_labelled():
    ds = data.ShapesDataset({"shapes": {"height": 64, "width": 80}}, {}, {}, 3, seed=3)
    a, b = ds[7], ds[7]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    assert a["image"].shape == (3, 64, 80) and a["labels"].shape == (8, 10)
    assert not torch.equal(ds[8]["image"], a["image"])


def test_scaled_crop_transform_follows_the_pixels():
    """T maps a file pixel to where its content lands in the crop, at any drawn scale."""
    image = np.zeros((90, 120), np.uint8)
    cv2.circle(image, (70, 40), 6, 255, -1)
    labels = np.zeros((90, 120), np.uint8)
    labels[30:50, 60:80] = 7
    scales = set()
    for seed in range(6):
        rng = np.random.default_rng(seed)
        crop, crop_labels, T = data.scaled_crop(image, (48, 64), [0.5, 1.0], rng, labels)
        again = data.scaled_crop(image, (48, 64), [0.5, 1.0], np.random.default_rng(seed), labels)
        assert np.array_equal(crop, again[0]) and np.allclose(T, again[2])  # seeded
        assert crop.shape == crop_labels.shape == (48, 64)
        scales.add(round(T[0, 0], 3))
        x, y = warp_points(T, np.array([[70.0, 40.0]]))[0]
        if 8 <= x <= 56 and 8 <= y <= 40:  # the blob is inside the crop
            w = crop.astype(float)
            ys, xs = np.mgrid[0:48, 0:64]
            assert abs((w * xs).sum() / w.sum() - x) < 0.3
            assert abs((w * ys).sum() / w.sum() - y) < 0.3
            assert crop_labels[int(round(y)), int(round(x))] == 7
    assert len(scales) > 3 and min(scales) >= 64 / 120 - 1e-9  # never below covering the crop
    _, _, T = data.scaled_crop(image, (48, 64), None, np.random.default_rng(0))
    assert T[0, 0] == pytest.approx(max(48 / 90, 64 / 120))  # None: just cover


@pytest.mark.parametrize("scale", [None, [0.4, 1.0]])
def test_pair_labels_follow_the_crop_and_the_homography(tmp_path, scale):
    """A's labels are the file's corners moved by the random scale and crop (item i's generator
    draws them first), and B's are A's moved by H."""
    images, labels = write_labelled_folder(tmp_path, n=2, size=(64, 96))
    size = [64, 96] if scale is None else [32, 48]
    ds = data.PairDataset({"images": str(images), "labels": str(labels), "size": size,
                           "scale": scale}, {}, {"enabled": False}, 3, seed=0)
    for index in range(3):
        item = ds[index]
        path = ds.image_for(index)
        corners = np.load(labels / f"{path.stem}.npz")["keypoints"]
        _, _, T = data.scaled_crop(data.read_rgb(path), size, scale,
                                   np.random.default_rng((0, 3, index)))
        for view, H in (("a", np.eye(3)), ("b", item["H"].numpy())):
            expected = warp_points(H @ T, corners)
            pixels, offsets, has = label_pixels(item[f"labels_{view}"][None],
                                                item[f"offsets_{view}"][None],
                                                item[f"valid_cells_{view}"][None])
            got = (pixels[0][has[0]].double() + offsets[0][has[0]].double()).numpy()
            if len(got):
                assert np.linalg.norm(got[:, None] - expected[None], axis=-1).min(1).max() < 1e-4
    with pytest.raises(ConfigError, match="data.scale"):
        data.PairDataset({"images": str(images), "labels": str(labels), "scale": [1.0, 0.5]},
                         {}, {}, 3, seed=0)


def test_pair_labels_follow_the_homography(tmp_path):
    images, labels = write_labelled_folder(tmp_path, n=2, size=(64, 96))
    ds = data.PairDataset({"images": str(images), "labels": str(labels), "size": [64, 96]},
                          {}, {"enabled": False}, 3, seed=0)
    item = ds[0]
    path = ds.image_for(0)
    corners = np.load(labels / f"{path.stem}.npz")["keypoints"]
    expected = warp_points(item["H"].numpy(), corners)
    pixels, offsets, has = label_pixels(item["labels_b"][None], item["offsets_b"][None],
                                        item["valid_cells_b"][None])
    got = (pixels[0][has[0]].double() + offsets[0][has[0]].double()).numpy()
    assert len(got) > 0
    # every labelled position in B is an exact warp of a corner of A
    d = np.linalg.norm(got[:, None] - expected[None], axis=-1).min(1)
    assert d.max() < 1e-4
    # B's image is A's image warped by H (photometric augmentation off)
    a = item["image_a"].numpy().transpose(1, 2, 0)
    from superseg_ros.homography import warp_image
    b = warp_image(a, item["H"].numpy(), border=cv2.BORDER_CONSTANT)
    valid = item["valid_b"].numpy()
    assert np.abs(b - item["image_b"].numpy().transpose(1, 2, 0))[valid].max() <= 1 / 255  # uint8 rounding


def test_pair_dataset_reports_missing_labels(tmp_path):
    images, labels = write_labelled_folder(tmp_path, n=2)
    (labels / "001.npz").unlink()
    with pytest.raises(ConfigError, match="1 of 2 images have no pseudo-labels"):
        data.PairDataset({"images": str(images), "labels": str(labels)}, {}, {}, 3, 0)


def test_photometric_augmentation_is_deterministic_per_seed():
    rng = np.random.default_rng(11)
    image = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    conf = augment.photometric_config({"probability": 1.0})
    outs = [augment.photometric_augment(image, np.random.default_rng(s), conf) for s in (1, 1, 2)]
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    assert outs[0].dtype == np.uint8 and outs[0].shape == image.shape
    # each op alone, too: the same seed gives the same image, and the op changes it
    for op in augment.OPS:
        only = augment.photometric_config({"probability": 1.0, **{
            other: value for other, value in (("brightness", 0.0), ("contrast", [1.0, 1.0]),
                                              ("gaussian_noise", [0.0, 0.0]),
                                              ("speckle", [0.0, 0.0]), ("shade", [0.0, 0.0]),
                                              ("motion_blur", 0), ("gamma", [1.0, 1.0]),
                                              ("gaussian_blur", [0.0, 0.0]), ("colour", 0.0))
            if other != op}})
        a = augment.photometric_augment(image, np.random.default_rng(5), only)
        b = augment.photometric_augment(image, np.random.default_rng(5), only)
        assert np.array_equal(a, b), op
        assert not np.array_equal(a, image), op
    with pytest.raises(ConfigError, match="photometric.gamma"):
        augment.photometric_config({"gamma": [0.0, 2.0]})


def test_photometric_augmentation_keeps_geometry():
    image = np.full((64, 64), 60, np.uint8)
    cv2.circle(image, (30, 34), 6, 200, -1)
    rng = np.random.default_rng(0)
    conf = augment.photometric_config({"probability": 1.0, "gaussian_noise": [0.0, 0.0],
                                       "speckle": [0.0, 0.0], "shade": [0.0, 0.0]})
    # motion blur is the op that could move a feature: its kernel is centred
    for _ in range(5):
        out = augment.photometric_augment(image, rng, conf)
        assert out.shape == image.shape and out.dtype == np.uint8
        weight = np.abs(out.astype(float) - np.median(out))
        ys, xs = np.mgrid[0:64, 0:64]
        cx, cy = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()
        assert abs(cx - 30) < 0.1 and abs(cy - 34) < 0.1


# --- stages learn --------------------------------------------------------------------------------


def overfit(stage, model, batch, steps=40):
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    history = []
    for step in range(steps):
        losses, _ = stage.losses(model, batch, torch.Generator().manual_seed(0))
        total = sum(stage.weights[k] * v for k, v in losses.items())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


def test_magicpoint_stage_overfits_one_batch(tmp_path):
    conf = magicpoint_config(tmp_path)
    torch.manual_seed(0)
    from superseg_ros.network import SuperSegmentation
    model = SuperSegmentation(TINY)
    stage = STAGES["magicpoint"](conf, 3)
    batch = torch.utils.data.default_collate([stage.dataset[i] for i in range(3)])
    h = overfit(stage, model, batch)
    assert h[-1]["detector"] < 0.6 * h[0]["detector"]
    assert h[-1]["subpixel"] < 0.7 * h[0]["subpixel"]


def test_joint_stage_overfits_one_batch(tmp_path):
    images, labels = write_labelled_folder(tmp_path)
    conf = joint_config(tmp_path, images, labels)
    torch.manual_seed(0)
    from superseg_ros.network import SuperSegmentation
    model = SuperSegmentation(TINY)
    stage = STAGES["joint"](conf, 3)
    batch = torch.utils.data.default_collate([stage.dataset[i] for i in range(2)])
    h = overfit(stage, model, batch)
    for key in ("detector", "descriptor", "subpixel"):
        assert h[-1][key] < 0.7 * h[0][key], key


def test_train_only_the_subpixel_head_with_the_consistency_loss(tmp_path):
    """train_only freezes every other part, BatchNorm statistics included; the consistency loss
    alone moves the offsets."""
    images, labels = write_labelled_folder(tmp_path)
    conf = joint_config(tmp_path, images, labels, train_only=["subpixel"],
                        loss={"max_points": 64, "detector": 0.0, "descriptor": 0.0,
                              "subpixel": 0.0, "subpixel_consistency": 1.0},
                        schedule={"iterations": 4, "decay": "constant"})
    torch.manual_seed(0)
    from superseg_ros.network import SuperSegmentation
    model = SuperSegmentation(TINY)
    init = tmp_path / "init.pt"
    from superseg_ros.checkpoint import save_checkpoint
    save_checkpoint(model, init)
    conf["init"]["checkpoint"] = str(init)
    trainer = Trainer(conf, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("subpixel.") for k in changed), sorted(changed)[:5]
    logged = [json.loads(line) for line in (Path(conf["output"]) / "metrics.jsonl").open()]
    assert any("subpixel_consistency" in r for r in logged if r["kind"] == "train")
    with pytest.raises(ConfigError, match="train_only"):
        training_config({"stage": "joint", "train_only": ["decoder"]})


# --- the trainer ---------------------------------------------------------------------------------


def test_magicpoint_run_writes_checkpoints_metrics_and_a_loadable_model(tmp_path):
    conf = magicpoint_config(tmp_path, validate_every=2)
    path = Trainer(conf, progress=False).run()
    model = load_model(path)
    assert model.trained_heads == {"detector": True, "descriptor": False, "semantic": False,
                                   "subpixel": True}
    assert model.meta["stage"] == "magicpoint" and model.meta["step"] == 4
    out = Path(conf["output"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    validation = [r for r in records if r["kind"] == "validation"]
    assert len(validation) == 2 and "average_precision" in validation[0]
    assert (out / "checkpoints" / "best.pt").exists() and (out / "checkpoints" / "last.pt").exists()
    assert sorted(p.name for p in (out / "previews").iterdir()) == [
        "train_0000002.png", "train_0000004.png"]
    assert yaml.safe_load((out / "config.yaml").read_text())["stage"] == "magicpoint"


def test_resume_continues_from_the_same_step_with_the_same_result(tmp_path):
    straight = Trainer(magicpoint_config(tmp_path, output=str(tmp_path / "a")), progress=False)
    straight.run()
    # the same run, stopped after 2 steps and resumed
    first = Trainer(magicpoint_config(tmp_path, output=str(tmp_path / "b"),
                                      schedule={"iterations": 2, "decay": "constant"}),
                    progress=False)
    first.run()
    resumed = Trainer(magicpoint_config(tmp_path, output=str(tmp_path / "b")), progress=False)
    assert resumed.step == 2
    resumed.run()
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    opt_a, opt_b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert opt_a["state"][0]["step"] == opt_b["state"][0]["step"] == 4


def test_resume_refuses_a_different_config(tmp_path):
    Trainer(magicpoint_config(tmp_path, schedule={"iterations": 2, "decay": "constant"}),
            progress=False).run()
    with pytest.raises(TrainingError, match="optimizer.lr"):
        Trainer(magicpoint_config(tmp_path, optimizer={"lr": 0.01}), progress=False)
    # --restart starts over
    t = Trainer(magicpoint_config(tmp_path, optimizer={"lr": 0.01}), restart=True,
                progress=False)
    assert t.step == 0


def test_joint_run_starts_from_a_stage1_checkpoint(tmp_path):
    stage1 = Trainer(magicpoint_config(tmp_path, schedule={"iterations": 1}),
                     progress=False).run()
    images, labels = write_labelled_folder(tmp_path)
    conf = joint_config(tmp_path, images, labels, model={},
                        init={"checkpoint": str(stage1)},
                        data={"images": str(images), "labels": str(labels), "size": [64, 96],
                              "validation_images": str(images), "validation_pairs": 2},
                        validation={"pairs": 2, "max_keypoints": 50})
    model = load_model(Trainer(conf, progress=False).run())
    assert model.trained_heads == {"detector": True, "descriptor": True, "semantic": False,
                                   "subpixel": True}
    assert model.meta["history"][0]["stage"] == "magicpoint"
    records = (Path(conf["output"]) / "metrics.jsonl").read_text().splitlines()
    validation = [json.loads(r) for r in records if json.loads(r)["kind"] == "validation"]
    assert "homography_auc@3px" in validation[-1]


def test_init_checkpoint_may_not_be_contradicted(tmp_path):
    stage1 = Trainer(magicpoint_config(tmp_path, schedule={"iterations": 1}),
                     progress=False).run()
    conf = magicpoint_config(tmp_path, output=str(tmp_path / "x"),
                             init={"checkpoint": str(stage1)},
                             model=dict(TINY, descriptor_dim=64))
    with pytest.raises(ConfigError, match="descriptor_dim"):
        Trainer(conf, progress=False)


def test_cli_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: magicpoint\nbatchsize: 4\n")
    assert train_main([str(bad)]) == 2
    assert "batchsize" in capsys.readouterr().err
    assert train_main([str(tmp_path / "missing.yaml")]) == 2
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({
        "stage": "magicpoint", "device": "cpu", "model": dict(TINY),
        "data": {"shapes": {"height": 64, "width": 80}}, "batch_size": 2,
        "schedule": {"iterations": 2}, "validate_every": 0, "tensorboard": False,
        "validation": {"images": 2}}))
    assert train_main([str(good), "--output", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "model.pt").exists()
    assert train_main([str(good), "--output", str(tmp_path / "run"), "--no-progress",
                       "--set", "seed=4"]) == 2
    assert "seed" in capsys.readouterr().err


def test_detection_metrics_by_hand():
    truth = np.array([[10.0, 10.0], [20.0, 20.0]])
    kp = np.array([[10.5, 10.0], [30.0, 30.0], [20.0, 21.0]])
    scores, correct, errors = match_detections(kp, np.array([0.9, 0.8, 0.7]), truth, 2.0)
    assert correct.tolist() == [True, False, True]
    assert sorted(errors.tolist()) == [0.5, 1.0]
    # ranked: TP (p=1, r=.5), FP, TP (p=2/3, r=1) -> AP = .5*1 + .5*2/3
    assert average_precision(scores, correct, 2) == pytest.approx(0.5 + 1 / 3)


def test_a_wall_clock_budget_stops_the_run_with_a_model_and_a_validation(tmp_path):
    """schedule.minutes: the step that passes the budget is the last; the run still ends with
    its checkpoint, model.pt and final validation (here the budget is gone after one step)."""
    conf = magicpoint_config(tmp_path, schedule={"iterations": 50, "decay": "constant",
                                                 "minutes": 1e-6})
    trainer = Trainer(conf, progress=False)
    model_path = trainer.run()
    assert trainer.step == 1 and model_path.is_file()
    records = [json.loads(line) for line in (tmp_path / "mp" / "metrics.jsonl").read_text()
               .splitlines()]
    assert records[-1]["kind"] == "validation"
    assert torch.load(tmp_path / "mp" / "checkpoints" / "last.pt",
                      weights_only=True)["training_state"]["step"] == 1
    with pytest.raises(ConfigError, match="schedule.minutes"):
        magicpoint_config(tmp_path, schedule={"minutes": -1.0})
