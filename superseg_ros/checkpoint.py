"""One checkpoint file = weights + full model config + class/group table + which heads were trained.

Loading validates every part and fails with a CheckpointError that names the file and the problem.
Files are read with `weights_only=True`: a checkpoint is data, never code to execute.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import ConfigError
from .fileio import write_atomically
from .network import HEADS, SuperSegmentation, model_config
from .semantics import validate_semantics

FORMAT = "superseg_ros.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def save_checkpoint(model: SuperSegmentation, path: str | os.PathLike, *,
                    trained_heads: dict | None = None, meta: dict | None = None,
                    half: bool = False, training_state: dict | None = None) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves a truncated checkpoint.

    `half=True` stores floating-point weights as fp16 (half the size); loading restores fp32.
    `training_state` (optimizer, step, ...) is stored beside the model for resuming; the file
    still loads as a model with load_model.
    """
    heads = dict(model.trained_heads if trained_heads is None else trained_heads)
    unknown = set(heads) - set(HEADS)
    if unknown:
        raise ValueError(f"unknown heads {sorted(unknown)}; heads are {', '.join(HEADS)}")
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model_config": dict(model.config), "semantics": dict(model.semantics),
        "trained_heads": {h: bool(heads.get(h, False)) for h in HEADS},
        "state_dict": state, "meta": dict(meta or {}),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    return write_atomically(path, lambda f: torch.save(payload, f))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate the file's structure (not the weights' fit: see load_model)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickled code, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated, corrupt or not a "
                              f"PyTorch file): {reason[:200]}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and payload and all(
                isinstance(v, torch.Tensor) for v in payload.values()):
            hint = ("it is a bare state dict; for ImageNet ResNet weights use "
                    "SuperSegmentation.load_imagenet_encoder")
        else:
            hint = f"top-level keys: {sorted(payload)[:8]}" if isinstance(payload, dict) \
                else f"it holds a {type(payload).__name__}"
        raise CheckpointError(f"{path}: not a superseg_ros checkpoint ({hint})")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is not supported "
                              f"(this superseg_ros reads version {FORMAT_VERSION})")
    missing = [k for k in ("model_config", "semantics", "trained_heads", "state_dict")
               if not isinstance(payload.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> SuperSegmentation:
    """Build the network from a checkpoint's config and load its weights, strictly."""
    payload = read_checkpoint(path)
    try:
        config = model_config(payload["model_config"])
        semantics = validate_semantics(payload["semantics"], config["num_classes"],
                                       source="checkpoint semantics")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    heads = payload["trained_heads"]
    if set(heads) != set(HEADS):
        raise CheckpointError(f"{path}: trained_heads must list exactly {', '.join(HEADS)}, "
                              f"got {', '.join(sorted(heads))}")
    model = SuperSegmentation(config, semantics)
    state = payload["state_dict"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatch = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatch:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", mismatch)):
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(f"{path}: weights do not match the model config: "
                              + "; ".join(details))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    model.trained_heads = {h: bool(heads[h]) for h in HEADS}
    model.meta = dict(payload.get("meta", {}))
    return model.to(device).eval()


def untrained_heads(model: SuperSegmentation) -> list[str]:
    return [h for h in HEADS if not model.trained_heads.get(h, False)]


BUNDLED_MODEL_NAME = "superseg.pt"
RANDOM = "random"


def bundled_model_path() -> Path | None:
    """The default model shipped in models/: in the source tree, or installed by colcon."""
    candidates = [Path(__file__).resolve().parent.parent / "models" / BUNDLED_MODEL_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory("superseg_ros")) / "models"
                          / BUNDLED_MODEL_NAME)
    except Exception:  # not in a ROS environment, or the package is not installed there
        pass
    return next((p for p in candidates if p.is_file()), None)


def open_model(spec: str | None, device: str | torch.device = "cpu",
               config: dict | None = None) -> tuple[SuperSegmentation, str]:
    """`spec` is a checkpoint path, 'random', or None for the bundled model.

    Returns (model, description); the description says plainly when weights are random.
    """
    if spec == RANDOM:
        model = SuperSegmentation(config).to(device).eval()
        return model, f"RANDOM WEIGHTS ({model.config['encoder']}, untrained: for tests only)"
    if spec is None:
        bundled = bundled_model_path()
        if bundled is None:
            raise CheckpointError(
                f"no bundled model: models/{BUNDLED_MODEL_NAME} does not exist yet; pass a "
                "checkpoint path, or 'random' for an untrained network (tests and demos only)")
        spec = str(bundled)
    if config:
        raise ConfigError("a model config can only be given with 'random'; a checkpoint "
                          "carries its own")
    model = load_model(spec, device)
    return model, f"{Path(spec).name} ({model.config['encoder']})"
