"""The Cityscapes label table (semantics.py) and reader (training/cityscapes.py).

Fixtures are tiny trees in the official layout made here; the real-format fixture in
../shared/data/cityscapes_pseudo is only read (tests skip without it).
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from superseg_ros.config import ConfigError
from superseg_ros.network import SuperSegmentation
from superseg_ros.semantics import (CITYSCAPES_LABELS, CITYSCAPES_TRAIN_CLASSES, DYNAMIC, FLAT,
                                    GROUPS, IGNORE, STATIC, UNSTABLE, cityscapes_id_to_group,
                                    cityscapes_id_to_train_id, default_semantics, remap_labels,
                                    semantics_for, validate_semantics)
from superseg_ros.training.cityscapes import CityscapesError, CityscapesFrames

from conftest import TINY

PSEUDO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cityscapes_pseudo"
CAMERA = {"extrinsic": {"baseline": 0.209313, "pitch": 0.038, "roll": 0.0, "yaw": -0.0195,
                        "x": 1.7, "y": 0.1, "z": 1.22},
          "intrinsic": {"fx": 2262.52, "fy": 2265.30, "u0": 1096.98, "v0": 513.137}}
VEHICLE = {"gpsHeading": 10.0, "gpsLatitude": 50.7, "gpsLongitude": 7.1,
           "outsideTemperature": 12.5, "speed": 8.5, "yawRate": 0.02}


# --- label table ---------------------------------------------------------------------------------


def test_19_class_table_is_unchanged():
    # the table before the full ontology was added, written out: derived tables must not drift
    assert CITYSCAPES_TRAIN_CLASSES == (
        ("road", FLAT), ("sidewalk", FLAT), ("building", STATIC), ("wall", STATIC),
        ("fence", STATIC), ("pole", STATIC), ("traffic light", STATIC), ("traffic sign", STATIC),
        ("vegetation", UNSTABLE), ("terrain", FLAT), ("sky", UNSTABLE), ("person", DYNAMIC),
        ("rider", DYNAMIC), ("car", DYNAMIC), ("truck", DYNAMIC), ("bus", DYNAMIC),
        ("train", DYNAMIC), ("motorcycle", DYNAMIC), ("bicycle", DYNAMIC))


def test_full_ontology_matches_cityscapes_scripts():
    by_name = {label.name: label for label in CITYSCAPES_LABELS}
    assert len(CITYSCAPES_LABELS) == 35 and len(by_name) == 35
    assert sorted(label.id for label in CITYSCAPES_LABELS) == list(range(-1, 34))
    # spot checks against cityscapesScripts helpers/labels.py
    assert by_name["road"][1:7] == (7, 0, "flat", 1, False, False)
    assert by_name["parking"][1:7] == (9, 255, "flat", 1, False, True)
    assert by_name["polegroup"][1:7] == (18, 255, "object", 3, False, True)
    assert by_name["caravan"][1:7] == (29, 255, "vehicle", 7, True, True)
    assert by_name["bicycle"][1:7] == (33, 18, "vehicle", 7, True, False)
    assert by_name["license plate"][1:7] == (-1, -1, "vehicle", 7, False, True)
    # train ids 0..18 are used once each; everything else is ignored (license plate: -1)
    train = sorted(label.train_id for label in CITYSCAPES_LABELS if 0 <= label.train_id < 255)
    assert train == list(range(19))
    # an evaluated class is exactly one with a train id
    for label in CITYSCAPES_LABELS:
        assert label.ignore_in_eval == (not 0 <= label.train_id < 255), label.name


def test_groups_of_the_extra_classes():
    group = {label.name: label.group for label in CITYSCAPES_LABELS}
    assert group["parking"] == group["rail track"] == FLAT
    assert group["guard rail"] == group["bridge"] == group["tunnel"] == group["polegroup"] == STATIC
    assert group["caravan"] == group["trailer"] == DYNAMIC
    for name in ("unlabeled", "ego vehicle", "rectification border", "out of roi", "static",
                 "dynamic", "ground", "license plate"):
        assert group[name] == IGNORE, name


def test_lookup_tables():
    train, group = cityscapes_id_to_train_id(), cityscapes_id_to_group()
    assert train.shape == group.shape == (256,) and train.dtype == group.dtype == np.uint8
    assert train[7] == 0 and train[26] == 13 and train[33] == 18 and train[9] == 255
    assert group[7] == FLAT and group[26] == DYNAMIC and group[21] == UNSTABLE and group[0] == 255
    assert (train[34:] == 255).all() and (group[34:] == 255).all()


def test_remap_labels_both_modes():
    ids = np.array([[0, 7, 8, 9], [11, 21, 23, 26], [29, 17, 1, 33]], np.uint8)
    assert remap_labels(ids, "classes").tolist() == [[255, 0, 1, 255], [2, 8, 10, 13],
                                                       [255, 5, 255, 18]]
    assert remap_labels(ids, "groups4").tolist() == [[255, 1, 1, 1], [0, 3, 3, 2], [2, 0, 255, 2]]
    assert remap_labels(ids.astype(np.int64), "groups4").dtype == np.uint8


def test_remap_labels_rejects_bad_input():
    with pytest.raises(ConfigError, match="classes, groups4"):
        remap_labels(np.zeros((2, 2), np.uint8), "classes20")
    with pytest.raises(ValueError, match=r"\[34, 255\] are not Cityscapes label ids"):
        remap_labels(np.array([7, 34, 255], np.uint8), "classes")
    with pytest.raises(ValueError, match="integer"):
        remap_labels(np.zeros(3, np.float32), "groups4")


def test_semantics_for_modes_build_networks():
    assert semantics_for("classes") == default_semantics()
    groups = semantics_for("groups4")
    assert groups["classes"] == list(GROUPS) and groups["class_to_group"] == [0, 1, 2, 3]
    validate_semantics(groups, 4)
    torch.manual_seed(0)
    model = SuperSegmentation(dict(TINY, num_classes=4), groups)
    assert model.semantics == groups
    out = model(torch.rand(1, 3, 32, 32))
    assert out["segmentation"].shape[1] == 4
    with pytest.raises(ConfigError):
        semantics_for("groups5")


@pytest.mark.skipif(not PSEUDO.is_dir(), reason="../shared/data/cityscapes_pseudo not present")
def test_table_agrees_with_real_train_id_png():
    name = "frankfurt_000000_000294"
    folder = PSEUDO / "gtFine" / "val" / "frankfurt"
    ids = cv2.imread(str(folder / f"{name}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
    train = cv2.imread(str(folder / f"{name}_gtFine_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)
    ours = remap_labels(ids, "classes")
    # Each label id present maps, in most of its pixels, to exactly our train id.
    for i in np.unique(ids):
        values, counts = np.unique(train[ids == i], return_counts=True)
        assert values[counts.argmax()] == cityscapes_id_to_train_id()[i], f"label id {i}"
    # The two PNGs were downscaled separately (to 256x128), so a few boundary pixels disagree:
    # each such pixel must have our value for the train-id PNG within 2 px (ignoring 255).
    bad = np.argwhere((ours != train) & (train != 255))
    assert len(bad) < 0.005 * ids.size
    for y, x in bad:
        window = ours[max(0, y - 2):y + 3, max(0, x - 2):x + 3]
        assert train[y, x] in window, (y, x)


# --- reader fixtures ---------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def frame_bgr(value: int, w=16, h=8) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = value, 100, 200  # B, G, R
    return img


def make_tree(root: Path, split="train", frames=(("aachen", 0, 19), ("aachen", 1, 19),
                                                 ("bonn", 3, 19)),
              gt=True, camera=True, vehicle=True, sequence=True) -> Path:
    for k, (city, seq, frame) in enumerate(frames):
        stem = f"{city}_{seq:06d}_{frame:06d}"
        write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", frame_bgr(k))
        if gt:
            ids = np.full((8, 16), 7, np.uint8)
            ids[:, 8:] = 26 if k == 0 else 21
            write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
        if camera:
            write_json(root / "camera" / split / city / f"{stem}_camera.json", CAMERA)
        if vehicle:
            write_json(root / "vehicle" / split / city / f"{stem}_vehicle.json",
                       dict(VEHICLE, speed=5.0 + k))
        if sequence:
            for f in range(frame - 2, frame + 3):
                write_png(root / "leftImg8bit_sequence" / split / city /
                          f"{city}_{seq:06d}_{f:06d}_leftImg8bit.png", frame_bgr(100 + f))
                write_json(root / "vehicle_sequence" / split / city /
                           f"{city}_{seq:06d}_{f:06d}_vehicle.json", dict(VEHICLE, speed=f))
    return root


# --- reader ---------------------------------------------------------------------------------------


def test_reader_lists_sorted_and_reads_everything(tmp_path):
    make_tree(tmp_path)
    # a frame of another split must not appear
    write_png(tmp_path / "leftImg8bit" / "val" / "zurich" / "zurich_000000_000019_leftImg8bit.png",
              frame_bgr(1))
    ds = CityscapesFrames(tmp_path, "train")
    assert ds.frames == ["aachen_000000_000019", "aachen_000001_000019", "bonn_000003_000019"]
    sample = ds[0]
    assert (sample["name"], sample["city"], sample["sequence"], sample["frame"]) == \
        ("aachen_000000_000019", "aachen", 0, 19)
    assert sample["image"].shape == (8, 16, 3) and sample["image"].dtype == np.uint8
    assert tuple(sample["image"][0, 0]) == (200, 100, 0)  # RGB, not BGR
    assert sample["label_ids"][0, 0] == 7 and sample["label_ids"][0, 15] == 26
    assert sample["labels"]["classes"][0, 15] == 13 and sample["labels"]["groups4"][0, 15] == 2
    assert sample["camera"] == {k: {kk: float(vv) for kk, vv in v.items()}
                                for k, v in CAMERA.items()}
    assert sample["vehicle"]["speed"] == 5.0  # vehicle/ comes before vehicle_sequence/
    nb = sample["neighbour"]
    assert nb["name"] == "aachen_000000_000020" and nb["frame"] == 20 and nb["offset"] == 1
    assert nb["dt"] == pytest.approx(1 / 17)
    assert tuple(nb["image"][0, 0]) == (200, 100, 120)
    assert nb["camera"] == sample["camera"]  # calibration of the snippet
    assert nb["vehicle"]["speed"] == 20.0   # from vehicle_sequence/
    assert ds[2]["image"][0, 0, 2] == 2 and len(list(ds)) == 3


def test_reader_config(tmp_path):
    make_tree(tmp_path)
    ds = CityscapesFrames(tmp_path, "train", {"neighbour_offset": -2, "label_modes": ["groups4"],
                                              "cities": ["bonn"]})
    assert ds.frames == ["bonn_000003_000019"]
    sample = ds[0]
    assert list(sample["labels"]) == ["groups4"]
    assert sample["neighbour"]["frame"] == 17 and sample["neighbour"]["dt"] == pytest.approx(-2 / 17)
    assert CityscapesFrames(tmp_path, "train", {"neighbour": False})[0]["neighbour"] is None
    with pytest.raises(ConfigError, match="neighbor_offset"):
        CityscapesFrames(tmp_path, "train", {"neighbor_offset": 1})
    with pytest.raises(ConfigError, match="label_modes"):
        CityscapesFrames(tmp_path, "train", {"label_modes": ["classes20"]})
    with pytest.raises(ConfigError, match="neighbour_offset"):
        CityscapesFrames(tmp_path, "train", {"neighbour_offset": 0})


def test_reader_without_optional_modalities(tmp_path):
    make_tree(tmp_path, split="test", gt=False, camera=False, vehicle=False, sequence=False)
    sample = CityscapesFrames(tmp_path, "test")[0]
    assert sample["label_ids"] is None and sample["labels"] == {}
    assert sample["camera"] is None and sample["vehicle"] is None and sample["neighbour"] is None
    with pytest.raises(CityscapesError, match="aachen_000000_000019_camera.json.*no such folder"):
        CityscapesFrames(tmp_path, "test", {"require_camera": True})[0]


def test_camera_of_the_snippet_is_used_for_other_frames(tmp_path):
    make_tree(tmp_path, frames=(("aachen", 0, 19),))
    src = tmp_path / "camera" / "train" / "aachen" / "aachen_000000_000019_camera.json"
    src.rename(src.with_name("aachen_000000_000018_camera.json"))
    assert CityscapesFrames(tmp_path, "train")[0]["camera"]["intrinsic"]["fx"] == 2262.52


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png").unlink(),
     "aachen_000000_000019_gtFine_labelIds.png does not exist"),
    (lambda r: write_png(r / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
                         np.zeros((8, 15), np.uint8)),
     "label size 15x8 does not match the image size 16x8"),
    (lambda r: write_png(r / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
                         np.full((8, 16), 40, np.uint8)),
     r"values \[40\] are not Cityscapes label ids"),
    (lambda r: write_png(r / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
                         np.zeros((8, 16, 3), np.uint8)),
     "expected a single-channel 8-bit label-id PNG"),
    (lambda r: (r / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
     .write_bytes(b"\x89PNG not really"), "unreadable image"),
    (lambda r: write_json(r / "camera/train/aachen/aachen_000000_000019_camera.json", "{fx: 1"),
     "aachen_000000_000019_camera.json: bad JSON"),
    (lambda r: write_json(r / "camera/train/aachen/aachen_000000_000019_camera.json",
                          {"extrinsic": CAMERA["extrinsic"],
                           "intrinsic": {"fx": 1.0, "fy": 1.0, "u0": 1.0}}),
     "missing key 'intrinsic.v0'"),
    (lambda r: write_json(r / "camera/train/aachen/aachen_000000_000019_camera.json",
                          {"intrinsic": CAMERA["intrinsic"]}), "missing 'extrinsic' object"),
    (lambda r: write_json(r / "camera/train/aachen/aachen_000000_000019_camera.json",
                          {"extrinsic": dict(CAMERA["extrinsic"], pitch="0.04"),
                           "intrinsic": CAMERA["intrinsic"]}),
     "'extrinsic.pitch' must be a finite number"),
    (lambda r: write_json(r / "vehicle/train/aachen/aachen_000000_000019_vehicle.json",
                          {k: v for k, v in VEHICLE.items() if k != "yawRate"}),
     "missing key.*yawRate"),
    (lambda r: [p.unlink() for p in (r / "camera/train/aachen").glob("aachen_000000_*")],
     "no aachen_000000_000019_camera.json .*looked in"),
    (lambda r: (r / "leftImg8bit_sequence/train/aachen/aachen_000000_000020_leftImg8bit.png")
     .unlink(), "aachen_000000_000020_leftImg8bit.png does not exist: the neighbour"),
])
def test_bad_files_raise_errors_naming_them(tmp_path, damage, message):
    make_tree(tmp_path)
    damage(tmp_path)
    ds = CityscapesFrames(tmp_path, "train")
    with pytest.raises(CityscapesError, match=message):
        ds[0]
    ds[2]  # other frames are still readable


def test_bad_layouts(tmp_path):
    with pytest.raises(CityscapesError, match="leftImg8bit/train is not a folder"):
        CityscapesFrames(tmp_path, "train")
    make_tree(tmp_path)
    with pytest.raises(CityscapesError, match="splits under .*: train"):
        CityscapesFrames(tmp_path, "val")
    with pytest.raises(CityscapesError, match="no \\*_leftImg8bit.png frames"):
        CityscapesFrames(tmp_path, "train", {"cities": ["zurich"]})
    write_png(tmp_path / "leftImg8bit/train/aachen/aachen_19_leftImg8bit.png", frame_bgr(0))
    with pytest.raises(CityscapesError, match="aachen_19_leftImg8bit.png: not a Cityscapes frame"):
        CityscapesFrames(tmp_path, "train")


@pytest.mark.skipif(not PSEUDO.is_dir(), reason="../shared/data/cityscapes_pseudo not present")
def test_reader_opens_the_real_format_fixture():
    ds = CityscapesFrames(PSEUDO, "val")
    assert ds.frames == ["frankfurt_000000_000294"]
    sample = ds[0]
    assert sample["image"].shape == (128, 256, 3) and sample["label_ids"].shape == (128, 256)
    assert sample["camera"] is None and sample["vehicle"] is None and sample["neighbour"] is None
    road = sample["label_ids"] == 7
    assert road.any() and (sample["labels"]["groups4"][road] == FLAT).all()
