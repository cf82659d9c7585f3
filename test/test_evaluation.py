"""superseg-eval: metrics on hand-computed cases, dataset readers on fixtures in the exact on-disk
layouts, baselines, and the CLI end to end on generated pairs (no real data needed)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from superseg_ros.demo import render_scene
from superseg_ros.evaluation import metrics as M
from superseg_ros.evaluation.baselines import (Method, check_features, make_orb, make_sift,
                                               make_superseg)
from superseg_ros.evaluation.cli import main
from superseg_ros.evaluation.datasets import DatasetError, generated_pairs, hpatches_pairs
from superseg_ros.evaluation.report import draw_matches, format_table
from superseg_ros.homography import (points_inside, sample_homography, scaling_matrix,
                                     warp_image, warp_points)

SHAPE = (100, 120)


def translation(tx, ty=0.0):
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])


def grid_points(step=10, margin=15, shape=SHAPE):
    ys, xs = np.mgrid[margin:shape[0] - margin:step, margin:shape[1] - margin:step]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)


def distinct_descriptors(n, dim=32, seed=0):
    d = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


# --- detector metrics ----------------------------------------------------------------------------


def test_identity_gives_repeatability_one_and_no_localisation_error():
    kp = grid_points()
    for eps in (1, 3):
        assert M.repeatability(kp, kp, np.eye(3), SHAPE, SHAPE, eps) == 1.0
    assert M.localization_error(kp, kp, np.eye(3), SHAPE, SHAPE) == 0.0


def test_half_pixel_shift_gives_half_pixel_error():
    kp = grid_points()
    h = translation(0.5)
    assert M.repeatability(kp, kp, h, SHAPE, SHAPE, 1.0) == 1.0
    assert M.localization_error(kp, kp, h, SHAPE, SHAPE) == pytest.approx(0.5)
    assert M.repeatability(kp, kp, h, SHAPE, SHAPE, 0.4) == 0.0


def test_repeatability_counts_only_the_shared_region():
    kp_a = np.array([[10.0, 10], [50, 50], [200, 50]])   # the last one warps outside B
    kp_b = np.array([[10.5, 10], [52, 50], [90, 90]])    # (52, 50) is 2 px off; (90, 90) alone
    shape_a, shape_b = (100, 300), SHAPE
    # shared: 2 of A, 3 of B. eps=1: a0<->b0 only -> (1 + 1) / 5; eps=3: (2 + 2) / 5
    assert M.repeatability(kp_a, kp_b, np.eye(3), shape_a, shape_b, 1) == pytest.approx(2 / 5)
    assert M.repeatability(kp_a, kp_b, np.eye(3), shape_a, shape_b, 3) == pytest.approx(4 / 5)
    # repeated within 3 px: 0.5 and 2 from each side -> mean 1.25
    assert M.localization_error(kp_a, kp_b, np.eye(3), shape_a, shape_b) == pytest.approx(1.25)
    assert np.isnan(M.repeatability(np.zeros((0, 2)), np.zeros((0, 2)), np.eye(3), SHAPE, SHAPE))


# --- homography estimation -----------------------------------------------------------------------


def test_perfect_correspondences_give_zero_corner_error():
    h = sample_homography(np.random.default_rng(1), *SHAPE, perspective=0.2, rotation_deg=30)
    kp_a = grid_points()
    kp_a = kp_a[points_inside(warp_points(h, kp_a), SHAPE)]  # B's keypoints lie inside B
    desc = distinct_descriptors(len(kp_a))
    feat_a = {"keypoints": kp_a, "descriptors": desc}
    feat_b = {"keypoints": warp_points(h, kp_a), "descriptors": desc}
    result = M.evaluate_pair(feat_a, feat_b, h, SHAPE, SHAPE)
    assert result["matches"] == len(kp_a)
    assert result["corner_error"] < 1e-4  # OpenCV solves in float precision
    summary = M.summarize([result, result])
    for eps in (1, 3, 5):
        assert summary[f"homography_accuracy@{eps}px"] == 1.0
        assert summary[f"homography_auc@{eps}px"] > 0.999
    assert summary["repeatability@1px"] == 1.0 and summary["localization_error"] < 1e-9
    assert summary["nn_map"] == 1.0 and summary["mma"]["1"] == 1.0


def noisy_pair(seed=0, noise_px=1.5, outliers=0.4):
    """Keypoints of a real-looking pair: B's are A's warped by H plus `noise_px` Gaussian noise,
    and a share `outliers` of the matches point to random keypoints of B."""
    rng = np.random.default_rng(seed)
    h = sample_homography(rng, *SHAPE, perspective=0.1, rotation_deg=10)
    kp_a = grid_points(step=6, margin=12)
    kp_a = kp_a[points_inside(warp_points(h, kp_a), SHAPE)]
    kp_b = warp_points(h, kp_a) + rng.normal(0, noise_px, kp_a.shape)
    matches = np.stack([np.arange(len(kp_a)), np.arange(len(kp_a))], 1)
    wrong = rng.random(len(kp_a)) < outliers
    matches[wrong, 1] = rng.integers(0, len(kp_a), wrong.sum())
    return kp_a, kp_b, matches, h


def test_ransac_draws_are_seeded_shuffles_of_the_matches():
    kp_a, kp_b, matches, h = noisy_pair()
    errors = M.corner_errors(kp_a, kp_b, matches, h, SHAPE, seed=3, draws=8)
    assert errors.shape == (8,)
    np.testing.assert_array_equal(errors, M.corner_errors(kp_a, kp_b, matches, h, SHAPE, 3, 8))
    # draw 0 is the single call on the matches as given (SuperPoint's protocol) ...
    assert errors[0] == M.corner_error(M.estimate_homography(kp_a, kp_b, matches), h, SHAPE)
    # ... draw k the same call on the matches shuffled by default_rng([seed, k])
    order = np.random.default_rng([3, 5]).permutation(len(matches))
    assert errors[5] == M.corner_error(M.estimate_homography(kp_a, kp_b, matches[order]), h,
                                       SHAPE)
    # on noisy matches the draws disagree, which is why one draw is a noisy yardstick
    assert len(np.unique(errors)) > 1


def test_summary_averages_the_draws():
    """Oracle: H@e and AUC@e of a summary over several draws equal the mean over draws of each
    draw's own summary (brute force: one summary per draw index)."""
    results = []
    for seed in range(4):
        kp_a, kp_b, matches, h = noisy_pair(seed, noise_px=1.0 + seed / 2)
        results.append({"corner_errors": M.corner_errors(kp_a, kp_b, matches, h, SHAPE, seed, 6),
                        "keypoints": len(kp_a), "localization_error": 0.0, "nn_map": 1.0,
                        "matching_score": 1.0, "matches": len(matches),
                        "mma": np.ones(len(M.CURVE_PX)), "repeatability@1px": 1.0,
                        "repeatability@3px": 1.0})
    results[0]["corner_errors"][2] = np.inf  # a failed draw counts as wrong
    summary = M.summarize(results)
    per_draw = [M.summarize([dict(r, corner_errors=r["corner_errors"][k:k + 1])
                             for r in results]) for k in range(6)]
    for eps in M.HOMOGRAPHY_PX:
        for key in (f"homography_accuracy@{eps:g}px", f"homography_auc@{eps:g}px"):
            assert summary[key] == pytest.approx(np.mean([s[key] for s in per_draw]))
    assert summary["homography_failures"] == pytest.approx(1 / 6)


def test_corner_error_of_a_known_offset():
    # estimate off by a 3-4-5 translation: every corner is 5 px away
    assert M.corner_error(translation(3, 4), np.eye(3), SHAPE) == pytest.approx(5.0)
    assert M.corner_error(None, np.eye(3), SHAPE) == np.inf
    assert M.estimate_homography(np.zeros((3, 2)), np.zeros((3, 2)), [[0, 0]] * 3) is None


def test_auc_and_accuracy_against_hand_computation():
    # sorted errors 0.5, 2, 4 with recall 1/3, 2/3, 1; curve from (0, 0), trapezoids:
    # t=1: [0.5 * (0 + 1/3) / 2 + 0.5 * 1/3] / 1                       = 0.25
    # t=3: [1/12 + 1.5 * (1/3 + 2/3) / 2 + 1 * 2/3] / 3 = 1.5 / 3         = 0.5
    # t=5: [1/12 + 3/4 + 2 * (2/3 + 1) / 2 + 1 * 1] / 5 = 3.5 / 5         = 0.7
    np.testing.assert_allclose(M.error_auc([4, 0.5, 2], (1, 3, 5)), [0.25, 0.5, 0.7])
    # a failed pair (inf) scales the recall by 3/4 everywhere
    np.testing.assert_allclose(M.error_auc([0.5, 2, 4, np.inf], (1, 3, 5)),
                               [0.1875, 0.375, 0.525])
    errors = [0.5, 2, 4, np.inf]
    assert [M.homography_accuracy(errors, e) for e in (1, 3, 5)] == [0.25, 0.5, 0.75]


# --- descriptors ---------------------------------------------------------------------------------


def test_descriptor_distances_l2_and_hamming():
    a = np.array([[0xFF, 0x00]], np.uint8)
    b = np.array([[0x0F, 0x00], [0xFF, 0x01]], np.uint8)
    np.testing.assert_array_equal(M.descriptor_distances(a, b, binary=True), [[4, 1]])
    np.testing.assert_allclose(M.descriptor_distances([[0, 0]], [[3, 4], [0, 1]]), [[5, 1]])


def test_mutual_nearest_neighbours():
    dist = np.array([[0.0, 1.0], [0.5, 2.0], [3.0, 0.1]])
    np.testing.assert_array_equal(M.mutual_nn_matches(dist), [[0, 0], [2, 1]])
    assert M.mutual_nn_matches(np.zeros((0, 3))).shape == (0, 2)


def test_nn_map_perfect_and_shuffled():
    kp = grid_points()
    desc = distinct_descriptors(len(kp))
    h = np.eye(3)
    assert M.nn_map(kp, kp, desc, desc, h, SHAPE, SHAPE) == 1.0
    shuffled = np.roll(desc, 1, axis=0)   # every B descriptor now belongs to another point
    assert M.nn_map(kp, kp, desc, shuffled, h, SHAPE, SHAPE) < 0.2
    half = desc.copy()
    half[::2] = shuffled[::2]
    assert 0.2 < M.nn_map(kp, kp, desc, half, h, SHAPE, SHAPE) < 1.0


def test_nn_average_precision_hand_computed():
    # three queries; NN distances 0.1 (correct), 0.2 (wrong), 0.3 (correct); query 3 has no
    # ground truth and is ignored. AP = (1/1 + 2/3) / 3 = 5/9
    desc = np.array([[0.1, 0.9, 0.9], [0.9, 0.9, 0.2], [0.9, 0.3, 0.9], [0.0, 0.5, 0.5]])
    corr = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]], bool)
    assert M.nn_average_precision(desc, corr) == pytest.approx(5 / 9)


def test_matching_score_on_a_constructed_case():
    kp_a = np.array([[10.0, 10], [30, 30], [50, 40], [60, 80]])   # (60, 80) is outside B
    kp_b = np.array([[10.5, 10], [31, 30], [90, 40], [100, 20]])
    matches = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])           # 2 correct, 2 wrong
    # shared: 3 of A, 4 of B -> MS = (2/3 + 2/4) / 2 = 7/12
    ms = M.matching_score(kp_a, kp_b, matches, np.eye(3), (100, 120), (50, 120))
    assert ms == pytest.approx(7 / 12)


def test_mma_on_constructed_errors():
    kp_a = np.array([[10.0, 10], [20, 20], [30, 30], [40, 40]])
    kp_b = kp_a + [[2.5, 0], [2.5, 1.5], [2.5, 2.5], [2.5, -12]]  # after H: 0, 1.5, 2.5, 12 px
    matches = np.stack([np.arange(4)] * 2, 1)
    errors = M.reprojection_errors(kp_a, kp_b, matches, translation(2.5))
    np.testing.assert_allclose(errors, [0.0, 1.5, 2.5, 12.0])
    mma = M.mean_matching_accuracy(errors, (1, 2, 3, 10, 12))
    np.testing.assert_allclose(mma, [0.25, 0.5, 0.75, 0.75, 1.0])
    np.testing.assert_array_equal(M.mean_matching_accuracy([], (1, 2)), [0, 0])


# --- datasets ------------------------------------------------------------------------------------


def write_sequence(folder: Path, naming: str, n_images=3, seed=0, shape=(90, 120)):
    """A sequence in the exact on-disk layout: ppm images (cv2, BGR on disk) + text H files."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ref = render_scene(*shape, seed=seed)  # RGB
    image_name = {"hpatches": "{k}.ppm", "oxford": "img{k}.ppm"}[naming]
    h_name = {"hpatches": "H_1_{k}", "oxford": "H1to{k}p"}[naming]
    cv2.imwrite(str(folder / image_name.format(k=1)), cv2.cvtColor(ref, cv2.COLOR_RGB2BGR))
    hs = {}
    for k in range(2, n_images + 1):
        h = sample_homography(rng, *shape, perspective=0.1)
        hs[k] = h
        cv2.imwrite(str(folder / image_name.format(k=k)),
                    cv2.cvtColor(warp_image(ref, h), cv2.COLOR_RGB2BGR))
        # HPatches writes rows of space-separated numbers
        (folder / h_name.format(k=k)).write_text(
            "\n".join("  ".join(f"{v:.10e}" for v in row) for row in h) + "\n")
    return ref, hs


@pytest.fixture
def hpatches_root(tmp_path):
    root = tmp_path / "hpatches"
    ref_i, hs_i = write_sequence(root / "i_fixture", "hpatches", n_images=3, seed=1)
    ref_v, hs_v = write_sequence(root / "v_oxford", "oxford", n_images=2, seed=2)
    (root / "not_a_sequence").mkdir()
    return root, {"i_fixture": (ref_i, hs_i), "v_oxford": (ref_v, hs_v)}


def test_hpatches_reader_both_namings(hpatches_root):
    root, truth = hpatches_root
    data = hpatches_pairs(root)
    pairs = list(data)
    assert len(data) == 3 and [p.name for p in pairs] == ["i_fixture/1-2", "i_fixture/1-3",
                                                          "v_oxford/img1-img2"]
    assert [p.group for p in pairs] == ["i", "i", "v"]
    assert data.description["groups"] == {"i": 2, "v": 1}
    ref, hs = truth["i_fixture"]
    assert np.array_equal(pairs[0].image_a, ref)  # ppm is lossless; channels back to RGB
    np.testing.assert_allclose(pairs[1].H, hs[3], rtol=1e-9)
    np.testing.assert_allclose(pairs[2].H, truth["v_oxford"][1][2], rtol=1e-9)
    single = hpatches_pairs(root / "v_oxford")  # a sequence folder on its own
    assert len(single) == 1


def test_hpatches_resize_rescales_H_consistently(hpatches_root):
    root, truth = hpatches_root
    pair = hpatches_pairs(root, max_side=60)[0]
    assert pair.image_a.shape == (45, 60, 3)
    s = scaling_matrix(0.5)
    np.testing.assert_allclose(pair.H, s @ truth["i_fixture"][1][2] @ np.linalg.inv(s))
    # end to end: warping the resized A with the rescaled H reproduces the resized B
    rewarped = warp_image(pair.image_a, pair.H).astype(np.float32)
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(rewarped[inner] - pair.image_b[inner]).mean() < 6


def test_hpatches_sequence_with_images_of_different_sizes(tmp_path):
    """Real HPatches sequences hold images of different sizes (e.g. v_bird: 1 is 600x800, 2 is
    593x800): H maps image 1's pixels into image k's own frame, and a resize to a fixed size
    rescales H by each image's own factors."""
    folder = tmp_path / "v_sizes"
    folder.mkdir()
    ref = render_scene(90, 120, seed=5)
    H = np.array([[1.05, 0.02, 3.0], [-0.01, 0.98, 4.0], [1e-5, 2e-5, 1.0]])
    other = cv2.warpPerspective(ref, H, (150, 110), flags=cv2.INTER_LINEAR)  # 110x150
    cv2.imwrite(str(folder / "1.ppm"), cv2.cvtColor(ref, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "2.ppm"), cv2.cvtColor(other, cv2.COLOR_RGB2BGR))
    (folder / "H_1_2").write_text("\n".join(" ".join(f"{v:.10e}" for v in row) for row in H))
    pair = hpatches_pairs(folder)[0]
    assert pair.image_a.shape == (90, 120, 3) and pair.image_b.shape == (110, 150, 3)
    np.testing.assert_allclose(pair.H, H, rtol=1e-9)
    sized = hpatches_pairs(folder, size=(48, 64))[0]
    assert sized.image_a.shape == sized.image_b.shape == (48, 64, 3)
    s_a, s_b = scaling_matrix(64 / 120, 48 / 90), scaling_matrix(64 / 150, 48 / 110)
    np.testing.assert_allclose(sized.H, s_b @ H @ np.linalg.inv(s_a), rtol=1e-9)
    # a point of image 1 lands at the same place of image 2 with either route
    corner = np.array([[60.0, 40.0]])
    np.testing.assert_allclose(warp_points(sized.H, warp_points(s_a, corner)),
                               warp_points(s_b, warp_points(H, corner)), atol=1e-9)
    # the metrics take pairs whose images differ in size
    kp = np.array([[30.0, 30.0], [60.0, 40.0], [90.0, 60.0], [20.0, 70.0], [100.0, 20.0]])
    feat_a = {"keypoints": kp, "descriptors": distinct_descriptors(len(kp))}
    feat_b = {"keypoints": warp_points(H, kp), "descriptors": feat_a["descriptors"]}
    result = M.evaluate_pair(feat_a, feat_b, pair.H, pair.image_a.shape[:2],
                             pair.image_b.shape[:2])
    assert result["repeatability@3px"] == 1.0 and result["localization_error"] < 1e-6
    with pytest.raises(DatasetError, match="not both"):
        hpatches_pairs(folder, max_side=50, size=(48, 64))


def test_hpatches_errors_name_the_file(tmp_path, hpatches_root):
    root, _ = hpatches_root
    (root / "i_fixture" / "H_1_3").unlink()
    with pytest.raises(DatasetError, match=r"i_fixture/H_1_3: missing homography"):
        hpatches_pairs(root)
    (root / "i_fixture" / "H_1_3").write_text("1 0 0\n0 1 0\n0 0\n")
    with pytest.raises(DatasetError, match=r"H_1_3: malformed homography: expected 9 numbers"):
        hpatches_pairs(root)
    (root / "i_fixture" / "H_1_3").write_text("1 0 0\n0 one 0\n0 0 1\n")
    with pytest.raises(DatasetError, match=r"H_1_3: malformed homography"):
        hpatches_pairs(root)
    (root / "i_fixture" / "3.ppm").unlink()
    with pytest.raises(DatasetError, match=r"H_1_3: homography file without its image"):
        hpatches_pairs(root)
    with pytest.raises(DatasetError, match="no HPatches sequences"):
        hpatches_pairs(tmp_path / "hpatches" / "not_a_sequence")
    with pytest.raises(DatasetError, match="no such folder"):
        hpatches_pairs(tmp_path / "missing")


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (h, w) in enumerate([(120, 160), (150, 200)]):
        cv2.imwrite(str(folder / f"scene{i}.png"), render_scene(h, w, seed=i))
    return folder


def test_generated_pairs_deterministic_per_seed(image_folder):
    first = list(generated_pairs(image_folder, 3, seed=7, size=100))
    again = list(generated_pairs(image_folder, 3, seed=7, size=100))
    other = list(generated_pairs(image_folder, 3, seed=8, size=100))
    for p, q in zip(first, again):
        assert np.array_equal(p.H, q.H) and np.array_equal(p.image_b, q.image_b)
    assert not np.allclose(first[0].H, other[0].H)
    assert max(first[0].image_a.shape) == 100
    assert np.array_equal(first[0].image_b, warp_image(first[0].image_a, first[0].H))
    # a pair does not depend on how many pairs are made
    assert np.array_equal(generated_pairs(image_folder, 1, seed=7, size=100)[0].H, first[0].H)
    data = generated_pairs(image_folder, 3, seed=7, homography_config={"rotation_deg": 10.0})
    assert data.description["seed"] == 7 and data.description["homography"]["rotation_deg"] == 10
    assert data.description["homography"]["scale"] == [0.8, 1.2]


# --- baselines and report ------------------------------------------------------------------------


def test_sift_coordinates_follow_the_pixel_centre_convention():
    ys, xs = np.mgrid[0:96, 0:96]
    x, y = 40.3, 50.7
    image = (255 - 200 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 18)).astype(np.uint8)
    out = make_sift().extract(np.dstack([image] * 3), 100)
    nearest = out["keypoints"][np.argmin(np.linalg.norm(out["keypoints"] - [x, y], axis=1))]
    np.testing.assert_allclose(nearest, [x, y], atol=0.1)
    assert out["descriptors"].dtype == np.float32 and not out["binary"]


def test_orb_is_binary_and_budgeted():
    image = render_scene(120, 160, seed=3)
    out = make_orb().extract(image, 50)
    assert out["binary"] and out["descriptors"].dtype == np.uint8
    assert 0 < len(out["keypoints"]) <= 50 and out["descriptors"].shape[1] == 32


def test_superseg_adapter_and_ablation_switch(tiny_model):
    image = render_scene(64, 96, seed=4)
    method = make_superseg(tiny_model, "tiny", max_keypoints=30,
                           extractor_config={"detection_threshold": 0.0})
    out = method.extract(image, 30)
    assert len(out["keypoints"]) == 30 and out["descriptors"].shape == (30, 32)
    grid = make_superseg(tiny_model, "tiny", subpixel=False, max_keypoints=30,
                         extractor_config={"detection_threshold": 0.0}).extract(image, 20)
    assert len(grid["keypoints"]) == 20
    assert np.array_equal(grid["keypoints"], np.round(grid["keypoints"]))
    assert method.info["semantic_filter"] == "off" and "untrained" in method.info["note"]


@pytest.mark.parametrize("budget", [5, 25, 200])
def test_keypoint_counts_respect_the_budget(tiny_model, budget):
    """Every method returns at most the budget; with the detection threshold at 0 the model
    fills it on a textured image (its NMS leaves far more than 200 peaks at 120x160)."""
    image = render_scene(120, 160, seed=6)
    methods = [make_sift(), make_orb(),
               make_superseg(tiny_model, "tiny", max_keypoints=budget),
               make_superseg(tiny_model, "tiny", name="filled", max_keypoints=budget,
                             extractor_config={"detection_threshold": 0.0})]
    counts = {m.name: len(m.extract(image, budget)["keypoints"]) for m in methods}
    assert all(0 < n <= budget for n in counts.values()), counts
    assert counts["filled"] == budget


def test_custom_methods_are_checked():
    bad = Method("bad", lambda im, k: {"keypoints": np.zeros((3, 2)),
                                       "descriptors": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="method bad: 3 keypoints but 2 descriptors"):
        bad.extract(np.zeros((8, 8, 3), np.uint8), 10)
    ok = check_features({"keypoints": [], "descriptors": np.zeros((0, 8))}, "empty")
    assert ok["keypoints"].shape == (0, 2) and ok["scores"].shape == (0,)


def test_table_and_overlay():
    kp = grid_points()
    feat_a = {"keypoints": kp, "descriptors": distinct_descriptors(len(kp))}
    feat_b = {"keypoints": kp, "descriptors": distinct_descriptors(len(kp), seed=1)}
    result = M.evaluate_pair(feat_a, feat_b, np.eye(3), SHAPE, SHAPE)
    table = format_table({"a-method": M.summarize([result]), "b": M.summarize([])})
    lines = table.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1  # aligned
    image = render_scene(*SHAPE)
    canvas = draw_matches(image, image, kp, kp, [[0, 0], [1, 2]], [0.5, 10.0], "t | x")
    assert canvas.shape[1] == 2 * SHAPE[1] and canvas.shape[0] > SHAPE[0]


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_end_to_end_on_generated_pairs(tmp_path, image_folder, capsys):
    out = tmp_path / "eval"
    code = main(["--model", "random", "--images", str(image_folder), "--pairs", "2",
                 "--resize", "160", "--baselines", "sift,orb", "--ablations", "subpixel",
                 "--max-keypoints", "200", "--output", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "RANDOM WEIGHTS" in captured.err
    for name in ("superseg", "superseg-no-subpixel", "sift", "orb"):
        assert name in captured.out
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["summaries"]) == {"superseg", "superseg-no-subpixel", "sift", "orb"}
    for summary in record["summaries"].values():
        assert summary["pairs"] == 2 and 0 <= summary["keypoints"] <= 200
        assert set(summary["mma"]) == {str(t) for t in range(1, 11)}
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["max_keypoints"] == 200
    assert config["dataset"]["homography"]["rotation_deg"] == 25.0
    assert config["resolution"]["max_side"] == 160 and "RANDOM" in config["model"]
    assert "| superseg |" in (out / "metrics.md").read_text()
    assert len(list((out / "overlays").glob("*.png"))) == 8
    pytest.importorskip("matplotlib")
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
        "homography_accuracy.png", "localization_error.png", "mma.png"]


@pytest.mark.parametrize("args, message", [
    (["--images", "MISSING"], "no such image folder"),
    (["--images", "IMAGES", "--baselines", "surf"], "--baselines: unknown surf"),
    (["--images", "IMAGES", "--homography", "spin=3"], "unknown homography key 'spin'"),
    (["--images", "IMAGES", "--pairs", "0"], "--pairs 0"),
    (["--images", "IMAGES", "--ransac-draws", "0"], "--ransac-draws 0: must be >= 1"),
    (["--segmentation", "IMAGES", "--dataset", "camvid", "--ransac-draws", "3"],
     "--ransac-draws: only with --hpatches or --images"),
    (["--hpatches", "IMAGES", "--pairs", "3"], "--pairs: only with --images"),
    (["--hpatches", "IMAGES", "--homography", "rotation_deg=5"],
     "--homography: only with --images"),
    (["--images", "IMAGES", "--size", "48", "64"], "--size: only with --hpatches"),
    (["--poses", "IMAGES", "--size", "48", "64"], "--size: only with --hpatches"),
    (["--images", "IMAGES", "--gaps", "2"], "--gaps: only with --poses"),
    (["--hpatches", "IMAGES", "--heldout", "split.json"], "--heldout: only with --poses"),
    (["--poses", "IMAGES", "--dataset", "camvid"], "--dataset: only with --segmentation"),
    (["--poses", "IMAGES"], "no posed pairs found"),
    (["--hpatches", "IMAGES", "--size", "8", "64"], "both sides must be >= 16"),
    (["--hpatches", "IMAGES", "--size", "48", "64", "--resize", "60"], "give one"),
    (["--segmentation", "IMAGES", "--dataset", "camvid", "--semantic-filter", "off"],
     "--segmentation always measures the filter"),
    (["--images", "IMAGES", "--model", "MISSING.pt"], "no such checkpoint file"),
    (["--images", "IMAGES", "--extractor", "detection_treshold=0.1"],
     "did you mean 'detection_threshold'"),
    (["--images", "IMAGES", "--extractor", "threshold"], "expected KEY=VALUE"),
    (["--images", "IMAGES", "--extractor", "max_keypoints=5"], "use --max-keypoints"),
    (["--images", "IMAGES", "--extractor", "detection_threshold=1.5"],
     "detection_threshold must be within [0, 1]"),
    (["--segmentation", "IMAGES", "--dataset", "camvid", "--extractor", "nms_radius=2"],
     "--extractor: only with --hpatches or --images"),
])
def test_cli_bad_input_exits_2_with_what_to_fix(tmp_path, image_folder, capsys, args, message):
    args = [a.replace("MISSING", str(tmp_path / "missing")).replace("IMAGES", str(image_folder))
            for a in args]
    if "--model" not in args:
        args += ["--model", "random"]
    assert main(args + ["--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_extractor_settings_reach_the_model(tmp_path, image_folder):
    """No NMS and no threshold: every pixel is a candidate, so the model fills its budget
    exactly, and the record says which settings were measured."""
    out = tmp_path / "eval"
    assert main(["--model", "random", "--images", str(image_folder), "--pairs", "2",
                 "--resize", "160", "--baselines", "none", "--max-keypoints", "150",
                 "--extractor", "detection_threshold=0", "--extractor", "nms_radius=0",
                 "--ransac-draws", "3", "--overlays", "0", "--output", str(out),
                 "--device", "cpu"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["summaries"]["superseg"]["keypoints"] == 150
    config = json.loads((out / "config.json").read_text())
    assert config["extractor"]["detection_threshold"] == 0
    assert config["extractor"]["nms_radius"] == 0
    assert config["ransac"]["draws"] == 3
    assert all(len(row["corner_errors"]) == 3 for row in record["pairs"]["superseg"])


def test_cli_without_a_dataset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "random"])
    assert exc.value.code == 2
    assert "--hpatches" in capsys.readouterr().err


def test_ablation_variants_follow_the_model(tiny_model):
    from conftest import ImageAsHeatmap
    from superseg_ros.evaluation.baselines import model_methods

    methods, notes = model_methods(tiny_model, "tiny", ("subpixel", "semantic"), max_keypoints=10)
    assert [m.name for m in methods] == ["superseg", "superseg-no-subpixel"]
    assert "semantic ablation skipped" in notes[0]
    methods, notes = model_methods(ImageAsHeatmap(), "trained", ("semantic",), max_keypoints=10)
    assert [(m.name, m.info["semantic_filter"]) for m in methods] == [
        ("superseg", "on"), ("superseg-no-semantic", "off")] and not notes
    # the detector as the base row (--semantic-filter off): the ablation turns the filter on
    methods, notes = model_methods(ImageAsHeatmap(), "trained", ("subpixel", "semantic"),
                                   semantic_filter="off", max_keypoints=10)
    assert [(m.name, m.info["semantic_filter"], m.info["subpixel"]) for m in methods] == [
        ("superseg", "off", True), ("superseg-no-subpixel", "off", False),
        ("superseg-with-semantic", "on", True)] and not notes


def test_plots_are_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    import sys

    from superseg_ros.evaluation.report import write_plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    files, note = write_plots(tmp_path, {}, {})
    assert files == [] and "matplotlib is not installed" in note
