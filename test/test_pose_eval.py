"""superseg-eval --poses: the pose and epipolar metrics on constructed geometry, the readers on
fixtures in the exact on-disk layouts (KITTI sequence as prepared by SfMLearner, SuperGlue's
ScanNet pair list), and the CLI end to end on frames ray-traced from known camera poses."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from superseg_ros.evaluation import poses as P
from superseg_ros.evaluation.cli import main
from superseg_ros.evaluation.datasets import DatasetError

SHAPE = (160, 240)
K = np.array([[200.0, 0, 119.5], [0, 200.0, 79.5], [0, 0, 1]])


def rotation(yaw_deg=0.0, pitch_deg=0.0):
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    yaw = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    pitch = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return yaw @ pitch


def rigid(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


# camera-to-world poses of a camera driving forward and turning a little (KITTI-like)
C2W = [rigid(rotation(3.0 * i, 0.5 * i), [0.3 * i, 0.0, 0.5 * i]) for i in range(4)]


def project(T_cam_from_world, points):
    cam = points @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:]


def scene_points(n=200, seed=0):
    """3D points in front of the first camera at 4-12 m depth (a non-planar cloud)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(4, 12, n)
    x = rng.uniform(-0.5, 0.5, n) * z
    y = rng.uniform(-0.3, 0.3, n) * z
    return np.stack([x, y, z], 1)


# --- geometry against constructed cases ----------------------------------------------------------


def test_true_correspondences_lie_on_their_epipolar_lines():
    points = scene_points()
    T_ab = np.linalg.inv(C2W[2]) @ C2W[0]
    a, b = project(np.eye(4), points), project(T_ab, points)
    matches = np.stack([np.arange(len(a))] * 2, 1)
    F = P.fundamental_matrix(K, K, T_ab)
    assert np.abs(P.epipolar_errors(a, b, matches, F)).max() < 1e-8
    # the other direction of the same motion is a different geometry
    F_wrong = P.fundamental_matrix(K, K, np.linalg.inv(T_ab))
    assert np.median(P.epipolar_errors(a, b, matches, F_wrong)) > 1.0


def test_epipolar_error_of_a_known_offset():
    """Camera B moved sideways along x: epipolar lines are the image rows, so a match off by
    dy px in y is dy px from its line in both images, and any x offset costs nothing."""
    T_ab = rigid(np.eye(3), [-1.0, 0, 0])
    a = np.array([[50.0, 40], [100, 80], [10, 150]])
    b = a + np.array([[7.0, 0], [-3, 2], [30, -0.5]])
    matches = np.stack([np.arange(3)] * 2, 1)
    errors = P.epipolar_errors(a, b, matches, P.fundamental_matrix(K, K, T_ab))
    assert np.allclose(errors, [0, 2, 0.5])


def test_pose_error_angles():
    T = rigid(rotation(10.0), [0, 0, 2.0])
    assert np.allclose(P.pose_error(T, (rotation(10.0), np.array([0, 0, 1.0]))), (0, 0),
                       atol=1e-6)
    # the sign of t is not fixed by an essential matrix; the angle ignores it
    assert np.allclose(P.pose_error(T, (rotation(10.0), np.array([0, 0, -1.0]))), (0, 0),
                       atol=1e-6)
    r, t = P.pose_error(T, (np.eye(3), np.array([1.0, 0, 1.0]) / np.sqrt(2)))
    assert r == pytest.approx(10.0) and t == pytest.approx(45.0)
    assert P.pose_error(T, None) == (float("inf"), float("inf"))
    # no true translation: the direction is undefined and not counted
    assert P.pose_error(rigid(np.eye(3), [0, 0, 0]), (np.eye(3), np.array([1.0, 0, 0]))) \
        == (0.0, 0.0)


def test_relative_pose_from_exact_correspondences_and_its_direction():
    points = scene_points()
    T_ab = np.linalg.inv(C2W[3]) @ C2W[0]
    a, b = project(np.eye(4), points), project(T_ab, points)
    matches = np.stack([np.arange(len(a))] * 2, 1)
    assert max(P.pose_error(T_ab, P.estimate_relative_pose(a, b, matches, K, K))) < 1e-3
    # another draw may keep a model that every point supports within 1 px but that is a
    # little off (OpenCV does not refine RANSAC's model; SuperGlue's protocol neither)
    for seed in ([0, 1], [0, 2]):
        estimate = P.estimate_relative_pose(a, b, matches, K, K, 1.0, seed)
        assert max(P.pose_error(T_ab, estimate)) < 0.5
    estimate = P.estimate_relative_pose(a, b, matches, K, K)
    assert max(P.pose_error(np.linalg.inv(T_ab), estimate)) > 5.0  # B to A is another motion
    assert P.estimate_relative_pose(a, b, matches[:4], K, K) is None


def test_summary_counts_failures_as_wrong_and_averages_the_draws():
    results = [{"keypoints": 10, "matches": 6, "rotation_error": 1.0, "translation_error": 2.0,
                "pose_errors": np.array([2.0, 12.0]), "epipolar_precision@1px": 0.5,
                "epipolar_precision@3px": 1.0},
               {"keypoints": 20, "matches": 0, "rotation_error": np.inf,
                "translation_error": np.inf, "pose_errors": np.array([np.inf, np.inf]),
                "epipolar_precision@1px": 0.0, "epipolar_precision@3px": 0.0}]
    s = P.summarize_poses(results)
    assert s["pairs"] == 2 and s["keypoints"] == 15 and s["matches"] == 3
    assert s["pose_accuracy@5deg"] == pytest.approx(0.25)    # draw 0: 1/2, draw 1: 0/2
    assert s["pose_accuracy@20deg"] == pytest.approx(0.5)
    # draw 0: one of two pairs at 2 deg -> (area of the recall curve up to 5) / 5
    auc_draw0 = (2 * 0.5 / 2 + 3 * 0.5) / 5   # triangle to (2, 0.5), then flat to 5
    assert s["pose_auc@5deg"] == pytest.approx(auc_draw0 / 2)
    assert s["pose_failures"] == 1.0 and s["epipolar_precision@1px"] == 0.25


# --- fixtures in the on-disk layouts -------------------------------------------------------------


def cards(n=150, seed=0):
    """(n, 5) fronto-parallel square cards x, y (centre), z, half size, texture offset: depth
    everywhere (a plane alone would leave the essential matrix two-fold ambiguous)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(3.0, 10.0, n)
    return np.stack([rng.uniform(-0.7, 0.9, n) * z, rng.uniform(-0.5, 0.5, n) * z, z,
                     rng.uniform(0.15, 0.5, n), rng.uniform(0, 6, n)], 1)


def ray_traced_frame(c2w, texture):
    """The frame camera `c2w` sees of `cards()` before a wall z = 12, textured by `texture` at
    60 px per metre: exact geometry (nearest hit per pixel), bilinear texture."""
    h, w = SHAPE
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    depth = (12.0 - origin[2]) / rays[..., 2]
    tex_xy = (origin + rays * depth[..., None])[..., :2]
    for x, y, z, half, offset in cards():
        s = (z - origin[2]) / rays[..., 2]
        hit = origin + rays * s[..., None]
        inside = (np.abs(hit[..., 0] - x) <= half) & (np.abs(hit[..., 1] - y) <= half) \
            & (s < depth)
        depth = np.where(inside, s, depth)
        tex_xy = np.where(inside[..., None], hit[..., :2] - [x, y] + offset, tex_xy)
    th, tw = texture.shape[:2]
    map_x = (tex_xy[..., 0] * 60 + tw / 2).astype(np.float32)
    map_y = (tex_xy[..., 1] * 60 + th / 2).astype(np.float32)
    return cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def random_texture(height=480, width=720, seed=3):
    """Random filled shapes over smooth noise: corners everywhere, none repeated."""
    rng = np.random.default_rng(seed)
    noise = cv2.resize(rng.uniform(60, 200, (height // 16, width // 16, 3)), (width, height))
    texture = noise.astype(np.uint8)
    for _ in range(400):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(3, 14))
        if rng.random() < 0.5:
            cv2.circle(texture, (x, y), r, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(texture, (x, y), (x + 2 * r, y + r), colour, -1)
    return cv2.GaussianBlur(texture, (3, 3), 0.7)


def write_kitti_sequence(folder: Path) -> Path:
    folder.mkdir(parents=True)
    texture = random_texture()
    for i, c2w in enumerate(C2W):
        frame = ray_traced_frame(c2w, texture)
        cv2.imwrite(str(folder / f"{i:010d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    np.savetxt(folder / "cam.txt", K)
    np.savetxt(folder / "poses.txt", np.array([c[:3].ravel() for c in C2W]), fmt="%.9e")
    return folder


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    return write_kitti_sequence(tmp_path_factory.mktemp("poses") / "kitti_raw_0001")


def write_split(path: Path, heldout: list[Path]) -> Path:
    path.write_text(json.dumps({"cover_hw": [192, 256], "train": [], "heldout": [
        {"source": str(p), "file": f"heldout/{p.name}", "size_hw": list(SHAPE)}
        for p in heldout]}))
    return path


def write_pair_list(folder: Path, kitti: Path) -> Path:
    """SuperGlue's ScanNet format: `image0 image1 rot0 rot1 K0 K1 T_0to1` per line."""
    folder.mkdir()
    lines = []
    for i, j in ((0, 2), (1, 3)):
        names = [f"scene0000_00_frame-{k:06d}.jpg" for k in (i, j)]
        for k, name in zip((i, j), names):
            (folder / name).write_bytes((kitti / f"{k:010d}.jpg").read_bytes())
        T = np.linalg.inv(C2W[j]) @ C2W[i]
        lines.append(" ".join(names + ["0", "0"] + [f"{v:.9g}" for v in
                                                    [*K.ravel(), *K.ravel(), *T.ravel()]]))
    (folder / "scannet_sample_pairs_with_gt.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_sequence_reader_pairs_frames_by_gap_with_relative_poses(kitti, tmp_path):
    pairs = P.posed_pairs(kitti, gaps=(1, 2))
    assert len(pairs) == 3 + 2
    assert [it[5] for it in pairs.items][:3] == ["0000000000-0000000001", "0000000001-"
                                                 "0000000002", "0000000002-0000000003"]
    pair = pairs[3]  # frames 0 and 2
    assert np.allclose(pair.T_ab, np.linalg.inv(C2W[2]) @ C2W[0], atol=1e-8)
    assert np.allclose(pair.K_a, K) and pair.image_a.shape == (*SHAPE, 3)
    # only pairs whose two frames are held out
    split = write_split(tmp_path / "split.json", [kitti / "0000000001.jpg",
                                                  kitti / "0000000002.jpg",
                                                  kitti / "0000000003.jpg"])
    kept = P.posed_pairs(kitti, gaps=(1, 2), heldout=split)
    assert [it[5] for it in kept.items] == ["0000000001-0000000002", "0000000002-0000000003",
                                            "0000000001-0000000003"]
    assert kept.description["pairs_listed"] == 5 and kept.description["pairs"] == 3
    # a resize carries the intrinsics with it: the true geometry still holds
    small = P.posed_pairs(kitti, heldout=split, max_side=120)[0]
    assert small.image_a.shape[:2] == (80, 120)
    assert np.allclose(small.K_a[0], [100, 0, 59.5])


def test_pair_list_reader(kitti, tmp_path):
    folder = write_pair_list(tmp_path / "scannet_pairs", kitti)
    pairs = P.posed_pairs(folder)
    assert len(pairs) == 2 and pairs.description["layout"] == "pair list"
    assert np.allclose(pairs[1].T_ab, np.linalg.inv(C2W[3]) @ C2W[1], atol=1e-6)
    assert np.allclose(pairs[1].K_b, K)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n"),
     "1 poses for 4 images"),
    (lambda d: (d / "poses.txt").write_text("1 0 0 0\n" * 4), "expected 12 numbers a line"),
    (lambda d: (d / "poses.txt").write_text("2 0 0 0 0 1 0 0 0 0 1 0\n" * 4),
     "line 1: its rotation is not a rotation matrix"),
    (lambda d: (d / "cam.txt").write_text("0 0 1\n0 1 1\n0 0 1\n"), "not intrinsics"),
    (lambda d: (d / "cam.txt").unlink(), "cam.txt: cannot read"),
])
def test_sequence_errors_name_the_file(kitti, tmp_path, damage, message):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in kitti.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    damage(folder)
    with pytest.raises(DatasetError, match=message):
        P.posed_pairs(folder)


@pytest.mark.parametrize("line, message", [
    ("a.jpg b.jpg 0 0 1 2 3", "line 1: expected 38 fields"),
    ("a.jpg b.jpg 1 0" + " 0" * 34, "rotated images"),
    ("a.jpg missing.jpg 0 0" + " 1 0 0 0 1 0 0 0 1" * 2 + " 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1",
     "no image"),
])
def test_pair_list_errors_name_the_line(tmp_path, line, message):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"")
    (tmp_path / "pairs.txt").write_text(line + "\n")
    with pytest.raises(DatasetError, match=message):
        P.posed_pairs(tmp_path)


# --- the CLI end to end --------------------------------------------------------------------------


def test_cli_end_to_end_on_ray_traced_frames(kitti, tmp_path, capsys):
    """SIFT recovers the known motion of the ray-traced frames (only if the poses, intrinsics
    and conventions are read right); every output file is written."""
    out = tmp_path / "eval"
    split = write_split(tmp_path / "split.json", sorted(kitti.glob("*.jpg")))
    code = main(["--model", "random", "--poses", str(kitti), "--gaps", "1,2", "--heldout",
                 str(split), "--baselines", "sift", "--ablations", "subpixel",
                 "--max-keypoints", "300", "--ransac-draws", "3", "--output", str(out),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "AUC@5" in captured.out and "RANDOM WEIGHTS" in captured.err
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["summaries"]) == {"superseg", "superseg-no-subpixel", "sift"}
    sift = record["summaries"]["sift"]
    assert sift["pairs"] == 5 and sift["pose_failures"] == 0
    # the same matches measured against the reverse motion are all > 5 deg off; corners where
    # a card occludes another are no 3D points, so many matches are off their epipolar lines
    assert sift["pose_accuracy@5deg"] >= 0.8 and sift["epipolar_precision@3px"] > 0.4
    assert all(0 <= s["keypoints"] <= 300 for s in record["summaries"].values())
    assert all(len(row["pose_errors"]) == 3 for row in record["pairs"]["sift"])
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["gaps"] == [1, 2] and config["ransac"]["draws"] == 3
    assert "| sift |" in (out / "metrics.md").read_text()
    assert len(list((out / "overlays").glob("*.png"))) == 9
    pytest.importorskip("matplotlib")
    assert (out / "plots" / "pose_accuracy.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--gaps", "0"], "--gaps 0: expected frame gaps >= 1"),
    (["--gaps", "9"], "no pairs"),
    (["--heldout", "SPLIT"], "no pairs with both images held out"),
    (["--heldout", "MISSING"], "not a split.json"),
    (["--resize", "8"], "--resize 8"),
    (["--baselines", "surf"], "--baselines: unknown surf"),
])
def test_cli_bad_input_exits_2_with_what_to_fix(kitti, tmp_path, capsys, args, message):
    split = write_split(tmp_path / "split.json", [kitti / "0000000000.jpg"])
    args = [a.replace("SPLIT", str(split)).replace("MISSING", str(tmp_path / "missing.json"))
            for a in args]
    code = main(["--model", "random", "--poses", str(kitti), *args, "--output",
                 str(tmp_path / "out")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
