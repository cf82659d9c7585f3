"""One checkpoint file = weights + full model config + class/group table + which heads were trained.

Loading validates every part and fails with a CheckpointError that names the file and the problem.
Files are read with `weights_only=True`: a checkpoint is data, never code to execute. A file that
does not load is described from its bytes (never with PyTorch's text, which for pickled objects
advises turning weights_only off).
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import pickletools
import re
import zipfile
import zlib
from pathlib import Path

import torch

from .config import ConfigError
from .fileio import write_atomically
from .network import HEADS, SuperSegmentation, model_config
from .semantics import validate_semantics

FORMAT = "superseg_ros.checkpoint"
FORMAT_VERSION = 1
# Checkpoints written before architecture presets existed have no `preset` in their config: they
# are all the dilated architecture (models/superseg.pt included).
LEGACY_PRESET = "dilated"
# Said after what a rejected file is instead.
CHECKPOINT_IS = ("A checkpoint is a file written by superseg-train or "
                 "superseg_ros.checkpoint.save_checkpoint: a torch.save'd dict with format "
                 f"'{FORMAT}', model_config, semantics, trained_heads and state_dict.")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Tags of the ModelProto fields that follow ir_version (field 1) in an ONNX file: producer_name,
# producer_version, domain, model_version, doc_string, graph, opset_import.
ONNX_NEXT_TAGS = (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42)


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
        try:
            what = describe_file(path, exc)
        except Exception:  # noqa: BLE001 - only a description: it must not be the crash
            what = f"a file torch cannot read ({type(exc).__name__})"
        # `from None`: even a traceback must not carry torch's advice to unpickle the file.
        raise CheckpointError(f"{path}: not a readable checkpoint: it is "
                              f"{what}. {CHECKPOINT_IS}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and payload and all(
                isinstance(v, torch.Tensor) for v in payload.values()):
            hint = ("it is a bare state dict; for ImageNet ResNet weights use "
                    "SuperSegmentation.load_imagenet_encoder")
        else:
            hint = f"top-level keys: {sorted(payload)[:8]}" if isinstance(payload, dict) \
                else f"it holds a {type(payload).__name__}"
        raise CheckpointError(f"{path}: not a superseg_ros checkpoint ({hint}). {CHECKPOINT_IS}")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is not supported "
                              f"(this superseg_ros reads version {FORMAT_VERSION})")
    missing = [k for k in ("model_config", "semantics", "trained_heads", "state_dict")
               if not isinstance(payload.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def describe_file(path: Path, load_error: Exception) -> str:
    """What a file torch.load refused is, from its first bytes and structure (nothing is run)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        return _describe_zip(path, head, load_error)
    if head.startswith(PNG_MAGIC) or head.startswith(JPEG_MAGIC):
        return f"a {'PNG' if head.startswith(PNG_MAGIC) else 'JPEG'} image"
    if len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in ONNX_NEXT_TAGS:
        return ("an ONNX model (protobuf): an exported network, which superseg_ros does not load; "
                "pass the .pt checkpoint it was exported from")
    if head[0] == 0x80:  # pickle protocol 2+: a plain pickle or a legacy (pre-1.6) torch.save
        return _describe_pickle(path.read_bytes(), "a plain Python pickle or a legacy PyTorch "
                                "file", load_error)
    text = _as_text(head)
    if text is not None:
        return _describe_text(text)
    return "unknown binary data"


def _describe_zip(path: Path, head: bytes, load_error: Exception) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pkl = next((n for n in names if n.rpartition("/")[2] == "data.pkl"), None)
            if pkl is None:
                return (f"a zip archive that is not a PyTorch file (no data.pkl; it holds "
                        f"{', '.join(names[:3]) or 'nothing'}{', ...' * (len(names) > 3)})")
            data = archive.read(pkl)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError, zlib.error):
        # No readable zip directory (it is at the end): the file was cut short or damaged.
        # torch.save writes <name>/data.pkl first, so the first entry says what it was.
        name_len = int.from_bytes(head[26:28], "little") if len(head) >= 30 else 0
        if head[30:30 + name_len].rpartition(b"/")[2] == b"data.pkl":
            return ("a truncated or corrupt PyTorch archive (its zip directory is missing or "
                    "damaged: e.g. an interrupted copy or download; copy it again)")
        return "a truncated or corrupt zip archive, not a PyTorch file"
    return _describe_pickle(data, "a PyTorch file", load_error)


def _describe_pickle(data: bytes, what: str, load_error: Exception) -> str:
    found = _pickle_globals(data)
    if found is None:
        return f"{what} whose pickle is truncated or corrupt"
    foreign = list(dict.fromkeys(g for g in found if not _is_plain_global(g)))
    if foreign or isinstance(load_error, pickle.UnpicklingError):
        modules = [g for g in foreign if g.startswith("torch.nn.")]
        listing = f" (a whole pickled nn.Module: {', '.join(modules[:3])})" if modules else \
            f" ({', '.join(foreign[:3])})" if foreign else ""
        return (f"{what} whose pickle holds Python objects other than tensors and plain "
                f"containers{listing}; superseg_ros never unpickles code")
    return f"{what} that is truncated or corrupt (its tensor data does not load)"


def _pickle_globals(data: bytes) -> list[str] | None:
    """'module.name' of every class or function a pickle refers to, read without running it;
    None if not even one whole pickle is there. Legacy torch files hold several pickles in a
    row (then raw tensor bytes, where reading stops)."""
    found, stream, complete = [], io.BytesIO(data), 0
    try:
        while stream.tell() < len(data):
            found += _globals_of_one_pickle(stream)
            complete += 1
    except Exception:  # noqa: BLE001 - pickletools raises several kinds on bad bytes
        if not complete:
            return None
    return [g.replace("__builtin__.", "builtins.", 1) for g in found]


def _globals_of_one_pickle(stream: io.BytesIO) -> list[str]:
    """GLOBAL names its class inline (protocol 2, torch.save's); STACK_GLOBAL (protocol 4+)
    takes the two strings pushed before it, directly or from the memo."""
    found, strings, memo, top = [], [], {}, None
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        if op.name == "MEMOIZE":  # memoizes the top of the stack; the stack is unchanged
            memo[len(memo)] = top
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = top
        else:  # what this op pushed, when it is a string
            top = memo.get(arg) if op.name in ("GET", "BINGET", "LONG_BINGET") else \
                arg if "UNICODE" in op.name else None
            if isinstance(top, str):
                strings.append(top)
    return found


def _is_plain_global(name: str) -> bool:
    """What a tensor-and-container checkpoint refers to (torch's weights_only allow-list)."""
    module, _, attr = name.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return attr in ("set", "frozenset", "complex", "slice", "bytearray")
    if module == "torch":
        return attr.endswith("Storage") or attr in ("Size", "device") or \
            isinstance(getattr(torch, attr, None), torch.dtype)
    return module == "torch._utils" or name == "collections.OrderedDict"


def _as_text(head: bytes) -> str | None:
    """The start of a UTF-8 text file (a multi-byte character may be cut at the end)."""
    if b"\x00" in head:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None


def _describe_text(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if not ln.startswith("#")), lines[0] if lines else "")
    if first[:1] in ("{", "["):
        kind = "JSON"
    elif re.match(r"^[\w.\-\"']+\s*:", first):
        kind = "YAML, e.g. a config"
    else:
        kind = "plain text"
    return f"a text file ({kind}, starting {first[:40]!r})"


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> SuperSegmentation:
    """Build the network from a checkpoint's config and load its weights, strictly."""
    payload = read_checkpoint(path)
    try:
        config = model_config({"preset": LEGACY_PRESET, **payload["model_config"]})
        semantics = validate_semantics(payload["semantics"], config["num_classes"],
                                       source="checkpoint semantics")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    heads = payload["trained_heads"]
    if set(heads) != set(HEADS):
        raise CheckpointError(f"{path}: trained_heads must list exactly {', '.join(HEADS)}, "
                              f"got {', '.join(sorted(heads))}")
    state = payload["state_dict"]
    odd = [f"{k} ({type(v).__name__})" for k, v in state.items()
           if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"{path}: state_dict values must be tensors, got "
                              f"{', '.join(odd[:3])}")
    # Shapes first, on the meta device (no memory): a config that contradicts the file's
    # tensors, e.g. one that would build a huge network, is refused before anything is built.
    try:
        with torch.device("meta"):
            own = SuperSegmentation(config, semantics).state_dict()
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: its model config cannot build a network ({exc})") \
            from None
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
    model = SuperSegmentation(config, semantics)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    model.trained_heads = {h: bool(heads[h]) for h in HEADS}
    meta = payload.get("meta", {})
    model.meta = dict(meta) if isinstance(meta, dict) else {}
    model.checkpoint_path = Path(path)  # exported-graph caches are keyed by this file
    return model.to(device).eval()


# Model settings that choose how trained weights are read, not what they are: they may change
# after training (tools/ship_model.py --set). Anything else would need retraining.
REFINEMENT_KEYS = ("subpixel_window", "subpixel_head")


def with_refinement(model: SuperSegmentation, settings: dict) -> tuple[SuperSegmentation, list]:
    """A copy of `model` with other sub-pixel refinement settings (REFINEMENT_KEYS) and the same
    weights; weights of a part the new settings do not build (the sub-pixel head when
    subpixel_head is false) are left out. Returns (model, names of the dropped weights)."""
    other = sorted(set(settings) - set(REFINEMENT_KEYS))
    if other:
        raise ConfigError(f"{', '.join(other)}: only {', '.join(REFINEMENT_KEYS)} can change "
                          "after training (the others change what the weights mean)")
    new = SuperSegmentation({**model.config, **settings}, model.semantics)
    own, state = new.state_dict(), model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ConfigError(f"{', '.join(f'{k}={v!r}' for k, v in settings.items())} needs weights "
                          f"this model does not have (e.g. {missing[0]}): train them instead")
    new.load_state_dict({k: state[k] for k in own})
    new.trained_heads, new.meta = dict(model.trained_heads), dict(model.meta)
    return new.to(model.device).eval(), sorted(set(state) - set(own))


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
