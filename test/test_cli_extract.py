"""superseg-extract end to end on images written to disk, and its error exits."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from superseg_ros.checkpoint import bundled_model_path, save_checkpoint
from superseg_ros.cli.extract import main
from superseg_ros.demo import render_scene

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config" / "superseg.yaml"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), render_scene(120, 160, seed=1))
    cv2.imwrite(str(folder / "b.jpg"), render_scene(97, 130, seed=2))
    return folder


@pytest.fixture
def checkpoint(tmp_path, tiny_model):
    return save_checkpoint(tiny_model, tmp_path / "tiny.pt",
                           trained_heads={"detector": True, "descriptor": True,
                                          "semantic": False, "subpixel": True})


def test_folder_to_npz_and_overlays(tmp_path, images, checkpoint, capsys):
    out = tmp_path / "out"
    assert main(["--model", str(checkpoint), "--input", str(images), "--output", str(out),
                 "--max-keypoints", "40", "--threshold", "0", "--overlay"]) == 0
    assert "semantic head is untrained" in capsys.readouterr().err
    for stem, (h, w) in (("a", (120, 160)), ("b", (97, 130))):
        data = np.load(out / f"{stem}.npz")
        kp = data["keypoints"]
        assert kp.dtype == np.float32 and kp.shape == (40, 2)
        assert (kp[:, 0] <= w - 1).all() and (kp[:, 1] <= h - 1).all()
        assert data["descriptors"].shape == (40, 32) and data["descriptors"].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(data["descriptors"], axis=1), 1, atol=1e-5)
        assert data["labels"].dtype == np.uint8 and data["groups"].dtype == np.uint8
        assert data["stable"].dtype == bool and data["scores"].shape == (40,)
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"))
        assert overlay.shape == (h, w, 3)
        assert not (out / f"{stem}_mask.png").exists()  # semantic filter was off


def test_no_subpixel_gives_integer_positions(tmp_path, images, checkpoint):
    out = tmp_path / "out"
    assert main(["--model", str(checkpoint), "--input", str(images / "a.png"), "--output",
                 str(out), "--no-subpixel", "--threshold", "0"]) == 0
    kp = np.load(out / "a.npz")["keypoints"]
    assert len(kp) and np.array_equal(kp, np.round(kp))


def test_random_model_must_be_asked_for_and_is_labelled(tmp_path, images, capsys):
    if bundled_model_path() is None:
        assert main(["--input", str(images), "--output", str(tmp_path / "o")]) == 2
        assert "no bundled model" in capsys.readouterr().err
    assert main(["--model", "random", "--input", str(images / "a.png"), "--output",
                 str(tmp_path / "r"), "--max-keypoints", "10"]) == 0
    assert "RANDOM WEIGHTS" in str(np.load(tmp_path / "r" / "a.npz")["model"])


def test_errors_exit_nonzero_with_a_message(tmp_path, images, checkpoint, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    assert main(["--model", str(corrupt), "--input", str(images), "--output",
                 str(tmp_path / "o")]) == 2
    assert "corrupt.pt: not a readable checkpoint" in capsys.readouterr().err
    assert main(["--model", str(checkpoint), "--input", str(tmp_path / "missing"), "--output",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("superseg_node:\n  ros__parameters:\n    extractor:\n      max_keypoint: 5\n")
    assert main(["--model", str(checkpoint), "--input", str(images), "--output",
                 str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "unknown extractor key 'max_keypoint'" in capsys.readouterr().err


def test_one_unreadable_image_does_not_cost_the_others(tmp_path, images, checkpoint, capsys):
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["--model", str(checkpoint), "--input", str(images), "--output", str(out)]) == 1
    assert (out / "a.npz").exists() and (out / "b.npz").exists()
    assert "broken.png: cannot read" in capsys.readouterr().err


def test_shipped_config_file_is_valid(tmp_path, images, checkpoint):
    assert main(["--model", str(checkpoint), "--input", str(images / "a.png"), "--output",
                 str(tmp_path / "o"), "--config", str(SHIPPED_CONFIG)]) == 0


@pytest.fixture
def semantic_checkpoint(tmp_path, tiny_model):
    """The tiny random network saved as if its semantic head were trained (the filter runs)."""
    return save_checkpoint(tiny_model, tmp_path / "semantic.pt",
                           trained_heads={"detector": True, "descriptor": True,
                                          "semantic": True, "subpixel": True})


def test_dense_adds_input_resolution_maps(tmp_path, semantic_checkpoint, one_thread):
    image = tmp_path / "odd.png"
    cv2.imwrite(str(image), render_scene(45, 61, seed=3))  # not a multiple of 8 either way
    out = tmp_path / "out"
    assert main(["--model", str(semantic_checkpoint), "--input", str(image), "--output",
                 str(out), "--dense", "--max-keypoints", "20", "--threshold", "0"]) == 0
    data = np.load(out / "odd.npz")
    assert {"group_map", "stable_prob", "keypoints", "stable"} <= set(data.files)
    group_map, stable_prob = data["group_map"], data["stable_prob"]
    assert group_map.dtype == np.uint8 and group_map.shape == (45, 61)
    assert stable_prob.dtype == np.float16 and stable_prob.shape == (45, 61)
    assert set(np.unique(group_map)) <= {0, 1, 2, 3}
    assert np.isfinite(stable_prob).all() and 0 <= stable_prob.min() <= stable_prob.max() <= 1
    assert main(["--model", str(semantic_checkpoint), "--input", str(image), "--output",
                 str(tmp_path / "plain"), "--max-keypoints", "5"]) == 0
    assert "group_map" not in np.load(tmp_path / "plain" / "odd.npz").files  # only with --dense


def test_dense_without_the_semantic_filter_is_an_error(tmp_path, images, checkpoint,
                                                       semantic_checkpoint, capsys):
    out = tmp_path / "out"
    assert main(["--model", str(checkpoint), "--input", str(images), "--output", str(out),
                 "--dense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "semantic head was never trained" in err[0]
    assert "--dense" in err[0] and not out.exists()
    config = tmp_path / "off.yaml"
    config.write_text("superseg_node:\n  ros__parameters:\n    extractor:\n"
                      "      semantic_filter: 'off'\n")
    assert main(["--model", str(semantic_checkpoint), "--input", str(images), "--output",
                 str(out), "--dense", "--config", str(config)]) == 2
    assert "semantic_filter is off" in capsys.readouterr().err
