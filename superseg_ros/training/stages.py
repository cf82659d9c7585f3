"""What each training stage learns: its data, its losses, its validation.

    magicpoint  stage 1: detector + sub-pixel head on synthetic shapes (exact corners)
    joint       stage 2: detector on both views of a warped pair (pseudo-labels from homographic
                adaptation), descriptor triplet loss on correspondences, sub-pixel loss from
                homography-consistent positions

A stage is used by `trainer.Trainer`; it never touches optimisers, checkpoints or logging.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..config import merge_config
from ..extractor import Extractor
from ..network import CELL
from ..postprocess import nms_peaks
from ..visualize import draw_keypoints
from . import losses as L
from .data import PairDataset, ShapesDataset

DUSTBIN = CELL * CELL


def label_pixels(labels: torch.Tensor, offsets: torch.Tensor, valid_cells: torch.Tensor):
    """Cell labels (B, Hc, Wc) -> the labelled pixels (B, Hc*Wc, 2 as x, y), their sub-pixel
    targets (B, Hc*Wc, 2) and which cells hold a label (B, Hc*Wc)."""
    b, hc, wc = labels.shape
    ys, xs = torch.meshgrid(torch.arange(hc, device=labels.device),
                            torch.arange(wc, device=labels.device), indexing="ij")
    position = labels.clamp(max=DUSTBIN - 1)  # dustbin cells get any in-range pixel, then masked
    px = xs * CELL + position % CELL
    py = ys * CELL + position // CELL
    pixels = torch.stack([px, py], -1).reshape(b, -1, 2)
    has_label = ((labels != DUSTBIN) & valid_cells).reshape(b, -1)
    return pixels, offsets.reshape(b, -1, 2), has_label


def keypoint_losses(out: dict, labels, offsets, valid_cells) -> tuple[torch.Tensor, torch.Tensor]:
    detector = L.detector_loss(out["logits"], labels, valid_cells)
    pixels, targets, has_label = label_pixels(labels, offsets, valid_cells)
    subpixel = L.subpixel_loss(out["offsets"], pixels, targets, has_label)
    return detector, subpixel


def overlay(image: torch.Tensor, heatmap: torch.Tensor, labels: torch.Tensor,
            threshold: float = 0.015) -> np.ndarray:
    """RGB uint8 picture: labelled keypoints (green circles), predicted peaks (red dots)."""
    grey = (image.detach().float().mean(0).cpu().numpy() * 255).clip(0, 255).astype(np.uint8)
    everywhere = torch.ones_like(labels, dtype=torch.bool)
    pixels, _, has_label = label_pixels(labels[None], torch.zeros(*labels.shape, 2),
                                        everywhere[None])
    truth = pixels[0][has_label[0]].cpu().numpy().astype(np.float32)
    canvas = draw_keypoints(grey, truth, np.ones(len(truth), bool))  # BGR
    heat = heatmap.detach().float().cpu()
    peaks = (nms_peaks(heat[None], 4)[0] & (heat >= threshold)).nonzero().flip(-1).numpy()
    for x, y in peaks:
        cv2.circle(canvas, (int(x), int(y)), 1, (0, 0, 255), -1)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


# --- stage 1 -------------------------------------------------------------------------------------

class MagicPoint:
    name = "magicpoint"
    trains = ("detector", "subpixel")
    loss_defaults = {"detector": 1.0, "subpixel": 1.0}
    validation_defaults = {"images": 64, "distance": 2.0, "seed_offset": 1_000_003}

    def __init__(self, config: dict, channels: int):
        self.config = config
        self.weights = merge_config(self.loss_defaults, config["loss"], where="loss")
        self.validation = merge_config(self.validation_defaults, config["validation"],
                                       where="validation")
        self.dataset = ShapesDataset(config["data"], config["homography"],
                                     config["photometric"], channels, config["seed"])

    def losses(self, model, batch: dict, generator: torch.Generator) -> tuple[dict, dict]:
        """Named unweighted losses, and the network outputs (for previews)."""
        out = model(batch["image"], semantics=False)
        detector, subpixel = keypoint_losses(out, batch["labels"], batch["offsets"],
                                             batch["valid_cells"])
        return {"detector": detector, "subpixel": subpixel}, out

    def preview(self, batch: dict, out: dict) -> np.ndarray:
        return overlay(batch["image"][0], out["heatmap"][0], batch["labels"][0])

    def validate(self, model, device) -> dict:
        """Corner detection on held-out synthetic images: average precision of the detections
        (a detection is correct within `distance` px of an unclaimed true corner), and the mean
        localisation error of the correct ones with and without the sub-pixel head."""
        conf = self.validation
        shapes = self.dataset.shapes
        seed = self.config["seed"] + conf["seed_offset"]
        items = [shapes.__class__(shapes.config, seed=seed).sample(i) for i in range(conf["images"])]
        images = torch.stack([torch.from_numpy(it.image) for it in items])[:, None].float() / 255
        results = {}
        for subpixel in (True, False):
            extractor = Extractor(model, {"max_keypoints": 0, "detection_threshold": 0.001,
                                          "remove_borders": 0, "subpixel": subpixel,
                                          "semantic_filter": "off"}, device=device)
            scores, correct, errors, n_true = [], [], [], 0
            for start in range(0, len(items), 16):
                feats = extractor(images[start:start + 16]).unbatch()
                for item, f in zip(items[start:start + 16], feats):
                    s, c, e = match_detections(f["keypoints"], f["scores"], item.corners,
                                               conf["distance"])
                    scores.append(s), correct.append(c), errors.append(e)
                    n_true += len(item.corners)
            suffix = "" if subpixel else "_no_subpixel"
            errors = np.concatenate(errors)
            results["localization_error" + suffix] = float(errors.mean()) if errors.size \
                else float("nan")
            if subpixel:
                results["average_precision"] = average_precision(
                    np.concatenate(scores), np.concatenate(correct), n_true)
        return results

    key_metric = "average_precision"


def match_detections(keypoints, scores, truth, distance: float):
    """Greedy in score order: each true corner claims at most one detection within `distance`.
    Returns scores, correct flags (per detection) and the errors of the correct ones."""
    keypoints, truth = np.asarray(keypoints, np.float64), np.asarray(truth, np.float64)
    order = np.argsort(-np.asarray(scores))
    correct = np.zeros(len(keypoints), bool)
    errors = []
    free = np.ones(len(truth), bool)
    for i in order:
        if not free.any():
            break
        d = np.linalg.norm(truth - keypoints[i], axis=1)
        d[~free] = np.inf
        j = int(np.argmin(d))
        if d[j] <= distance:
            free[j], correct[i] = False, True
            errors.append(d[j])
    return np.asarray(scores), correct, np.asarray(errors)


def average_precision(scores: np.ndarray, correct: np.ndarray, n_true: int) -> float:
    """Area under the precision-recall curve of detections ranked by score (step integration)."""
    if n_true == 0 or len(scores) == 0:
        return float("nan") if n_true == 0 else 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / n_true
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((precision * steps).sum())


# --- stage 2 -------------------------------------------------------------------------------------

class Joint:
    name = "joint"
    trains = ("detector", "descriptor", "subpixel")
    loss_defaults = {"detector": 1.0, "descriptor": 1.0, "subpixel": 1.0,
                     "descriptor_margin": 1.0, "max_points": 512, "exclusion_radius": 8.0}
    validation_defaults = {"pairs": 16, "max_keypoints": 1000, "seed": 0}

    def __init__(self, config: dict, channels: int, labels_dir=None):
        self.config = config
        self.weights = merge_config(self.loss_defaults, config["loss"], where="loss")
        self.validation = merge_config(self.validation_defaults, config["validation"],
                                       where="validation")
        self.dataset = PairDataset(config["data"], config["homography"], config["photometric"],
                                   channels, config["seed"], labels_dir=labels_dir)

    def losses(self, model, batch: dict, generator: torch.Generator) -> tuple[dict, dict]:
        both = torch.cat([batch["image_a"], batch["image_b"]])  # one pass: BatchNorm sees both
        out = model(both, semantics=False)
        b = batch["image_a"].shape[0]
        out_a = {k: v[:b] for k, v in out.items()}
        out_b = {k: v[b:] for k, v in out.items()}
        det_a, sub_a = keypoint_losses(out_a, batch["labels_a"], batch["offsets_a"],
                                       batch["valid_cells_a"])
        det_b, sub_b = keypoint_losses(out_b, batch["labels_b"], batch["offsets_b"],
                                       batch["valid_cells_b"])
        shape = batch["image_a"].shape[-2:]
        xy_a, xy_b, valid = L.sample_correspondences(
            batch["H"], shape, shape, int(self.weights["max_points"]), generator,
            valid_b=batch["valid_b"])
        descriptor = L.descriptor_loss(out_a["descriptors"], out_b["descriptors"], xy_a, xy_b,
                                       valid, self.weights["descriptor_margin"],
                                       self.weights["exclusion_radius"])
        return {"detector": (det_a + det_b) / 2, "descriptor": descriptor,
                "subpixel": (sub_a + sub_b) / 2}, out_a

    def preview(self, batch: dict, out: dict) -> np.ndarray:
        return overlay(batch["image_a"][0], out["heatmap"][0], batch["labels_a"][0])

    def validate(self, model, device) -> dict:
        """superseg-eval's metrics on generated pairs from `data.validation_images`."""
        folder = self.dataset.data["validation_images"]
        if not folder:
            return {}
        from ..evaluation import metrics as M
        from ..evaluation.baselines import make_superseg
        from ..evaluation.datasets import generated_pairs
        conf = self.validation
        pairs = generated_pairs(folder, conf["pairs"], conf["seed"],
                                size=max(self.dataset.data["size"]))
        method = make_superseg(model, "training", max_keypoints=conf["max_keypoints"],
                               semantic_filter="off", device=device)
        results = []
        for i, pair in enumerate(pairs):
            fa = method.extract(pair.image_a, conf["max_keypoints"])
            fb = method.extract(pair.image_b, conf["max_keypoints"])
            results.append(M.evaluate_pair(fa, fb, pair.H, pair.image_a.shape[:2],
                                           pair.image_b.shape[:2], False, i))
        s = M.summarize(results)
        return {k: s[k] for k in ("homography_auc@3px", "homography_accuracy@3px",
                                  "repeatability@3px", "localization_error", "nn_map",
                                  "matching_score")}

    key_metric = "homography_auc@3px"


STAGES = {"magicpoint": MagicPoint, "joint": Joint}
