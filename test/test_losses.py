"""Training losses: hand-computed values, failure when they should fail, bounded memory."""

import math

import pytest
import torch
import torch.nn.functional as F

from superseg_ros.network import SuperSegmentation
from superseg_ros.training import losses

from conftest import TINY


def test_detector_loss_values():
    labels = torch.tensor([[[3, 64], [10, 64]]])
    perfect = F.one_hot(labels, 65).permute(0, 3, 1, 2).float() * 100
    assert losses.detector_loss(perfect, labels) < 1e-6
    uniform = torch.zeros(1, 65, 2, 2)
    assert losses.detector_loss(uniform, labels).item() == pytest.approx(math.log(65))
    valid = torch.tensor([[[True, False], [False, False]]])
    wrong = perfect.roll(1, dims=1)  # every cell wrong, but only one counts
    assert losses.detector_loss(wrong, labels, valid) == pytest.approx(
        F.cross_entropy(wrong[:, :, 0, 0], labels[:, 0, 0]).item())


def identity_pairs(b=2, h=64, w=96, max_points=40, seed=0):
    homography = torch.eye(3).expand(b, 3, 3).clone()
    generator = torch.Generator().manual_seed(seed)
    return losses.sample_correspondences(homography, (h, w), (h, w), max_points, generator)


def test_descriptor_loss_is_zero_for_perfect_distinct_descriptors_and_not_when_shuffled():
    torch.manual_seed(0)
    desc = F.normalize(torch.randn(2, 64, 8, 12), dim=1)
    xy_a, xy_b, valid = identity_pairs()
    assert valid.all()
    assert losses.descriptor_loss(desc, desc, xy_a, xy_b, valid, margin=0.5) == 0
    shuffled = desc.flatten(2)[:, :, torch.randperm(96)].reshape(2, 64, 8, 12)
    assert losses.descriptor_loss(desc, shuffled, xy_a, xy_b, valid, margin=0.5) > 0.3


def test_correspondences_follow_the_homography_and_leave_the_image():
    shift = torch.tensor([[1.0, 0, 40], [0, 1, 0], [0, 0, 1]])[None]
    xy_a, xy_b, valid = losses.sample_correspondences(shift, (64, 96), (64, 96), 10_000)
    torch.testing.assert_close(xy_b, xy_a + torch.tensor([40.0, 0]))
    assert torch.equal(valid, xy_b[..., 0] <= 95)
    assert 0 < valid.float().mean() < 1


def test_descriptor_loss_memory_does_not_grow_with_the_image():
    """The number of sampled correspondences, and so the N x N matrix, is capped."""
    for shape in ((240, 320), (480, 640)):
        eye = torch.eye(3)[None]
        xy_a, _, _ = losses.sample_correspondences(eye, shape, shape, 512)
        assert xy_a.shape == (1, 512, 2)


def test_subpixel_loss():
    offsets = torch.zeros(1, 2, 16, 16)
    offsets[0, :, 5, 7] = torch.tensor([0.25, -0.5])
    pixels = torch.tensor([[[7, 5], [1, 1]]])
    targets = torch.tensor([[[0.25, -0.5], [0.1, 0.2]]])
    valid = torch.tensor([[True, True]])
    assert losses.subpixel_loss(offsets, pixels, targets, valid).item() == pytest.approx(0.15)
    assert losses.subpixel_loss(offsets, pixels, targets, torch.tensor([[True, False]])) == 0


def test_segmentation_loss_ignores_the_ignore_label():
    labels = torch.full((1, 8, 8), 255)
    labels[0, :4] = 2
    logits = torch.zeros(1, 19, 2, 2)
    logits[0, 2] = 50  # confident and right wherever a label exists
    assert losses.segmentation_loss(logits, labels) < 1e-6


def test_median_frequency_weights_by_hand():
    # frequencies .5, .3, .2 (median .3) and a class with no pixels
    weights = losses.median_frequency_weights([50, 30, 20, 0], power=1.0)
    assert weights.tolist() == pytest.approx([0.6, 1.0, 1.5, 1.0])
    assert losses.median_frequency_weights([50, 30, 20, 0], power=0.5).tolist() == \
        pytest.approx([0.6 ** 0.5, 1.0, 1.5 ** 0.5, 1.0])
    assert losses.median_frequency_weights([50, 30, 20], power=0.0).tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="non-negative"):
        losses.median_frequency_weights([5, -1])


def test_weighted_segmentation_loss_is_the_weighted_mean_by_hand():
    # two labelled pixels: class 0 with p = 1/2 and class 1 with p = 1/2; one ignored pixel
    logits = torch.zeros(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    weights = torch.tensor([1.0, 3.0])
    assert losses.segmentation_loss(logits, labels, 255, weights).item() == \
        pytest.approx(math.log(2))
    logits[0, 1, 0, 1] = 2.0  # class 1's pixel now right with p = e^2 / (1 + e^2)
    nll_1 = -math.log(math.exp(2) / (1 + math.exp(2)))
    expected = (1.0 * math.log(2) + 3.0 * nll_1) / 4.0
    assert losses.segmentation_loss(logits, labels, 255, weights).item() == \
        pytest.approx(expected, rel=1e-6)


def test_overfitting_one_batch_lowers_every_loss():
    torch.manual_seed(0)
    model = SuperSegmentation(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    image = torch.rand(2, 3, 32, 48)
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 65, (2, 4, 6), generator=generator)
    seg_labels = torch.randint(0, 19, (2, 32, 48), generator=generator)
    eye = torch.eye(3).expand(2, 3, 3)
    xy_a, xy_b, valid = losses.sample_correspondences(eye, (32, 48), (32, 48), 24, generator)
    pixels = torch.randint(0, 32, (2, 10, 2), generator=generator)
    targets = torch.rand(2, 10, 2, generator=generator) - 0.5
    history = []
    for _ in range(30):
        out = model(image)
        terms = [losses.detector_loss(out["logits"], labels),
                 losses.descriptor_loss(out["descriptors"], out["descriptors"], xy_a, xy_b,
                                        valid, margin=1.0),
                 losses.subpixel_loss(out["offsets"], pixels, targets,
                                      torch.ones(2, 10, dtype=torch.bool)),
                 losses.segmentation_loss(out["segmentation"], seg_labels)]
        history.append([t.item() for t in terms])
        optimizer.zero_grad()
        sum(terms).backward()
        optimizer.step()
    first, last = history[0], history[-1]
    for name, before, after in zip(("detector", "descriptor", "subpixel", "segmentation"),
                                   first, last):
        assert after < before, f"{name} loss did not decrease: {before:.4f} -> {after:.4f}"


def _peaks(points, shape=(32, 40)):
    heat = torch.zeros(1, *shape)
    for x, y in points:
        heat[0, y, x] = 0.9
    return heat


def test_subpixel_consistency_pairs_peaks_through_H_and_measures_the_refined_gap():
    """A's peaks moved by a translation of (2.4, -1.3) px land 0.4 / 0.3 px from B's integer
    peaks: with zero offsets the loss is that gap (0.5 px); offsets that close it give ~0."""
    points_a = [(5, 6), (20, 9), (12, 22), (30, 25)]
    points_b = [(x + 2, y - 1) for x, y in points_a]
    H = torch.tensor([[[1.0, 0, 2.4], [0, 1.0, -1.3], [0, 0, 1.0]]])
    zero = torch.zeros(1, 2, 32, 40, requires_grad=True)
    loss, n = losses.subpixel_consistency_loss(_peaks(points_a), _peaks(points_b), zero,
                                               torch.zeros(1, 2, 32, 40), H)
    assert n == 4 and loss.item() == pytest.approx(0.5, abs=1e-3)
    loss.backward()
    g = zero.grad[0, :, 6, 5]  # the gradient moves A's offset against the gap
    assert g[0] > 0 and g[1] < 0
    closing = torch.zeros(1, 2, 32, 40)
    closing[0, 0], closing[0, 1] = 0.4, -0.3  # B's points refined onto H(A's)
    loss, n = losses.subpixel_consistency_loss(_peaks(points_a), _peaks(points_b),
                                               torch.zeros(1, 2, 32, 40), closing, H)
    assert n == 4 and loss.item() < 0.011
    # a peak of B with no partner within match_px, and an empty view, pair nothing
    loss, n = losses.subpixel_consistency_loss(_peaks([(5, 6)]), _peaks([(15, 16)]),
                                               zero, closing, H)
    assert n == 0 and loss.item() == 0
    loss, n = losses.subpixel_consistency_loss(torch.zeros(1, 32, 40), _peaks(points_b),
                                               zero, closing, H)
    assert n == 0 and loss.item() == 0
