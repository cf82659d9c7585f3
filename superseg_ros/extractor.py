"""The inference path every caller uses: images in, filtered sub-pixel keypoints out.

    extractor = Extractor(model, {"max_keypoints": 1000}, device="auto")
    features = extractor([rgb_uint8_image, ...])      # batched, padded, with `valid`
    per_image = features.unbatch()                    # list of dicts of numpy arrays

Steps (each timed separately by superseg-bench):
    preprocess   numpy/tensor -> float RGB in [0, 1] on the device, padded to a multiple of 8
    network      one forward pass of SuperSegmentation in the configured backend (torch,
                 onnxruntime, openvino: superseg_ros.backends), the same dict of tensors from each
    postprocess  NMS -> stability filter -> top-K -> sub-pixel offsets -> descriptor sampling
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import postprocess as pp
from .backends import BACKEND_CHOICES, PRECISIONS, make_runner
from .config import ConfigError, merge_config, require_choice
from .network import CELL, SuperSegmentation
from .semantics import DEFAULT_STABLE_GROUPS, stable_group_ids

UNKNOWN = 255  # label/group id when the semantic head is not used

DEFAULT_EXTRACTOR_CONFIG = {
    "max_keypoints": 1000,          # per image, best scores first; <= 0 keeps all
    "detection_threshold": 0.015,   # minimum heatmap probability (SuperPoint's default)
    "nms_radius": 4,                # pixels; a peak must be the maximum of its (2r+1)^2 window
    "remove_borders": 4,            # pixels at each image edge where no keypoint is kept
    "subpixel": True,               # move peaks by the model's sub-pixel offsets
    "semantic_filter": "auto",      # auto: on if the semantic head was trained | on | off
    "force_semantic": False,        # allow semantic_filter=on with an untrained semantic head
    "stable_groups": list(DEFAULT_STABLE_GROUPS),
    "mask_threshold": 0.5,          # a pixel is stable if P(stable groups) >= this
    "keep_unstable": False,         # keep keypoints on unstable regions, flagged stable=False
    "precision": "auto",            # auto (fp16 on CUDA, else fp32) | fp32 | fp16 | bf16
    "backend": "torch",             # torch | onnxruntime | openvino | auto (fastest installed)
}


class SemanticHeadUntrained(ConfigError):
    """The semantic filter was requested but the checkpoint's semantic head was never trained."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available "
                          "(use --device auto or cpu)")
    return device


@dataclass
class Features:
    """Batched results. Keypoint arrays are (B, K, ...) with `valid` marking the real entries."""

    keypoints: torch.Tensor      # (B, K, 2) float32 x, y in input pixels
    scores: torch.Tensor         # (B, K)
    descriptors: torch.Tensor    # (B, K, D) unit norm
    labels: torch.Tensor         # (B, K) semantic class id (255 = semantics off)
    groups: torch.Tensor         # (B, K) stability group id (255 = semantics off)
    stable: torch.Tensor         # (B, K) bool
    valid: torch.Tensor          # (B, K) bool
    image_sizes: torch.Tensor    # (B, 2) height, width
    stability_mask: torch.Tensor | None = None  # (B, H, W) bool, None when semantics are off
    group_map: torch.Tensor | None = None       # (B, H, W) uint8 group of the most likely class
    stable_prob: torch.Tensor | None = None     # (B, H, W) float P(stable groups) per pixel
    class_map: torch.Tensor | None = None       # (B, H, W) uint8 most likely class (dense only)
    semantic_active: bool = False
    extras: dict = field(default_factory=dict)  # rejected_keypoints: ((B, R, 2), valid (B, R))

    def unbatch(self) -> list[dict]:
        """Per image: numpy arrays with only the valid keypoints, masks cropped to the image."""
        out = []
        for i, (h, w) in enumerate(self.image_sizes.tolist()):
            keep = self.valid[i]
            item = {
                "keypoints": self.keypoints[i][keep].float().cpu().numpy(),
                "scores": self.scores[i][keep].float().cpu().numpy(),
                "descriptors": self.descriptors[i][keep].float().cpu().numpy(),
                "labels": self.labels[i][keep].cpu().numpy().astype(np.uint8),
                "groups": self.groups[i][keep].cpu().numpy().astype(np.uint8),
                "stable": self.stable[i][keep].cpu().numpy(),
            }
            if self.stability_mask is not None:
                item["stability_mask"] = self.stability_mask[i, :h, :w].cpu().numpy()
                item["group_map"] = self.group_map[i, :h, :w].cpu().numpy()
                item["stable_prob"] = self.stable_prob[i, :h, :w].float().cpu().numpy()
            if self.class_map is not None:
                item["class_map"] = self.class_map[i, :h, :w].cpu().numpy()
            if "rejected_keypoints" in self.extras:
                xy, valid = self.extras["rejected_keypoints"]
                item["rejected_keypoints"] = xy[i][valid[i]].float().cpu().numpy()
            out.append(item)
        return out


class Extractor:
    def __init__(self, model: SuperSegmentation, config: dict | None = None,
                 device: str | torch.device = "auto",
                 checkpoint: str | os.PathLike | None = None, dense: bool = False):
        """`checkpoint`: the file `model` was loaded from (default: model.checkpoint_path, set by
        load_model). The onnxruntime and openvino backends cache the exported graph next to it,
        keyed by its content; without one the cache is keyed by the model's weights and kept in
        the user's cache folder.

        `dense`: group_map is the group of the argmax class of the class probabilities upsampled
        bilinearly to input resolution (what superseg-extract --dense and superseg-eval
        --segmentation measure; about 80 ms at 480x640 on 2 CPU cores). Otherwise it is that of
        the stride-4 cells, upsampled nearest: enough to look at, and nearly free. Dense results
        also carry class_map, the argmax class per pixel."""
        self.dense = bool(dense)
        self.config = conf = merge_config(DEFAULT_EXTRACTOR_CONFIG, config, where="extractor")
        require_choice(conf["semantic_filter"], ("auto", "on", "off"), "extractor.semantic_filter")
        require_choice(conf["precision"], PRECISIONS, "extractor.precision")
        require_choice(conf["backend"], BACKEND_CHOICES, "extractor.backend")
        for key in ("mask_threshold", "detection_threshold"):  # both are probabilities
            if not 0.0 <= float(conf[key]) <= 1.0:
                raise ConfigError(f"extractor.{key} must be within [0, 1], got {conf[key]}")
        if int(conf["nms_radius"]) < 0 or int(conf["remove_borders"]) < 0:
            raise ConfigError("extractor.nms_radius and remove_borders must be >= 0")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()

        semantics = model.semantics
        self.stable_ids = stable_group_ids(semantics["groups"], conf["stable_groups"])
        self.num_groups = len(semantics["groups"])
        self.class_to_group = torch.tensor(semantics["class_to_group"], device=self.device)
        self.semantic_active, self.semantic_note = self._decide_semantics(model)
        # after the semantic decision: the exported graph has a segmentation output only if used
        self.runner = make_runner(conf["backend"], self.model, self.device,
                                  semantics=self.semantic_active, precision=conf["precision"],
                                  checkpoint=checkpoint or model.checkpoint_path)
        self.backend = self.runner.name
        self.backend_note = f"backend {self.runner.description}"

    def _decide_semantics(self, model) -> tuple[bool, str | None]:
        mode, trained = self.config["semantic_filter"], model.trained_heads["semantic"]
        if mode == "off":
            return False, "semantic filter off (extractor.semantic_filter=off): no keypoint is rejected"
        if trained:
            return True, None
        if mode == "on" and not self.config["force_semantic"]:
            raise SemanticHeadUntrained(
                "the semantic filter was requested but this model's semantic head was never "
                "trained; train it (Cityscapes stage) or set semantic_filter=auto/off "
                "(force_semantic=true runs it anyway)")
        if mode == "on":
            return True, "semantic filter FORCED on an untrained semantic head: its masks are noise"
        return False, ("semantic filter off: this model's semantic head is untrained, so keypoints "
                       "are not filtered by stability (labels and groups are 255)")

    # ------------------------------------------------------------------------------ the pipeline
    def __call__(self, images) -> Features:
        with torch.inference_mode():
            batch, sizes = self.preprocess(images)
            return self.postprocess(self.network(batch), sizes)

    def preprocess(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (padded float batch (B, C, H8, W8) on the device, sizes (B, 2) as H, W)."""
        if isinstance(images, torch.Tensor):
            batch = images if images.dim() == 4 else images[None]
            batch = batch.to(self.device, torch.float32)
            sizes = torch.tensor([batch.shape[-2:]] * batch.shape[0], device=self.device)
            return pp.pad_to_multiple(self._channels(batch)), sizes
        if isinstance(images, np.ndarray):
            images = [images]
        tensors = [self._channels(image_to_tensor(im).to(self.device)[None]) for im in images]
        sizes = torch.tensor([t.shape[-2:] for t in tensors], device=self.device)
        height, width = (int(v) for v in sizes.max(0).values)
        height, width = -(-height // CELL) * CELL, -(-width // CELL) * CELL
        batch = torch.cat([F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]),
                                 mode="replicate") for t in tensors])
        return batch, sizes

    def _channels(self, batch: torch.Tensor) -> torch.Tensor:
        want = self.model.config["input_channels"]
        if batch.shape[1] == want:
            return batch
        if batch.shape[1] == 1:
            return batch.expand(-1, want, -1, -1)
        return batch.mean(1, keepdim=True)  # RGB into a grey-input network

    def network(self, batch: torch.Tensor) -> dict:
        """(B, C, H8, W8) batch -> heatmap, descriptors, offsets and, when the semantic filter is
        active, segmentation logits: torch tensors on the device, whichever backend ran."""
        return self.runner(batch)

    def postprocess(self, outputs: dict, sizes: torch.Tensor) -> Features:
        conf = self.config
        heatmap = outputs["heatmap"].float()
        inside = pp.inside_mask(sizes, heatmap.shape[-2:])
        heatmap = heatmap * inside  # padding is not image: it must not create or suppress peaks
        peaks = pp.nms_peaks(heatmap, int(conf["nms_radius"]))
        peaks &= heatmap >= float(conf["detection_threshold"])
        peaks &= pp.inside_mask(sizes, heatmap.shape[-2:], int(conf["remove_borders"]))

        stability_mask = group_map = class_prob = stable_prob = class_map = None
        extras = {}
        if self.semantic_active:
            # NMS ran on the raw heatmap first: masking before NMS would invent peaks at the
            # boundaries of dynamic objects.
            class_prob = outputs["segmentation"].float().softmax(1)
            group_prob = pp.group_probabilities(class_prob, self.class_to_group, self.num_groups)
            stable_prob = F.interpolate(group_prob[:, self.stable_ids].sum(1, keepdim=True),
                                        size=heatmap.shape[-2:], mode="bilinear",
                                        align_corners=False)[:, 0]
            stability_mask = stable_prob >= float(conf["mask_threshold"])
            # a peak is judged where it will be published: at its refined position
            stable_where_published = stability_mask if not conf["subpixel"] else \
                pp.refined_peaks_where(stable_prob, outputs["offsets"].float(), peaks,
                                       float(conf["mask_threshold"]))
            if self.dense:
                best_class = F.interpolate(class_prob, size=heatmap.shape[-2:], mode="bilinear",
                                           align_corners=False).argmax(1)
                class_map = best_class.to(torch.uint8)
            else:
                best_class = pp.upsample_nearest(class_prob.argmax(1), 4, heatmap.shape[-2:])
            group_map = self.class_to_group[best_class].to(torch.uint8)
            if not conf["keep_unstable"]:
                # the best removed peaks, so overlays can show what the filter rejected
                rejected_xy, _, _, rejected_valid = pp.top_k_peaks(
                    heatmap, peaks & ~stable_where_published, int(conf["max_keypoints"]))
                extras["rejected_keypoints"] = (rejected_xy, rejected_valid)
                peaks &= stable_where_published

        xy, scores, index, valid = pp.top_k_peaks(heatmap, peaks, int(conf["max_keypoints"]))
        b, k = scores.shape
        if self.semantic_active:
            stable = pp.gather_pixels(stable_where_published[:, None], index)[..., 0]
            labels = pp.sample_bilinear(class_prob, xy, 4).argmax(-1)
            groups = self.class_to_group[labels]
        else:
            stable = torch.ones(b, k, dtype=torch.bool, device=xy.device)
            labels = groups = torch.full((b, k), UNKNOWN, dtype=torch.long, device=xy.device)

        if conf["subpixel"]:
            xy = xy + pp.gather_pixels(outputs["offsets"].float(), index)
            limit = (sizes.flip(-1) - 1).to(xy.dtype)[:, None]  # (W-1, H-1) per image
            xy = torch.minimum(xy.clamp(min=0), limit)
        descriptors = F.normalize(pp.sample_bilinear(outputs["descriptors"].float(), xy, CELL),
                                  dim=-1)

        zero = ~valid
        return Features(
            keypoints=xy.masked_fill(zero[..., None], 0), scores=scores,
            descriptors=descriptors.masked_fill(zero[..., None], 0),
            labels=labels.masked_fill(zero, UNKNOWN), groups=groups.masked_fill(zero, UNKNOWN),
            stable=stable & valid, valid=valid, image_sizes=sizes,
            stability_mask=stability_mask, group_map=group_map, stable_prob=stable_prob,
            class_map=class_map,
            semantic_active=self.semantic_active, extras=extras)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """An HxW (grey) or HxWx3 (RGB) array -> (C, H, W) float32 in [0, 1], with clear errors."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy image, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty ({image.shape[1]}x{image.shape[0]})")
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        scale = 1.0
    else:
        raise ValueError(f"unsupported image dtype {image.dtype} (use uint8, uint16 or float)")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).float() / scale
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)

