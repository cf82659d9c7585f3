"""Homographic adaptation (SuperPoint, DeTone et al. 2018, Sec. 5): pseudo-labels for real images.

A detector is run on many randomly warped copies of an image; each copy's heatmap is warped back
to the original frame and the copies are averaged. A point that the detector finds under many
viewpoints survives; one that depends on the viewpoint (or on an artefact of one warp) is diluted.
NMS + threshold on the aggregated heatmap gives the keypoint labels of the next training round.

Conventions (DEVELOPERS.md, `superseg_ros.homography`):
- Pixel (0, 0) is the centre of the top-left pixel, x right, y down.
- H_ab maps pixels of image A (the original) to image B (a warped copy); the copy is rendered so
  that image_b(H_ab x) = image_a(x), and its heatmap is brought back with inv(H_ab).
- Labels are stored in ORIGINAL image pixels, also when the adaptation ran on a resized image.

Validity, so that no label comes from an image edge instead of image content:
- In each warped copy, pixels whose bilinear footprint leaves the original (black "artifact"
  regions of allow_artifacts=True) are invalid, and the valid region is eroded by
  `valid_border_margin` px with the copy's own image border counting as invalid: the detector
  sees a step there (zero padding, black regions) and answers with corners that do not exist.
- The identity copy is the plain network output and counts everywhere (as in SuperPoint); the
  original image's own border is then handled by `border`, which drops labels near the edge.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import ConfigError, merge_config, require_choice
from ..extractor import image_to_tensor
from ..fileio import remove_stale_temp_files, write_atomically
from ..homography import (DEFAULT_HOMOGRAPHY_CONFIG, sample_homography, scaling_matrix,
                          warp_images_torch, warp_points)
from ..postprocess import inside_mask, nms_peaks, pad_to_multiple
from ..visualize import draw_keypoints

# The warp ranges of SuperPoint's COCO label export (rpautrat/SuperPoint,
# superpoint/configs/magic-point_coco_export.yaml + the defaults it does not override in
# superpoint/models/homographies.py `homography_adaptation_default_config`):
#   scaling_amplitude 0.2   -> truncated normal around 1 cut at +-2 sigma = +-0.2: scale [0.8, 1.2]
#   perspective_amplitude_x/y 0.2                                -> perspective 0.2
#   max_angle pi (adaptation default, not overridden)            -> rotation_deg 180
#   translation within the patch's free margin, no overflow      -> (1 - 0.85) / 2 = 0.075
#   patch_ratio 0.85, allow_artifacts true                       -> the same
ADAPTATION_HOMOGRAPHY = dict(DEFAULT_HOMOGRAPHY_CONFIG, perspective=0.2, scale=[0.8, 1.2],
                             rotation_deg=180.0, translation=0.075, patch_ratio=0.85,
                             allow_artifacts=True)

DEFAULT_CONFIG = {
    "num_homographies": 100,     # copies per image, the identity included (SuperPoint: 100)
    "batch_size": 10,            # warped copies per forward pass
    "homography": ADAPTATION_HOMOGRAPHY,
    "valid_border_margin": 3,    # px eroded from each copy's valid region (SuperPoint: 3)
    "aggregation": "mean",       # mean over the copies that see a pixel, or "max"
    "detection_threshold": 0.015,  # on the aggregated heatmap (SuperPoint's export: 0.015)
    "nms_radius": 4,             # px, square window (SuperPoint: nms 4)
    "border": 4,                 # px: no label closer than this to the image edge
    "max_keypoints": -1,         # best k by score; <= 0 keeps all (SuperPoint's export: all)
    "subpixel_refine": True,     # parabola fit on the aggregated heatmap, |offset| <= 0.5 px
    "resize": None,              # [H, W] to adapt at; labels are still in original pixels
    "seed": 0,
}

AGGREGATIONS = ("mean", "max")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")
SUMMARY_NAME = "adaptation.json"
PREVIEW_DIR = "previews"
LABEL_KEYS = ("keypoints", "scores", "image_size", "source")

# A bilinear sample of a 0/1 mask is 1 only if all four taps are 1 (up to float rounding).
_FULL = 1.0 - 1e-4


class PseudoLabelError(ValueError):
    """A pseudo-label file that cannot be used; the message names the file."""


# --- configuration -------------------------------------------------------------------------------


def adaptation_config(overrides: dict | None = None) -> dict:
    """DEFAULT_CONFIG updated with `overrides`, every key and value checked (ConfigError)."""
    conf = merge_config(DEFAULT_CONFIG, overrides, where="adaptation")
    for key, low in (("num_homographies", 1), ("batch_size", 1), ("valid_border_margin", 0),
                     ("nms_radius", 0), ("border", 0), ("seed", 0)):
        if not isinstance(conf[key], int) or conf[key] < low:
            raise ConfigError(f"adaptation.{key} must be an integer >= {low}, got {conf[key]!r}")
    require_choice(conf["aggregation"], AGGREGATIONS, "adaptation.aggregation")
    if not conf["detection_threshold"] >= 0:
        raise ConfigError("adaptation.detection_threshold must be >= 0")
    resize = conf["resize"]
    if resize is not None and (not isinstance(resize, (list, tuple)) or len(resize) != 2
                               or not all(isinstance(v, int) and v >= 8 for v in resize)):
        raise ConfigError(f"adaptation.resize must be null or [height, width] with integers "
                          f">= 8, got {resize!r}")
    try:  # bad ranges would otherwise fail on every image, one by one
        sample_homography(np.random.default_rng(0), 16, 16, **conf["homography"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"adaptation.homography: {exc}") from exc
    return conf


# --- aggregation ---------------------------------------------------------------------------------


def aggregate_heatmap(model, image: torch.Tensor, config: dict | None = None,
                      rng: np.random.Generator | None = None):
    """Heatmap of `image` aggregated over `num_homographies` views (identity + random warps).

    `image`: (C, H, W) float in [0, 1], C = 1 or 3 (converted to the model's input channels as
    the Extractor does); any H, W (each copy is padded to a multiple of 8 at the right/bottom and
    its heatmap cropped back). `model(batch, semantics=False)["heatmap"]` must give (B, H, W).
    The homographies are drawn from `rng` (default: seeded with config["seed"]) before any
    network call, so the result depends on the seed only, not on batch_size.

    Returns (heatmap, counts), both (H, W) float32 on the model's device: counts = how many copies
    saw each pixel (>= 1: the identity sees all), heatmap = mean (or max) over those copies.
    """
    conf = adaptation_config(config)
    rng = np.random.default_rng(conf["seed"]) if rng is None else rng
    return _aggregate(model, image, conf, rng)


def _aggregate(model, image: torch.Tensor, conf: dict, rng: np.random.Generator):
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (C, H, W) image with C = 1 or 3, got {tuple(image.shape)}")
    device = _model_device(model)
    image = _match_channels(image.to(device, torch.float32), _input_channels(model))
    h, w = image.shape[-2:]
    homographies = [sample_homography(rng, h, w, **conf["homography"])
                    for _ in range(conf["num_homographies"] - 1)]
    use_max = conf["aggregation"] == "max"
    with _evaluating(model), torch.inference_mode():
        total = _heatmaps(model, image[None])[0]  # identity: unmasked, seen everywhere
        counts = torch.ones_like(total)
        for start in range(0, len(homographies), conf["batch_size"]):
            chunk = np.stack(homographies[start:start + conf["batch_size"]])
            heat, seen = _warped_views(model, image, torch.from_numpy(chunk),
                                       conf["valid_border_margin"])
            total = torch.maximum(total, heat.amax(0)) if use_max else total + heat.sum(0)
            counts += seen.sum(0)
    heatmap = total if use_max else total / counts.clamp(min=1)
    return torch.where(counts > 0, heatmap, torch.zeros_like(heatmap)), counts


def _warped_views(model, image: torch.Tensor, h_ab: torch.Tensor, margin: int):
    """Heatmaps of the copies warped by h_ab (B, 3, 3), brought back to the original frame.

    Returns (heat, seen), (B, H, W) each: heat is 0 wherever seen is 0.
    """
    b = len(h_ab)
    # The image and a ones-mask in one warp (the sampling grid is most of a warp's cost).
    stacked = torch.cat([image, torch.ones_like(image[:1])])[None].expand(b, -1, -1, -1)
    warped = warp_images_torch(stacked, h_ab, padding_mode="zeros")
    warped, inside = warped[:, :-1], warped[:, -1] >= _FULL
    valid = erode(inside, margin).to(warped.dtype)
    heat = _heatmaps(model, warped) * valid
    h_ba = torch.linalg.inv(h_ab.to(torch.float64))
    back = warp_images_torch(torch.stack([heat, valid], 1), h_ba, padding_mode="zeros")
    # Only where every bilinear tap was valid: a blend with an invalid pixel is half an artefact.
    seen = (back[:, 1] >= _FULL).to(back.dtype)
    return back[:, 0] * seen, seen


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) bool mask shrunk by `radius` px (square window); outside the image is False,
    so the image border is eroded too."""
    if radius <= 0:
        return mask
    invalid = F.pad((~mask).float()[:, None], (radius,) * 4, value=1.0)
    return F.max_pool2d(invalid, 2 * radius + 1, stride=1)[:, 0] == 0


def _heatmaps(model, batch: torch.Tensor) -> torch.Tensor:
    """(B, H, W) heatmaps of a (B, C, H, W) batch of any size: padded to a multiple of 8 at the
    right/bottom by edge replication (no new edges, no pixel moves), cropped back."""
    h, w = batch.shape[-2:]
    out = model(pad_to_multiple(batch), semantics=False)["heatmap"]
    return out[:, :h, :w].float()


def _match_channels(image: torch.Tensor, want: int) -> torch.Tensor:
    """(C, H, W) -> (want, H, W); RGB -> grey by the channel mean, as the Extractor does."""
    if image.shape[0] == want:
        return image
    if image.shape[0] == 1:
        return image.expand(want, -1, -1)
    return image.mean(0, keepdim=True)


def _input_channels(model) -> int:
    return int(getattr(model, "config", {}).get("input_channels", 3))


def _model_device(model) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _evaluating(model):
    """Eval mode for the duration (batch norm must use running statistics), then restore it:
    a trainer may call this between training steps."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# --- labels --------------------------------------------------------------------------------------


def pseudo_labels(heatmap: torch.Tensor, counts: torch.Tensor, config: dict | None = None):
    """Keypoints of an aggregated (H, W) heatmap: NMS, threshold, border, top-k, sub-pixel.

    A label is a pixel that no pixel within `nms_radius` (square) exceeds, scores at least
    `detection_threshold`, lies at least `border` px inside the image and was seen (counts > 0).
    Pixels of a plateau of equal maxima all survive NMS (exact ties are rare in an average).
    Returns numpy (keypoints (N, 2) float32 x, y, scores (N,) float32), best score first;
    scores are the heatmap values at the integer peaks.
    """
    conf = adaptation_config(config)
    return _labels(heatmap, counts, conf)


def _labels(heatmap: torch.Tensor, counts: torch.Tensor, conf: dict):
    h, w = heatmap.shape
    keep = nms_peaks(heatmap[None], conf["nms_radius"])[0]
    keep &= heatmap >= conf["detection_threshold"]
    keep &= counts > 0
    sizes = torch.tensor([[h, w]], device=heatmap.device)
    keep &= inside_mask(sizes, (h, w), conf["border"])[0]
    ys, xs = torch.nonzero(keep, as_tuple=True)
    scores = heatmap[ys, xs]
    order = torch.argsort(scores, descending=True, stable=True)
    if conf["max_keypoints"] > 0:
        order = order[:conf["max_keypoints"]]
    xs, ys, scores = xs[order], ys[order], scores[order]
    xy = torch.stack([xs, ys], -1).to(torch.float32)
    if conf["subpixel_refine"] and len(xy):
        xy = xy + parabola_offsets(heatmap, xs, ys)
    return (xy.cpu().numpy().astype(np.float32).reshape(-1, 2),
            scores.cpu().numpy().astype(np.float32))


def parabola_offsets(heatmap: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(N, 2) sub-pixel (dx, dy) of peaks at integer (xs, ys): per axis, the vertex of the
    parabola through the peak and its two neighbours, clamped to +-0.5 px (beyond that the
    neighbour would be the peak). No curvature (flat or not a maximum) -> 0. Neighbours outside
    the image repeat the edge pixel."""
    h, w = heatmap.shape

    def vertex(left, centre, right):
        curvature = left - 2 * centre + right
        offset = 0.5 * (left - right) / torch.where(curvature < 0, curvature,
                                                    torch.ones_like(curvature))
        return torch.where(curvature < 0, offset, torch.zeros_like(offset)).clamp(-0.5, 0.5)

    centre = heatmap[ys, xs]
    dx = vertex(heatmap[ys, (xs - 1).clamp(min=0)], centre, heatmap[ys, (xs + 1).clamp(max=w - 1)])
    dy = vertex(heatmap[(ys - 1).clamp(min=0), xs], centre, heatmap[(ys + 1).clamp(max=h - 1), xs])
    return torch.stack([dx, dy], -1).to(torch.float32)


# --- one image -----------------------------------------------------------------------------------


def adapt_image(model, image: np.ndarray, config: dict | None = None,
                rng: np.random.Generator | None = None) -> dict:
    """Pseudo-labels of one image: an (H, W, 3) RGB or (H, W) grey array (uint8, uint16 or float
    in [0, 1]).

    With config["resize"] = [h, w] the adaptation runs on the image resized to that size (cv2,
    pixel-centre convention) and the keypoints are mapped back with inv(scaling_matrix).
    Returns keypoints (N, 2) float32 in ORIGINAL pixels, scores (N,) float32, image_size
    (H, W) of the original, and heatmap / counts (numpy float32) in the adaptation frame.
    """
    conf = adaptation_config(config)
    rng = np.random.default_rng(conf["seed"]) if rng is None else rng
    height, width = image.shape[:2]
    work = image
    if conf["resize"] is not None:
        rh, rw = conf["resize"]
        shrink = rh * rw < height * width
        work = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if shrink
                          else cv2.INTER_LINEAR)
    heatmap, counts = _aggregate(model, image_to_tensor(work), conf, rng)
    keypoints, scores = _labels(heatmap, counts, conf)
    if conf["resize"] is not None and len(keypoints):
        to_original = np.linalg.inv(scaling_matrix(work.shape[1] / width, work.shape[0] / height))
        keypoints = warp_points(to_original, keypoints).astype(np.float32)
    return {"keypoints": keypoints, "scores": scores, "image_size": (height, width),
            "heatmap": heatmap.cpu().numpy(), "counts": counts.cpu().numpy()}


# --- files ---------------------------------------------------------------------------------------


def list_images(folder: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Images under `folder` (recursive, sorted by relative path; IMAGE_SUFFIXES, any case),
    leaving out everything under `exclude` (the output folder may sit inside the input)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} does not exist or is not a folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    images = sorted((p.relative_to(folder) for p in folder.rglob("*")
                     if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                     and not (skip and p.resolve().is_relative_to(skip))),
                    key=lambda p: p.as_posix())
    if not images:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return images


def label_path(output: Path, relative: Path) -> Path:
    """<output>/<relative path without suffix>.npz."""
    return output / relative.with_suffix(".npz")


def write_pseudo_labels(path: Path, keypoints: np.ndarray, scores: np.ndarray, image_size,
                        source: str) -> Path:
    """One label file, written atomically (a crash never leaves a half-written .npz)."""
    arrays = {"keypoints": np.asarray(keypoints, np.float32).reshape(-1, 2),
              "scores": np.asarray(scores, np.float32).reshape(-1),
              "image_size": np.asarray(image_size, np.int32), "source": np.array(str(source))}
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def read_pseudo_labels(path: str | Path) -> dict:
    """{keypoints (N, 2) float32 x, y in original pixels, scores (N,) float32,
    image_size (H, W) ints, source str}; PseudoLabelError naming the file if anything is off."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in LABEL_KEYS if k not in data.files]
            if missing:
                raise PseudoLabelError(f"{path}: not a pseudo-label file (missing "
                                       f"{', '.join(missing)}; has {', '.join(data.files)})")
            arrays = {k: data[k] for k in LABEL_KEYS}
    except PseudoLabelError:
        raise
    except Exception as exc:  # missing, truncated, not a zip, pickled objects, ...
        raise PseudoLabelError(f"{path}: cannot read pseudo-labels: {exc}") from exc
    keypoints, scores, size = arrays["keypoints"], arrays["scores"], arrays["image_size"]
    if keypoints.dtype != np.float32 or keypoints.ndim != 2 or keypoints.shape[1] != 2:
        raise PseudoLabelError(f"{path}: keypoints must be (N, 2) float32, got "
                               f"{keypoints.shape} {keypoints.dtype}")
    if scores.shape != (len(keypoints),) or not np.issubdtype(scores.dtype, np.floating):
        raise PseudoLabelError(f"{path}: scores must be ({len(keypoints)},) float, got "
                               f"{scores.shape} {scores.dtype}")
    if size.shape != (2,) or not np.issubdtype(size.dtype, np.integer) or (size < 1).any():
        raise PseudoLabelError(f"{path}: image_size must be two positive integers (H, W), got "
                               f"{size!r}")
    h, w = (int(v) for v in size)
    inside = ((keypoints >= -0.5) & (keypoints <= [w - 0.5, h - 0.5])).all(1)
    if not np.isfinite(keypoints).all() or not inside.all():
        raise PseudoLabelError(f"{path}: keypoints outside the {w}x{h} image")
    if arrays["source"].ndim != 0 or arrays["source"].dtype.kind != "U":
        raise PseudoLabelError(f"{path}: source must be a string")
    return {"keypoints": keypoints, "scores": scores.astype(np.float32), "image_size": (h, w),
            "source": str(arrays["source"])}


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ValueError("not an image or an unsupported format")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def render_preview(image: np.ndarray, result: dict, title: str) -> np.ndarray:
    """BGR picture: the image with its labels (green circles) | the aggregated heatmap."""
    left = draw_keypoints(image, result["keypoints"], np.ones(len(result["keypoints"]), bool),
                          title)
    heat = result["heatmap"]
    heat = cv2.resize(heat / max(float(heat.max()), 1e-6), (image.shape[1], image.shape[0]),
                      interpolation=cv2.INTER_LINEAR)
    right = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.hstack([left, right])


def _write_png(path: Path, picture: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise ValueError(f"cannot encode {path.name}")
    write_atomically(path, lambda f: f.write(encoded.tobytes()))


def adapt_folder(model, images: str | Path, output: str | Path, config: dict | None = None,
                 device: str | torch.device = "cpu", progress: bool = True, preview: int = 8, *,
                 overwrite: bool = False, model_description: str | None = None) -> dict:
    """Pseudo-label every image under `images` (recursive; COCO's train2014/*.jpg works as is).

    Writes <output>/<relative path without suffix>.npz per image (see read_pseudo_labels),
    previews of the first `preview` images labelled in this run under <output>/previews/, and
    <output>/adaptation.json (the returned summary). An existing valid .npz is kept unless
    `overwrite` (resume after an interruption). Image i of the sorted list always uses
    default_rng((seed, i)), so resumed and uninterrupted runs give the same labels. An unreadable
    image is reported on stderr and counted in the summary; the others go on.
    The model is moved to `device`.
    """
    start = time.perf_counter()
    conf = adaptation_config(config)
    images, output = Path(images), Path(output)
    files = list_images(images, exclude=output)
    _check_unique_outputs(files)
    # the temp files of label/preview writes that a killed run left (their targets were never
    # renamed into place, so those images are labelled again below)
    remove_stale_temp_files(output, recursive=True)
    model = model.to(device)
    failures, keypoint_counts = [], []
    processed = skipped = 0
    for index, relative in enumerate(tqdm(files, desc="adapt", unit="img", disable=not progress)):
        target = label_path(output, relative)
        if not overwrite and target.exists():
            try:
                keypoint_counts.append(len(read_pseudo_labels(target)["keypoints"]))
                skipped += 1
                continue
            except PseudoLabelError:
                pass  # incomplete or foreign: label again
        try:
            image = read_rgb(images / relative)
        except (ValueError, cv2.error) as exc:
            failures.append(f"{relative.as_posix()}: {exc}")
            tqdm.write(f"adaptation: cannot read {relative.as_posix()}: {exc}", file=sys.stderr)
            continue
        result = adapt_image(model, image, conf, np.random.default_rng((conf["seed"], index)))
        write_pseudo_labels(target, result["keypoints"], result["scores"], result["image_size"],
                            relative.as_posix())
        if processed < preview:
            title = f"{relative.as_posix()} | {len(result['keypoints'])} labels"
            _write_png(output / PREVIEW_DIR / relative.with_suffix(".png"),
                       render_preview(image, result, title))
        processed += 1
        keypoint_counts.append(len(result["keypoints"]))
    summary = _summary(model, model_description, conf, images, len(files), processed, skipped,
                       failures, keypoint_counts, time.perf_counter() - start)
    write_atomically(output / SUMMARY_NAME,
                     lambda f: f.write(json.dumps(summary, indent=2).encode() + b"\n"))
    return summary


def _check_unique_outputs(files: list[Path]) -> None:
    seen = {}
    for relative in files:
        key = relative.with_suffix("").as_posix()
        if key in seen:
            raise ConfigError(f"{seen[key].as_posix()} and {relative.as_posix()} would both be "
                              f"labelled as {key}.npz; rename one of them")
        seen[key] = relative


def _summary(model, description, conf, images, count, processed, skipped, failures, counts,
             seconds) -> dict:
    counts = np.asarray(counts, np.float64)
    return {
        "model": description or type(model).__name__,
        "model_meta": _jsonable(getattr(model, "meta", {})),
        "model_config": _jsonable(getattr(model, "config", {})),
        "config": conf, "seed": conf["seed"], "images_dir": str(images),
        "images": count, "labelled": processed, "skipped_existing": skipped,
        "failed": len(failures), "failures": failures,
        "keypoints_per_image_mean": float(counts.mean()) if len(counts) else None,
        "keypoints_per_image_median": float(np.median(counts)) if len(counts) else None,
        "wall_time_s": round(seconds, 3),
    }


def _jsonable(value):
    """A deep copy that json.dumps accepts (odd leaves become strings, NaN becomes None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
