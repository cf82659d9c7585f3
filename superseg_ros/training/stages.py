"""What each training stage learns: its data, its losses, its validation.

    magicpoint  stage 1: detector + sub-pixel head on synthetic shapes (exact corners)
    joint       stage 2: detector on both views of a warped pair (pseudo-labels from homographic
                adaptation), descriptor triplet loss on correspondences, sub-pixel loss from
                homography-consistent positions
    labelled    stage 3: all four heads on a labelled street dataset (`data.dataset`: Cityscapes,
                the second view made by the road-plane (ego-motion) homography composed with a
                mild random one; CamVid, the mild random one alone); fixed or learned
                (uncertainty) loss weights; validation: homography AUC and 4-group mIoU

A stage is used by `trainer.Trainer`; it never touches optimisers, checkpoints or logging.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, merge_config, require_choice
from ..extractor import Extractor
from ..network import CELL, HEADS
from ..postprocess import nms_peaks
from ..evaluation.segmentation import confusion_matrix, intersection_over_union
from ..semantics import GROUPS, IGNORE, semantics_for
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


def pair_losses(model, batch: dict, settings: dict, generator: torch.Generator,
                semantics: bool = False) -> tuple[dict, dict, dict]:
    """Keypoint losses of a warped pair (both views in one pass, so BatchNorm sees both):
    detector CE and sub-pixel L1 averaged over the views, triplet loss on correspondences.
    Returns the losses and the outputs of view A and of both views."""
    out = model(torch.cat([batch["image_a"], batch["image_b"]]), semantics=semantics)
    b = batch["image_a"].shape[0]
    out_a = {k: v[:b] for k, v in out.items()}
    out_b = {k: v[b:] for k, v in out.items()}
    det_a, sub_a = keypoint_losses(out_a, batch["labels_a"], batch["offsets_a"],
                                   batch["valid_cells_a"])
    det_b, sub_b = keypoint_losses(out_b, batch["labels_b"], batch["offsets_b"],
                                   batch["valid_cells_b"])
    shape = batch["image_a"].shape[-2:]
    xy_a, xy_b, valid = L.sample_correspondences(
        batch["H"], shape, shape, int(settings["max_points"]), generator, valid_b=batch["valid_b"])
    descriptor = L.descriptor_loss(out_a["descriptors"], out_b["descriptors"], xy_a, xy_b, valid,
                                   settings["descriptor_margin"], settings["exclusion_radius"])
    losses = {"detector": (det_a + det_b) / 2, "descriptor": descriptor,
              "subpixel": (sub_a + sub_b) / 2}
    if float(settings.get("subpixel_consistency", 0.0)) > 0:
        losses["subpixel_consistency"], _ = L.subpixel_consistency_loss(
            out_a["heatmap"], out_b["heatmap"], out_a["offsets"], out_b["offsets"], batch["H"],
            batch["valid_b"], int(settings["consistency_points"]))
    return losses, out_a, out


def homography_validation(model, device, folder, conf: dict, size: int,
                          recursive: bool = False) -> dict:
    """superseg-eval's metrics on `conf["pairs"]` generated pairs (seed `conf["seed"]`) from an
    image folder, at most `size` px per side, `conf["max_keypoints"]` per image."""
    from ..evaluation import metrics as M
    from ..evaluation.baselines import make_superseg
    from ..evaluation.datasets import generated_pairs
    pairs = generated_pairs(folder, conf["pairs"], conf["seed"], size=size, recursive=recursive)
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
                     "descriptor_margin": 1.0, "max_points": 512, "exclusion_radius": 8.0,
                     # > 0: also train the offsets so the model's own peaks, refined, land on
                     # each other across the pair (losses.subpixel_consistency_loss)
                     "subpixel_consistency": 0.0, "consistency_points": 256}
    validation_defaults = {"pairs": 16, "max_keypoints": 1000, "seed": 0}

    def __init__(self, config: dict, channels: int, labels_dir=None):
        self.config = config
        self.weights = merge_config(self.loss_defaults, config["loss"], where="loss")
        self.validation = merge_config(self.validation_defaults, config["validation"],
                                       where="validation")
        self.dataset = PairDataset(config["data"], config["homography"], config["photometric"],
                                   channels, config["seed"], labels_dir=labels_dir)

    def losses(self, model, batch: dict, generator: torch.Generator) -> tuple[dict, dict]:
        losses, out_a, _ = pair_losses(model, batch, self.weights, generator)
        return losses, out_a

    def preview(self, batch: dict, out: dict) -> np.ndarray:
        return overlay(batch["image_a"][0], out["heatmap"][0], batch["labels_a"][0])

    def validate(self, model, device) -> dict:
        """superseg-eval's metrics on generated pairs from `data.validation_images`."""
        folder = self.dataset.data["validation_images"]
        if not folder:
            return {}
        return homography_validation(model, device, folder, self.validation,
                                     max(self.dataset.data["size"]))

    key_metric = "homography_auc@3px"


# --- stage 3 -------------------------------------------------------------------------------------


class LossWeights(nn.Module):
    """How the stage's losses add up.

    fixed:        total = sum_i w_i L_i (`loss.<name>` weights)
    uncertainty:  total = sum_i exp(-s_i) L_i + s_i with s_i = log sigma_i^2 learned (Kendall,
                  Gal & Cipolla, CVPR 2018); `loss.initial_log_variance` starts them. The
                  fixed weights are not used then.
    """

    def __init__(self, names, mode: str, weights: dict, initial_log_variance: float = 0.0):
        super().__init__()
        self.names, self.mode = tuple(names), mode
        self.fixed = {n: float(weights[n]) for n in self.names}
        if mode == "uncertainty":
            self.log_variance = nn.Parameter(torch.full((len(self.names),),
                                                        float(initial_log_variance)))

    def forward(self, losses: dict) -> torch.Tensor:
        if self.mode == "fixed":
            return sum(self.fixed[n] * losses[n] for n in self.names)
        s = self.log_variance
        return sum(torch.exp(-s[i]) * losses[n].float() + s[i] for i, n in enumerate(self.names))

    def scalars(self) -> dict:
        """What TensorBoard shows: s_i and the effective weights exp(-s_i)."""
        if self.mode == "fixed":
            return {}
        s = self.log_variance.detach().float().cpu()
        out = {f"log_variance_{n}": float(s[i]) for i, n in enumerate(self.names)}
        out.update({f"weight_{n}": float(torch.exp(-s[i])) for i, n in enumerate(self.names)})
        return out


class Labelled:
    """Stage 3: the four heads together on labelled street frames (labelled_data.LabelledPairs)."""

    name = "labelled"
    trains = HEADS
    LOSSES = ("detector", "descriptor", "segmentation", "subpixel")
    loss_defaults = {"weighting": "fixed",          # fixed | uncertainty (learned, Kendall 2018)
                     "detector": 1.0, "descriptor": 1.0, "segmentation": 1.0, "subpixel": 1.0,
                     "initial_log_variance": 0.0,   # s_i at the start (uncertainty weighting)
                     "descriptor_margin": 1.0, "max_points": 512, "exclusion_radius": 8.0,
                     # segmentation class weights (median f / f_c) ** class_balance from the
                     # training split's pixel counts: 0 = plain cross-entropy, 1 = SegNet's
                     # median-frequency balancing
                     "class_balance": 0.0}
    validation_defaults = {
        "images": 100,          # val frames for the mIoU (spread over the split; 0 = all)
        "pairs": 16,            # generated pairs from val frames for the homography metrics
        "max_keypoints": 1000,
        "seed": 0,
        "size": [],             # [H, W] the val frames are resized to (default: data.size)
        "key_metric": "miou",   # what best.pt keeps the best of: miou | homography_auc@3px
    }
    KEY_METRICS = ("miou", "miou_classes", "homography_auc@3px", "homography_accuracy@3px",
                   "repeatability@3px", "nn_map", "matching_score")

    def __init__(self, config: dict, channels: int, labels_dir=None):
        from .labelled_data import LabelledPairs
        self.config = config
        self.weights = merge_config(self.loss_defaults, config["loss"], where="loss")
        require_choice(self.weights["weighting"], ("fixed", "uncertainty"), "loss.weighting")
        self.validation = merge_config(self.validation_defaults, config["validation"],
                                       where="validation")
        require_choice(self.validation["key_metric"], self.KEY_METRICS, "validation.key_metric")
        self.key_metric = self.validation["key_metric"]
        self.dataset = LabelledPairs(config["data"], config["homography"],
                                       config["photometric"], channels, config["seed"],
                                       labels_dir=labels_dir)
        self.semantics = self.dataset.ontology.semantics(self.dataset.mode)
        self.class_to_group = np.asarray(self.semantics["class_to_group"], np.int64)
        self.loss_weights = LossWeights(self.LOSSES, self.weights["weighting"], self.weights,
                                        self.weights["initial_log_variance"])
        self.class_weights = None
        if float(self.weights["class_balance"]) < 0:
            raise ConfigError(f"loss.class_balance must be >= 0, got {self.weights['class_balance']}")
        if float(self.weights["class_balance"]) > 0:
            counts = self.dataset.class_pixel_counts(len(self.semantics["classes"]))
            self.class_weights = L.median_frequency_weights(counts, self.weights["class_balance"])
        self._val_frames = None

    @staticmethod
    def model_semantics(config: dict) -> dict:
        """The class/group table the semantic head must have (from data.label_mode)."""
        from .labelled_data import labelled_data_config
        data = labelled_data_config(config["data"])
        return semantics_for(data["label_mode"], data["dataset"])

    # --- the parameters of the loss itself (learned weights) ---------------------------------
    def parameters(self) -> list:
        return list(self.loss_weights.parameters())

    def to(self, device):
        self.loss_weights.to(device)
        return self

    def state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.loss_weights.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_weights.load_state_dict(state)

    def total_loss(self, losses: dict) -> torch.Tensor:
        return self.loss_weights(losses)

    def loss_scalars(self) -> dict:
        return self.loss_weights.scalars()

    # --- training ------------------------------------------------------------------------------
    def losses(self, model, batch: dict, generator: torch.Generator) -> tuple[dict, dict]:
        losses, out_a, out = pair_losses(model, batch, self.weights, generator, semantics=True)
        losses["segmentation"] = L.segmentation_loss(
            out["segmentation"], torch.cat([batch["segmentation_a"], batch["segmentation_b"]]),
            IGNORE, self.class_weights)
        return losses, out_a

    def groups_of(self, classes: np.ndarray) -> np.ndarray:
        """Class ids -> stability group ids (IGNORE stays IGNORE)."""
        classes = np.asarray(classes)
        table = np.full(256, IGNORE, np.uint8)
        table[:len(self.class_to_group)] = self.class_to_group
        return table[classes.astype(np.uint8)]

    def preview(self, batch: dict, out: dict) -> np.ndarray:
        """Left: labelled keypoints on the true groups; right: predicted keypoints on the
        predicted groups (static grey, flat purple, dynamic red, unstable green, ignore black)."""
        image = (batch["image_a"][0].detach().float().permute(1, 2, 0).cpu().numpy() * 255)
        image = image.clip(0, 255).astype(np.uint8)
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        h, w = image.shape[:2]
        seg = F.interpolate(out["segmentation"][:1].detach().float(), size=(h, w),
                            mode="bilinear", align_corners=False)[0].argmax(0).cpu().numpy()
        labels = batch["labels_a"][0].cpu()
        pixels, _, has = label_pixels(labels[None], torch.zeros(*labels.shape, 2),
                                      torch.ones_like(labels, dtype=torch.bool)[None])
        truth = pixels[0][has[0]].numpy().astype(np.float32)
        heat = out["heatmap"][0].detach().float().cpu()
        peaks = (nms_peaks(heat[None], 4)[0] & (heat >= 0.015)).nonzero().flip(-1).numpy()
        left = draw_keypoints(image, truth, np.ones(len(truth), bool), group_map=self.groups_of(
            batch["segmentation_a"][0].cpu().numpy()))
        right = draw_keypoints(image, peaks.astype(np.float32), np.ones(len(peaks), bool),
                               group_map=self.groups_of(seg))
        return cv2.cvtColor(np.hstack([left, right]), cv2.COLOR_BGR2RGB)

    # --- validation ----------------------------------------------------------------------------
    def validation_size(self) -> tuple[int, int]:
        size = self.validation["size"] or self.dataset.data["size"]
        if len(size) != 2 or any(int(v) % CELL for v in size):
            raise ConfigError(f"validation.size must be [H, W], multiples of {CELL}, got {size}")
        return int(size[0]), int(size[1])

    def validation_frames(self):
        split = self.dataset.data["validation_split"]
        if not split:
            return None
        if self._val_frames is None:
            from .labelled_data import frames_reader
            modes = ["groups4"] + ([self.dataset.mode] if self.dataset.mode != "groups4" else [])
            self._val_frames = frames_reader(self.dataset.data, split, modes)
        return self._val_frames

    def validate(self, model, device) -> dict:
        """4-group mIoU (and the class mIoU with classes) on the val frames, and
        superseg-eval's homography metrics on generated pairs from them."""
        frames = self.validation_frames()
        if frames is None:
            return {}
        results = self.segmentation_metrics(model, device, frames)
        results.update(self.homography_metrics(model, device, frames))
        return results

    def segmentation_metrics(self, model, device, frames) -> dict:
        if not frames.labelled:
            return {}
        conf, (h, w) = self.validation, self.validation_size()
        n = len(frames) if conf["images"] <= 0 else min(conf["images"], len(frames))
        n_classes = len(self.semantics["classes"])
        groups = np.zeros((len(GROUPS), len(GROUPS)), np.int64)
        classes = np.zeros((n_classes, n_classes), np.int64)
        channels = model.config["input_channels"]
        from .data import to_tensor
        for i in range(n):
            frame = frames[(i * len(frames)) // n]
            image = frame["image"]
            h0, w0 = image.shape[:2]
            x = to_tensor(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), channels)
            logits = model(x[None].to(device), semantics=True)["segmentation"].float()
            logits = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)
            predicted = logits[0].argmax(0).cpu().numpy()
            groups += confusion_matrix(self.groups_of(predicted), frame["labels"]["groups4"],
                                       len(GROUPS))
            if self.dataset.mode != "groups4":
                classes += confusion_matrix(predicted, frame["labels"][self.dataset.mode],
                                            n_classes)
        miou, ious = intersection_over_union(groups)
        out = {"miou": miou, **{f"iou_{g}": float(v) for g, v in zip(GROUPS, ious)}}
        if self.dataset.mode != "groups4":
            out["miou_classes"] = intersection_over_union(classes)[0]
        out["pixel_accuracy"] = float(np.trace(groups) / max(1, groups.sum()))
        return out

    def homography_metrics(self, model, device, frames) -> dict:
        return homography_validation(model, device, frames.images_dir,
                                     self.validation, max(self.validation_size()),
                                     recursive=True)


STAGES = {"magicpoint": MagicPoint, "joint": Joint, "labelled": Labelled}
