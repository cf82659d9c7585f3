"""Homographic adaptation: geometry of the aggregation, validity masks, labels, files and CLI."""

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from superseg_ros.checkpoint import save_checkpoint
from superseg_ros.config import ConfigError
from superseg_ros.network import SuperSegmentation
from superseg_ros.postprocess import pad_to_multiple
from superseg_ros.training import adaptation as A
from superseg_ros.training.adapt_cli import main

from conftest import TINY

FAST = {"num_homographies": 3, "batch_size": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP threads waiting for
    each other make every small convolution slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class HarrisDetector(nn.Module):
    """A fixed corner detector standing in for a trained network: Harris response of the grey
    image mapped to [0, 1). Its convolutions zero-pad, so the image border is a step and the
    image corners (and every warped copy's corners) respond like real corners: the distractors
    that the validity masks must remove."""

    config = {"input_channels": 3}

    def __init__(self):
        super().__init__()
        sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
        self.register_buffer("kernels", torch.stack([sobel, sobel.T])[:, None])

    def forward(self, image, semantics=True):
        g = F.conv2d(image.mean(1, keepdim=True), self.kernels, padding=1)
        gx, gy = g[:, :1], g[:, 1:]
        t = F.avg_pool2d(torch.cat([gx * gx, gy * gy, gx * gy], 1), 3, 1, 1)
        r = (t[:, 0] * t[:, 1] - t[:, 2] ** 2 - 0.05 * (t[:, 0] + t[:, 1]) ** 2).clamp(min=0)
        return {"heatmap": r / (r + 0.05)}


class ChannelZero(nn.Module):
    """Heatmap = the input's first channel: adaptation must then give back the image."""

    config = {"input_channels": 3}

    def forward(self, image, semantics=True):
        return {"heatmap": image[:, 0]}


def squares(height=92, width=124):
    """Grey image (not a multiple of 8: exercises padding) with three bright squares; returns
    (RGB uint8, (12, 2) corners). A square filling pixels x0..x0+s-1 has its geometric corners on
    the pixel edges, at x0 - 0.5 and x0 + s - 0.5."""
    image = np.full((height, width), 128, np.uint8)
    corners = []
    for x0, y0, s in ((20, 16, 18), (70, 30, 22), (40, 56, 16)):
        image[y0:y0 + s, x0:x0 + s] = 255
        corners += [(x, y) for y in (y0 - 0.5, y0 + s - 0.5) for x in (x0 - 0.5, x0 + s - 0.5)]
    return np.repeat(image[..., None], 3, 2), np.array(corners)


def near_edge(keypoints, shape, distance):
    h, w = shape
    return ((keypoints < distance) | (keypoints > np.array([w - 1, h - 1]) - distance)).any(1)


def test_recovers_square_corners_and_nothing_from_image_or_warp_edges():
    image, corners = squares()
    config = {"num_homographies": 20}
    result = A.adapt_image(HarrisDetector(), image, config, np.random.default_rng(0))
    kp = result["keypoints"]
    dist = np.linalg.norm(kp[:, None] - corners[None], axis=-1)
    # Harris peaks about 0.5 px (per axis) inside an L corner; adaptation must not add to that.
    assert dist.min(0).max() < 1.0, "a square corner was missed"
    assert (dist.min(1) < 1.0).all(), f"spurious labels at {kp[dist.min(1) >= 1.0]}"
    assert len(kp) == len(corners)
    assert not near_edge(kp, image.shape[:2], 4).any()
    assert result["counts"].max() == 20 and result["counts"].min() >= 1

    # The same run without eroding each copy's valid region: the copies' own corners (where
    # the zero padding meets the image) come back as labels in the middle of the image.
    unmasked = A.adapt_image(HarrisDetector(), image, dict(config, valid_border_margin=0),
                             np.random.default_rng(0))["keypoints"]
    far = np.linalg.norm(unmasked[:, None] - corners[None], axis=-1).min(1) > 2
    assert (far & ~near_edge(unmasked, image.shape[:2], 4)).sum() >= 3
    # ... and without `border` the original image's own corners/edges give labels too.
    no_border = A.adapt_image(HarrisDetector(), image, dict(config, valid_border_margin=0,
                                                            border=0),
                              np.random.default_rng(0))["keypoints"]
    assert near_edge(no_border, image.shape[:2], 4).sum() >= 2


def test_views_are_warped_back_to_the_original_frame():
    # A smooth image through a heatmap-equals-image "detector": the mean of the views must be the
    # image again (up to two bilinear resamplings); a wrong warp direction would smear it.
    ys, xs = np.mgrid[0:64, 0:80]
    image = 0.5 + 0.4 * np.sin(xs / 9.0) * np.cos(ys / 7.0)
    tensor = torch.from_numpy(np.repeat(image[None], 3, 0)).float()
    heat, counts = A.aggregate_heatmap(ChannelZero(), tensor, dict(FAST, num_homographies=6),
                                       np.random.default_rng(1))
    seen_by_all = counts.numpy() == 6
    assert seen_by_all.sum() > 500
    assert np.abs(heat.numpy() - image)[seen_by_all].max() < 0.02


def test_identity_only_is_the_plain_model_heatmap(tiny_model):
    image = torch.rand(3, 30, 38, generator=torch.Generator().manual_seed(0))  # padded to 32x40
    heat, counts = A.aggregate_heatmap(tiny_model, image, {"num_homographies": 1})
    with torch.inference_mode():
        plain = tiny_model(pad_to_multiple(image[None]), semantics=False)["heatmap"][0, :30, :38]
    assert torch.equal(heat, plain)
    assert torch.equal(counts, torch.ones(30, 38))


def test_max_aggregation_bounds_the_mean(tiny_model):
    image = torch.rand(3, 32, 40, generator=torch.Generator().manual_seed(0))
    mean, _ = A.aggregate_heatmap(tiny_model, image, FAST, np.random.default_rng(0))
    top, _ = A.aggregate_heatmap(tiny_model, image, dict(FAST, aggregation="max"),
                                 np.random.default_rng(0))
    assert (top >= mean - 1e-6).all() and (top > mean + 1e-4).any()


def test_same_seed_same_heatmap_whatever_the_batch_size(tiny_model):
    image = torch.rand(3, 32, 40, generator=torch.Generator().manual_seed(0))
    runs = [A.aggregate_heatmap(tiny_model, image, dict(num_homographies=5, batch_size=b),
                                np.random.default_rng(7))[0] for b in (1, 2, 2)]
    torch.testing.assert_close(runs[0], runs[1])
    assert torch.equal(runs[1], runs[2])
    other = A.aggregate_heatmap(tiny_model, image, dict(num_homographies=5),
                                np.random.default_rng(8))[0]
    assert not torch.allclose(other, runs[1])


def test_pseudo_labels_nms_threshold_topk_and_subpixel():
    heat = torch.zeros(40, 50)
    heat[10, 20], heat[10, 21], heat[10, 19] = 0.9, 0.6, 0.3  # parabola vertex at +1/6 px in x
    heat[12, 22] = 0.5          # within the NMS radius of the stronger peak
    heat[30, 40] = 0.2
    heat[20, 2] = 0.8           # inside the border
    heat[25, 10] = 0.01         # below the threshold
    counts = torch.ones_like(heat)
    kp, scores = A.pseudo_labels(heat, counts, {"border": 4})
    np.testing.assert_allclose(kp, [[20 + 1 / 6, 10], [40, 30]], atol=1e-5)
    np.testing.assert_allclose(scores, [0.9, 0.2])
    kp, _ = A.pseudo_labels(heat, counts, {"border": 4, "max_keypoints": 1,
                                           "subpixel_refine": False})
    assert kp.tolist() == [[20.0, 10.0]]
    counts[10, 20] = 0           # never seen: no label there (NMS still ran on the heatmap)
    assert A.pseudo_labels(heat, counts, {"border": 4})[0].tolist() == [[40.0, 30.0]]


def test_labels_are_in_original_pixels_when_resized():
    small, _ = squares(48, 64)
    big = cv2.resize(small, (128, 96), interpolation=cv2.INTER_NEAREST)  # exactly 2x
    config = {"num_homographies": 4}
    a = A.adapt_image(HarrisDetector(), small, config, np.random.default_rng(3))
    b = A.adapt_image(HarrisDetector(), big, dict(config, resize=[48, 64]),
                      np.random.default_rng(3))
    assert len(a["keypoints"]) == 4 and b["image_size"] == (96, 128)
    # x_big = (x_small + 0.5) * 2 - 0.5 (pixel-centre convention)
    np.testing.assert_allclose(b["keypoints"], (a["keypoints"] + 0.5) * 2 - 0.5, atol=1e-4)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="num_homograhpies"):
        A.adaptation_config({"num_homograhpies": 5})
    with pytest.raises(ConfigError, match="rotation"):
        A.adaptation_config({"homography": {"rotation": 5}})
    with pytest.raises(ConfigError, match="aggregation"):
        A.adaptation_config({"aggregation": "sum"})
    with pytest.raises(ConfigError, match="scale"):
        A.adaptation_config({"homography": {"scale": [1.2, 0.8]}})


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("train2014/b.jpg", "train2014/a.png", "c.ppm", "sub/deep/d.bmp"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), rng.integers(0, 256, (30, 38, 3), dtype=np.uint8))
    (root / "broken.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("ignored")
    return root


def npz_bytes(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.npz"))}


def test_folder_labels_summary_resume_and_failures(tmp_path, folder, tiny_model, capsys):
    out = tmp_path / "labels"
    summary = A.adapt_folder(tiny_model, folder, out, FAST, progress=False, preview=2)
    files = npz_bytes(out)
    assert sorted(files) == ["c.npz", "sub/deep/d.npz", "train2014/a.npz", "train2014/b.npz"]
    labels = A.read_pseudo_labels(out / "train2014/b.npz")
    assert labels["image_size"] == (30, 38) and labels["source"] == "train2014/b.jpg"
    assert labels["keypoints"].dtype == np.float32 and labels["keypoints"].shape[1] == 2
    assert len(list((out / "previews").rglob("*.png"))) == 2
    assert summary["images"] == 5 and summary["labelled"] == 4 and summary["failed"] == 1
    assert summary["failures"][0].startswith("broken.png")
    assert "broken.png" in capsys.readouterr().err
    assert json.loads((out / "adaptation.json").read_text()) == summary
    assert summary["config"]["num_homographies"] == 3 and summary["seed"] == 0

    # resume: finished files are kept, a missing one is redone identically (per-image seeds)
    (out / "c.npz").unlink()
    (out / "train2014/a.npz").write_bytes(b"truncated")
    again = A.adapt_folder(tiny_model, folder, out, FAST, progress=False, preview=0)
    assert again["skipped_existing"] == 2 and again["labelled"] == 2
    assert npz_bytes(out) == files
    # a fresh run elsewhere gives byte-identical labels; overwrite relabels everything
    assert npz_bytes(out) == npz_bytes(_run(tiny_model, folder, tmp_path / "fresh"))
    assert A.adapt_folder(tiny_model, folder, out, FAST, progress=False, preview=0,
                          overwrite=True)["labelled"] == 4
    assert A.adapt_folder(tiny_model, folder, out, dict(FAST, seed=1), progress=False,
                          preview=0, overwrite=True)["labelled"] == 4
    assert npz_bytes(out) != files


def _run(model, folder, out):
    A.adapt_folder(model, folder, out, FAST, progress=False, preview=0)
    return out


def test_output_inside_the_image_folder_is_not_read_back(folder, tiny_model):
    out = folder / "labels"
    A.adapt_folder(tiny_model, folder, out, FAST, progress=False, preview=4)
    again = A.adapt_folder(tiny_model, folder, out, FAST, progress=False)
    assert again["images"] == 5 and again["skipped_existing"] == 4  # previews not counted


def test_read_pseudo_labels_names_the_file(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"junk")
    with pytest.raises(A.PseudoLabelError, match="x.npz"):
        A.read_pseudo_labels(bad)
    np.savez(bad, keypoints=np.zeros((2, 3), np.float32), scores=np.zeros(2, np.float32),
             image_size=np.array([4, 4], np.int32), source=np.array("a.png"))
    with pytest.raises(A.PseudoLabelError, match=r"x.npz: keypoints must be \(N, 2\)"):
        A.read_pseudo_labels(bad)
    np.savez(bad, keypoints=np.zeros((2, 2), np.float32))
    with pytest.raises(A.PseudoLabelError, match="missing scores"):
        A.read_pseudo_labels(bad)


@pytest.fixture
def checkpoint(tmp_path, tiny_model):
    return save_checkpoint(tiny_model, tmp_path / "tiny.pt", meta={"stage": "magicpoint"})


def cli(*args):
    return main([str(a) for a in args])


def test_cli_config_block_and_overrides(tmp_path, folder, checkpoint, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("model: {encoder: vgg}\nadaptation:\n  num_homographies: 2\n"
                      "  homography: {rotation_deg: 10.0}\n")
    out = tmp_path / "out"
    assert cli("--model", checkpoint, "--images", folder, "--output", out, "--config", config,
               "--set", "batch_size=1", "--set", "homography.perspective=0.05",
               "--device", "cpu", "--preview", "1") == 1  # broken.png
    summary = json.loads((out / "adaptation.json").read_text())
    assert summary["config"]["num_homographies"] == 2 and summary["config"]["batch_size"] == 1
    assert summary["config"]["homography"]["rotation_deg"] == 10.0
    assert summary["config"]["homography"]["perspective"] == 0.05
    assert summary["model_meta"] == {"stage": "magicpoint"} and "tiny.pt" in summary["model"]
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err


@pytest.mark.parametrize("case, message", [
    ("bad_key", "num_homograhpies"), ("missing_folder", "does not exist"),
    ("corrupt_checkpoint", "not a readable checkpoint"), ("bad_set", "KEY=VALUE")])
def test_cli_errors_exit_2_with_one_line(tmp_path, folder, checkpoint, capsys, case, message):
    args = {"--model": checkpoint, "--images": folder, "--output": tmp_path / "o"}
    extra = []
    if case == "bad_key":
        extra = ["--set", "num_homograhpies=5"]
    elif case == "missing_folder":
        args["--images"] = tmp_path / "nowhere"
    elif case == "corrupt_checkpoint":
        args["--model"] = tmp_path / "corrupt.pt"
        args["--model"].write_bytes(b"\x00garbage")
    else:
        extra = ["--set", "num_homographies"]
    assert cli(*[x for kv in args.items() for x in kv], *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_random_model_warns_loudly(tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((24, 32, 3), np.uint8))
    assert cli("--model", "random", "--images", images, "--output", tmp_path / "o",
               "--set", "num_homographies=1", "--device", "cpu") == 0
    assert "MEANINGLESS" in capsys.readouterr().err


def test_grey_input_network_and_grey_images():
    torch.manual_seed(0)
    grey_net = SuperSegmentation(dict(TINY, input_channels=1)).eval()
    rgb = torch.rand(3, 32, 40, generator=torch.Generator().manual_seed(0))
    heat, _ = A.aggregate_heatmap(grey_net, rgb, {"num_homographies": 1})
    with torch.inference_mode():
        plain = grey_net(rgb.mean(0, keepdim=True)[None], semantics=False)["heatmap"][0]
    assert torch.equal(heat, plain)
    grey_image = (rgb[0].numpy() * 255).astype(np.uint8)  # (H, W) into a 3-channel network
    result = A.adapt_image(ChannelZero(), grey_image, {"num_homographies": 1, "border": 0,
                                                       "subpixel_refine": False})
    np.testing.assert_allclose(result["heatmap"], grey_image / 255.0, atol=1e-6)
