"""Post-processing: NMS, top-K, pixel convention, padding, sampling, stability filtering.

Where a test needs a known heatmap, `ImageAsHeatmap` is a SuperSegmentation whose forward returns
its input image as the heatmap (and chosen descriptors/segmentation): everything from
preprocessing to the returned keypoints is the real code.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from superseg_ros import postprocess as pp
from superseg_ros.extractor import UNKNOWN, Extractor, SemanticHeadUntrained
from superseg_ros.semantics import DYNAMIC, STATIC

from conftest import BUILDING, CAR, ImageAsHeatmap

def image_with_peaks(h, w, peaks):
    img = np.zeros((h, w), np.float32)
    for x, y, v in peaks:
        img[y, x] = v
    return img


def brute_force_nms(heat, radius):
    h, w = heat.shape
    keep = np.zeros_like(heat, dtype=bool)
    for y in range(h):
        for x in range(w):
            window = heat[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
            keep[y, x] = heat[y, x] >= window.max()
    return keep


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_nms_matches_brute_force_on_random_heatmaps(radius, rng):
    heat = rng.random((2, 37, 53)).astype(np.float32)
    got = pp.nms_peaks(torch.from_numpy(heat), radius).numpy()
    for b in range(2):
        np.testing.assert_array_equal(got[b], brute_force_nms(heat[b], radius))


def test_top_k_is_sorted_and_padded_with_a_validity_mask(rng):
    heat = torch.from_numpy(rng.random((2, 40, 40)).astype(np.float32))
    peaks = pp.nms_peaks(heat, 2)
    peaks[1] &= heat[1] > 0.99  # second image: only a few peaks
    xy, scores, index, valid = pp.top_k_peaks(heat, peaks, 50)
    assert valid[0].all() and valid[1].sum() == peaks[1].sum() < 50
    for b in range(2):
        expected = heat[b][peaks[b]].sort(descending=True).values[:50]
        assert torch.equal(scores[b][valid[b]], expected)
        x, y = xy[b][valid[b]].long().T
        assert torch.equal(heat[b, y, x], expected)
    assert (scores[1][~valid[1]] == 0).all()
    _, _, _, valid_all = pp.top_k_peaks(heat, peaks, 0)  # k <= 0 keeps every peak
    assert valid_all.shape[1] == int(peaks[0].sum())


@pytest.mark.parametrize("h,w,x,y", [(61, 83, 82, 60), (61, 83, 40, 30), (64, 88, 87, 63),
                                     (33, 17, 0, 0)])
def test_a_heatmap_peak_at_xy_comes_out_at_xy(h, w, x, y):
    """Also at the right/bottom edge of an image whose size is not a multiple of 8: padding
    (replicated at the right and bottom) must neither shift nor duplicate the peak."""
    extractor = Extractor(ImageAsHeatmap(), {"remove_borders": 0, "subpixel": False,
                                             "semantic_filter": "off"})
    out = extractor(image_with_peaks(h, w, [(x, y, 0.9)])).unbatch()[0]
    np.testing.assert_array_equal(out["keypoints"], [[x, y]])
    assert out["scores"][0] == pytest.approx(0.9)


def test_subpixel_offset_moves_the_peak_and_stays_inside_the_image():
    extractor = Extractor(ImageAsHeatmap(offset=(0.25, -0.4)), {"remove_borders": 0,
                                                                 "semantic_filter": "off"})
    out = extractor(image_with_peaks(61, 83, [(40, 30, 0.9), (10, 0, 0.8)])).unbatch()[0]
    np.testing.assert_allclose(out["keypoints"], [[40.25, 29.6], [10.25, 0.0]], atol=1e-6)


def test_border_removal_and_threshold():
    extractor = Extractor(ImageAsHeatmap(), {"remove_borders": 4, "detection_threshold": 0.5,
                                             "semantic_filter": "off", "subpixel": False})
    img = image_with_peaks(40, 50, [(3, 20, 0.9), (25, 4, 0.8), (45, 35, 0.7), (46, 10, 0.9),
                                    (25, 25, 0.4), (20, 36, 0.95)])
    out = extractor(img).unbatch()[0]
    np.testing.assert_array_equal(out["keypoints"], [[25, 4], [45, 35]])


def test_padding_round_trip(rng):
    image = torch.from_numpy(rng.random((2, 3, 61, 83)).astype(np.float32))
    padded = pp.pad_to_multiple(image, 8)
    assert padded.shape[-2:] == (64, 88)
    assert torch.equal(padded[..., :61, :83], image)
    extractor = Extractor(ImageAsHeatmap(), {"semantic_filter": "off"})
    rgb = (rng.random((61, 83, 3)) * 255).astype(np.uint8)
    batch, sizes = extractor.preprocess(rgb)
    assert batch.shape == (1, 3, 64, 88) and sizes.tolist() == [[61, 83]]
    assert torch.equal(batch[0, :, :61, :83], torch.from_numpy(rgb).permute(2, 0, 1) / 255.0)


def test_descriptor_at_a_cell_centre_is_that_cells_dense_descriptor(rng):
    dense = F.normalize(torch.from_numpy(rng.standard_normal((1, 32, 5, 7)).astype(np.float32)),
                        dim=1)
    i, j = np.meshgrid(np.arange(5), np.arange(7), indexing="ij")
    centres = torch.from_numpy(np.stack([8 * j + 3.5, 8 * i + 3.5], -1).reshape(1, -1, 2)).float()
    sampled = pp.sample_bilinear(dense, centres, 8)
    torch.testing.assert_close(sampled[0], dense[0].flatten(1).T, rtol=0, atol=0)

    # end to end: an NMS peak at (8j + 3, 8i + 3) moved by (0.5, 0.5) to the exact cell centre
    model = ImageAsHeatmap(offset=(0.5, 0.5))
    extractor = Extractor(model, {"semantic_filter": "off", "remove_borders": 0})
    out = extractor(image_with_peaks(40, 56, [(8 * 2 + 3, 8 * 1 + 3, 0.9)]))
    batch, _ = extractor.preprocess(image_with_peaks(40, 56, []))
    expected = model(batch)["descriptors"][0, :, 1, 2]
    np.testing.assert_allclose(out.keypoints[0, 0].numpy(), [19.5, 11.5])
    torch.testing.assert_close(out.descriptors[0, 0], expected, rtol=0, atol=1e-6)


def test_descriptors_between_centres_are_unit_norm(rng):
    dense = F.normalize(torch.from_numpy(rng.standard_normal((2, 16, 4, 6)).astype(np.float32)),
                        dim=1)
    xy = torch.from_numpy(rng.uniform(-3, 50, (2, 30, 2)).astype(np.float32))
    sampled = F.normalize(pp.sample_bilinear(dense, xy, 8), dim=-1)
    torch.testing.assert_close(sampled.norm(dim=-1), torch.ones(2, 30))


PEAKS = [(10, 20, 0.9), (20, 30, 0.8), (60, 20, 0.7), (70, 35, 0.6)]  # two left, two right


def run_stability(keep_unstable=False, stable_groups=None, semantic_filter="auto"):
    conf = {"keep_unstable": keep_unstable, "semantic_filter": semantic_filter}
    if stable_groups:
        conf["stable_groups"] = stable_groups
    extractor = Extractor(ImageAsHeatmap(class_left=CAR, class_right=BUILDING), conf)
    return extractor(image_with_peaks(48, 80, PEAKS)).unbatch()[0]


def test_keypoints_on_dynamic_regions_are_dropped():
    out = run_stability()
    np.testing.assert_array_equal(out["keypoints"], [[60, 20], [70, 35]])
    assert out["stable"].all() and (out["labels"] == BUILDING).all()
    assert (out["groups"] == STATIC).all()
    mask = out["stability_mask"]
    assert mask.shape == (48, 80) and not mask[:, :36].any() and mask[:, 44:].all()
    assert (out["group_map"][:, :36] == DYNAMIC).all()
    np.testing.assert_array_equal(out["rejected_keypoints"], [[10, 20], [20, 30]])


def test_a_keypoint_is_judged_where_it_is_published_after_refinement():
    """The filter reads the mask at each keypoint's refined position: a peak on the car that
    refinement moves onto the building is kept (published on the building), a peak on the
    building moved onto the car is dropped. Without refinement each peak stays where it is."""
    peaks = [(32, 20, 0.9), (48, 30, 0.8)]  # car for x < 36, building for x >= 44
    for offset, kept in (((13.0, 0.0), [[45, 20], [61, 30]]), ((-13.0, 0.0), []),
                         (None, [[48, 30]])):
        model = ImageAsHeatmap(offset=offset or (13.0, 0.0), class_left=CAR,
                               class_right=BUILDING)
        extractor = Extractor(model, {"remove_borders": 0, "subpixel": offset is not None})
        out = extractor(image_with_peaks(48, 80, peaks)).unbatch()[0]
        np.testing.assert_array_equal(out["keypoints"], np.reshape(kept, (-1, 2)))
        assert out["stable"].all()
    extractor = Extractor(ImageAsHeatmap(offset=(-13.0, 0.0), class_left=CAR,
                                         class_right=BUILDING),
                          {"remove_borders": 0, "keep_unstable": True})
    out = extractor(image_with_peaks(48, 80, peaks)).unbatch()[0]
    np.testing.assert_array_equal(out["stable"], [False, False])


def test_refined_peaks_are_judged_by_brute_force_bilinear_reads(rng):
    """Each peak reads the values bilinearly where its offsets move it (edges repeated), and is
    judged against the threshold there; pixels that are not peaks are never judged stable."""
    values = torch.from_numpy(rng.random((2, 9, 13)).astype(np.float32))
    offsets = torch.from_numpy(rng.uniform(-3, 3, (2, 2, 9, 13)).astype(np.float32))
    peaks = torch.from_numpy(rng.random((2, 9, 13)) < 0.5)
    got = pp.refined_peaks_where(values, offsets, peaks, 0.5).numpy()
    v, o = values.numpy(), offsets.numpy()
    for b in range(2):
        for y in range(9):
            for x in range(13):
                u = np.clip(x + o[b, 0, y, x], 0, 12)
                t = np.clip(y + o[b, 1, y, x], 0, 8)
                u0, t0 = int(np.floor(u)), int(np.floor(t))
                u1, t1 = min(u0 + 1, 12), min(t0 + 1, 8)
                fu, ft = u - u0, t - t0
                want = ((v[b, t0, u0] * (1 - fu) + v[b, t0, u1] * fu) * (1 - ft)
                        + (v[b, t1, u0] * (1 - fu) + v[b, t1, u1] * fu) * ft)
                read = pp.sample_bilinear(values[b, None, None],
                                          torch.tensor([[[x + o[b, 0, y, x],
                                                          y + o[b, 1, y, x]]]]), 1)
                assert read.item() == pytest.approx(want, abs=1e-5)
                if abs(want - 0.5) > 1e-5:
                    assert got[b, y, x] == (bool(peaks[b, y, x]) and want >= 0.5)
    no_move = pp.refined_peaks_where(values, torch.zeros_like(offsets), torch.ones_like(peaks),
                                     0.5)
    torch.testing.assert_close(no_move, values >= 0.5, rtol=0, atol=0)


def test_keep_unstable_flags_instead_of_dropping():
    out = run_stability(keep_unstable=True)
    assert len(out["keypoints"]) == 4
    np.testing.assert_array_equal(out["stable"], [False, False, True, True])
    np.testing.assert_array_equal(out["labels"], [CAR, CAR, BUILDING, BUILDING])
    np.testing.assert_array_equal(out["groups"], [DYNAMIC, DYNAMIC, STATIC, STATIC])


def test_stable_groups_are_configurable():
    out = run_stability(stable_groups=["dynamic_object"])
    np.testing.assert_array_equal(out["keypoints"], [[10, 20], [20, 30]])


def test_semantic_filter_off_keeps_everything_and_says_so():
    out = run_stability(semantic_filter="off")
    assert len(out["keypoints"]) == 4 and out["stable"].all()
    assert (out["labels"] == UNKNOWN).all() and "stability_mask" not in out


def test_untrained_semantic_head_is_refused_unless_forced():
    model = ImageAsHeatmap(class_left=CAR)
    model.trained_heads["semantic"] = False
    with pytest.raises(SemanticHeadUntrained, match="never trained"):
        Extractor(model, {"semantic_filter": "on"})
    auto = Extractor(model, {"semantic_filter": "auto"})
    assert not auto.semantic_active and "untrained" in auto.semantic_note
    forced = Extractor(model, {"semantic_filter": "on", "force_semantic": True})
    assert forced.semantic_active and "FORCED" in forced.semantic_note


def test_batches_of_different_sizes_are_padded_with_a_validity_mask():
    extractor = Extractor(ImageAsHeatmap(), {"semantic_filter": "off", "subpixel": False})
    big = image_with_peaks(48, 80, PEAKS)
    small = image_with_peaks(30, 40, [(12, 15, 0.5)])
    features = extractor([big, small])
    assert features.keypoints.shape[:2] == (2, 4)
    assert features.valid.sum(1).tolist() == [4, 1]
    assert (features.keypoints[1, 1:] == 0).all() and (features.descriptors[1, 1:] == 0).all()
    small_alone = extractor(small).unbatch()[0]
    np.testing.assert_array_equal(features.unbatch()[1]["keypoints"], small_alone["keypoints"])


def test_bad_images_give_clear_errors():
    extractor = Extractor(ImageAsHeatmap(), {"semantic_filter": "off"})
    with pytest.raises(ValueError, match="empty"):
        extractor(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        extractor(np.full((16, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="HxW or HxWx3"):
        extractor(np.zeros((16, 16, 4), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        extractor(np.zeros((16, 16), np.int64))


def test_real_network_end_to_end(tiny_model, rng):
    image = (rng.random((61, 83, 3)) * 255).astype(np.uint8)
    extractor = Extractor(tiny_model, {"max_keypoints": 50, "detection_threshold": 0.0})
    out = extractor(image).unbatch()[0]
    assert out["keypoints"].shape == (50, 2) and out["descriptors"].shape == (50, 32)
    assert (out["keypoints"] >= 0).all() and (out["keypoints"][:, 0] <= 82).all()
    np.testing.assert_allclose(np.linalg.norm(out["descriptors"], axis=1), 1, atol=1e-5)
    assert np.all(np.diff(out["scores"]) <= 0)
