"""Inference backends: SuperSegmentation's forward pass in torch, ONNX Runtime or OpenVINO.

    runner = make_runner("onnxruntime", model, torch.device("cpu"), semantics=True,
                         checkpoint="models/superseg.pt")
    outputs = runner(batch)  # batch (B, C, H, W) float32 on the device, H and W multiples of 8

Every runner returns the same dict of torch tensors on the extractor's device, so the
post-processing never knows which one ran (shapes as in superseg_ros.export):
    heatmap (B, H, W), descriptors (B, D, H/8, W/8), offsets (B, 2, H, W) and, only when the
    semantic filter is active, segmentation (B, M, H/4, W/4) class logits.

ONNX Runtime and OpenVINO run the graph written by superseg_ros.export, cached in a file keyed by
the checkpoint's content (graph_cache_path): exported once (seconds), reused until the checkpoint
or the network code changes. The runtimes are optional packages, imported only when chosen.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import ConfigError
from .export import (INPUT_NAME, MissingOnnxDependency, OnnxParityError, export_onnx,
                     output_names, verify_onnx)
from .network import SuperSegmentation

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
BACKEND_CHOICES = BACKENDS + ("auto",)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# `auto` on the CPU: the first installed, fastest first. Network only, fp32, 2 threads, this
# project's 2-core AMD EPYC, 480x640 and 240x320, bundled and default models: OpenVINO took
# 0.82-1.02x (median 0.95x) of ONNX Runtime's time, torch 1.2-1.9x; OpenVINO in bf16 0.5x.
AUTO_ORDER_CPU = ("openvino", "onnxruntime", "torch")
INSTALL_HINTS = {
    "onnxruntime": "pip install onnxruntime (onnxruntime-gpu for CUDA)",
    "openvino": "pip install openvino",
}
TENSORRT, CUDA_PROVIDER, CPU_PROVIDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                         "CPUExecutionProvider")
# The graph is traced at this size; any multiple of 8 gives the same graph (B, H, W dynamic).
EXPORT_SIZE = (128, 160)
# Checked against torch right after export; small, and 72 is not a multiple of 16 or 32.
CACHE_VERIFY_SIZES = ((120, 160), (72, 104))
# Files whose code decides what the exported graph computes: part of the cache key.
GRAPH_CODE = ("network/*.py", "export.py")


class BackendUnavailable(ConfigError):
    """The chosen backend cannot run here; the message says what to install or change."""


# ------------------------------------------------------------------------------- the decisions
def effective_precision(precision: str, device_type: str) -> str:
    """'auto' is fp16 on CUDA (tensor cores) and fp32 elsewhere; others are what they say."""
    if precision == "auto":
        return "fp16" if device_type == "cuda" else "fp32"
    return precision


@dataclass(frozen=True)
class TorchPlan:
    autocast: torch.dtype | None  # None: plain fp32
    channels_last: bool


def torch_plan(device_type: str, precision: str) -> TorchPlan:
    """How torch runs the network on this device, at this (effective or 'auto') precision."""
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[
        effective_precision(precision, device_type)]
    # NHWC lets cuDNN use its tensor-core convolutions; on the CPU, NCHW is what the
    # export and the parity tests use, so the CPU path stays exactly as before.
    return TorchPlan(dtype, channels_last=device_type == "cuda")


def check_precision(backend: str, device_type: str, precision: str) -> None:
    """ConfigError for a precision the backend cannot run on this device."""
    effective = effective_precision(precision, device_type)
    if effective == "fp16" and device_type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    if backend == "onnxruntime" and effective == "bf16":
        raise ConfigError("backend onnxruntime runs the fp32 graph (fp16 only with TensorRT); "
                          "precision bf16 needs backend torch or openvino")
    if backend == "openvino" and device_type != "cpu":
        raise ConfigError("backend openvino runs on the CPU only: use device cpu, or backend "
                          "torch or onnxruntime on CUDA")


def auto_backend(device_type: str, installed: dict[str, tuple[str, ...]]) -> str:
    """The fastest backend for the device among `installed` (installed_runtimes()'s answer)."""
    if device_type == "cuda":
        # TensorRT builds fp16 engines; ONNX Runtime's CUDA provider alone runs the fp32 graph
        # and is not expected to beat torch's fp16 autocast (not measured: no GPU here).
        return "onnxruntime" if TENSORRT in installed.get("onnxruntime", ()) else "torch"
    return next(b for b in AUTO_ORDER_CPU if b == "torch" or b in installed)


def ort_providers(device: torch.device, available: tuple[str, ...], fp16: bool,
                  engine_dir: Path) -> list:
    """ONNX Runtime's execution providers for the device, best first, CPU as the fallback."""
    if device.type != "cuda":
        return [CPU_PROVIDER]
    index = device.index or 0
    chosen = []
    if TENSORRT in available:
        # building an engine takes a while per input size: TensorRT keeps them in engine_dir
        chosen.append((TENSORRT, {"device_id": index, "trt_fp16_enable": fp16,
                                  "trt_engine_cache_enable": True,
                                  "trt_engine_cache_path": str(engine_dir)}))
    if CUDA_PROVIDER in available:
        chosen.append((CUDA_PROVIDER, {"device_id": index}))
    if not chosen:
        raise BackendUnavailable(
            "backend onnxruntime on CUDA needs onnxruntime-gpu (the installed onnxruntime has no "
            f"CUDA provider, only {', '.join(available)}): pip uninstall onnxruntime && pip "
            "install onnxruntime-gpu")
    return chosen + [CPU_PROVIDER]


# ----------------------------------------------------------------------------- the runtimes
def import_runtime(backend: str):
    """The backend's Python package, or BackendUnavailable naming what to install."""
    try:
        return importlib.import_module(backend)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {backend} needs the {backend} package: "
                                 f"{INSTALL_HINTS[backend]}") from exc


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def installed_runtimes() -> dict[str, tuple[str, ...]]:
    """{runtime: its providers (onnxruntime) or devices (openvino)} for those that can run here,
    i.e. are installed along with the exporter (onnx, onnxscript)."""
    if not (_importable("onnx") and _importable("onnxscript")):
        return {}
    found = {}
    if _importable("onnxruntime"):
        found["onnxruntime"] = tuple(import_runtime("onnxruntime").get_available_providers())
    if _importable("openvino"):
        found["openvino"] = tuple(import_runtime("openvino").Core().available_devices)
    return found


# ---------------------------------------------------------------------------- the graph cache
def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "superseg_ros"


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_digest(model: SuperSegmentation) -> str:
    """sha256 of the model's config and weights: the key of a model that has no file."""
    digest = hashlib.sha256(json.dumps(model.config, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def graph_code_digest() -> str:
    """sha256 of the source that defines the graph: an edit to the network rebuilds caches."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for pattern in GRAPH_CODE for p in root.glob(pattern)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def graph_cache_path(model: SuperSegmentation, semantics: bool,
                     checkpoint: str | os.PathLike | None = None) -> Path:
    """Where the exported graph of this model lives.

    With a checkpoint: <folder>/<stem>.<sha256 of the file, 16 hex>.<code>.<sem|nosem>.onnx in
    the checkpoint's folder, or in user_cache_dir() when that folder is not writable (an
    installed share/ directory). Without one (a random or in-memory model): model.<sha256 of
    config and weights, 16 hex>.<code>.<sem|nosem>.onnx in user_cache_dir(). <code> is 8 hex of
    graph_code_digest(); sem/nosem: with or without the segmentation output.
    """
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        folder, stem, digest = checkpoint.parent, checkpoint.stem, file_digest(checkpoint)
        if not os.access(folder, os.W_OK):
            folder = user_cache_dir()
    else:
        folder, stem, digest = user_cache_dir(), "model", state_digest(model)
    tag = "sem" if semantics else "nosem"
    return folder / f"{stem}.{digest[:16]}.{graph_code_digest()[:8]}.{tag}.onnx"


def remove_stale_graphs(path: Path) -> None:
    """Delete this checkpoint's graphs of older contents or code (same stem and outputs)."""
    stem, _, _, tag, _ = path.name.rsplit(".", 4)
    pattern = re.compile(rf"{re.escape(stem)}\.[0-9a-f]{{16}}\.[0-9a-f]{{8}}\.{tag}\.onnx")
    for old in path.parent.glob(f"{stem}.*.{tag}.onnx"):
        if old != path and pattern.fullmatch(old.name):
            with contextlib.suppress(OSError):  # another process may have removed it
                old.unlink()


def export_graph(model: SuperSegmentation, path: Path, semantics: bool, backend: str) -> None:
    """Export with superseg_ros.export and check the file against torch before anyone uses it."""
    try:
        export_onnx(model, path, *EXPORT_SIZE, semantics=semantics)
        verify_onnx(model, path, sizes=CACHE_VERIFY_SIZES, semantics=semantics)
    except MissingOnnxDependency as exc:
        raise BackendUnavailable(f"backend {backend}: {exc}") from exc
    except OnnxParityError as exc:
        path.unlink(missing_ok=True)
        raise BackendUnavailable(f"backend {backend}: the exported graph does not reproduce "
                                 f"the torch model, so it is not used ({exc}); use backend "
                                 "torch") from exc


def cached_graph(model: SuperSegmentation, semantics: bool, checkpoint, backend: str,
                 open_graph: Callable[[Path], object]) -> tuple[object, Path, bool]:
    """(open_graph(path), path, exported now?) for the model's cached graph.

    A missing file is exported; a file that does not open (truncated, corrupt) gets one warning
    line naming it and is rebuilt.
    """
    path = graph_cache_path(model, semantics, checkpoint)
    if path.is_file():
        try:
            return open_graph(path), path, False
        except Exception as exc:  # noqa: BLE001 - each runtime raises its own kinds on bad bytes
            log.warning("cached ONNX graph %s cannot be read (%s): rebuilding it", path,
                        _last_line(exc))
    export_graph(model, path, semantics, backend)
    if checkpoint is not None:
        remove_stale_graphs(path)
    return open_graph(path), path, True


def _last_line(exc: Exception) -> str:
    """The gist of a runtime's error: its last line (OpenVINO's first lines are source places)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


# -------------------------------------------------------------------------------- the runners
def _numpy_input(batch: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) float32 contiguous on the CPU (a grey image expanded to 3 is a view)."""
    return np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())


def _to_torch(arrays, names, device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.asarray(a)).to(device) for name, a in zip(names, arrays)}


class TorchRunner:
    """The model in eager mode; on CUDA under fp16 autocast with channels_last tensors."""

    name = "torch"

    def __init__(self, model: SuperSegmentation, device: torch.device, semantics: bool,
                 precision: str):
        self.plan = torch_plan(device.type, precision)
        self.device, self.semantics = device, semantics
        self.outputs = output_names(semantics)
        self.model = model.to(device)
        if self.plan.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        dtype = "fp32" if self.plan.autocast is None else str(self.plan.autocast).split(".")[-1]
        self.description = f"torch ({dtype}{', channels_last' * self.plan.channels_last})"

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.plan.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.model(batch, semantics=self.semantics)
        return {name: out[name] for name in self.outputs}

    def _autocast(self):
        if self.plan.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.plan.autocast)


class OnnxRuntimeRunner:
    """An ONNX Runtime session on the cached graph (CPU; CUDA/TensorRT when installed)."""

    name = "onnxruntime"

    def __init__(self, session, outputs: tuple[str, ...], device: torch.device, description: str):
        self.session, self.outputs, self.device = session, outputs, device
        self.description = description

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        arrays = self.session.run(list(self.outputs), {INPUT_NAME: _numpy_input(batch)})
        return _to_torch(arrays, self.outputs, self.device)


def onnxruntime_runner(model, device, semantics, precision, checkpoint) -> OnnxRuntimeRunner:
    ort = import_runtime("onnxruntime")
    fp16 = effective_precision(precision, device.type) == "fp16"

    def open_session(path: Path):
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        # the same number of threads as torch, so comparisons between backends are fair
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # no busy-waiting between runs: spinning threads would take the cores from the
        # post-processing and the node's own work that follow each forward pass
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ort_providers(device, tuple(ort.get_available_providers()), fp16,
                                  user_cache_dir() / "tensorrt")
        return ort.InferenceSession(str(path), options, providers=providers)

    session, path, exported = cached_graph(model, semantics, checkpoint, "onnxruntime",
                                           open_session)
    used = ", ".join(session.get_providers())
    return OnnxRuntimeRunner(session, output_names(semantics), device,
                             _description("onnxruntime", used, path, exported))


class OpenVinoRunner:
    """OpenVINO on the CPU: the cached graph compiled once, batch, H and W left dynamic
    (measured as fast as a graph compiled per input shape)."""

    name = "openvino"

    def __init__(self, request, outputs: tuple[str, ...], description: str):
        self.request, self.outputs, self.description = request, outputs, description

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.request.infer({INPUT_NAME: _numpy_input(batch)})  # outputs are copies
        return _to_torch((result[name] for name in self.outputs), self.outputs, batch.device)


def openvino_runner(model, device, semantics, precision, checkpoint) -> OpenVinoRunner:
    ov = import_runtime("openvino")
    core = ov.Core()
    hint = {"fp32": "f32", "bf16": "bf16"}[effective_precision(precision, device.type)]
    # f32 explicitly: on CPUs with bf16 instructions OpenVINO would otherwise run in bf16;
    # threads as torch's, so comparisons between backends are fair
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": hint}
    # the ONNX reader alone: core.read_model would try every format's reader on a corrupt file
    reader = ov.frontend.FrontEndManager().load_by_framework("onnx")
    compiled, path, exported = cached_graph(
        model, semantics, checkpoint, "openvino",
        lambda p: core.compile_model(reader.convert(reader.load(str(p))), "CPU", config))
    return OpenVinoRunner(compiled.create_infer_request(), output_names(semantics),
                          _description("openvino", f"CPU, {hint}", path, exported))


def _description(backend: str, how: str, path: Path, exported: bool) -> str:
    return f"{backend} ({how}) on {'newly exported' if exported else 'cached'} graph {path}"


RUNNER_FACTORIES = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}


def make_runner(backend: str, model: SuperSegmentation, device: torch.device, *,
                semantics: bool, precision: str = "auto",
                checkpoint: str | os.PathLike | None = None):
    """The runner for `backend` ('auto': the fastest installed for the device).

    `checkpoint`: the file `model` was loaded from, which keys and places the graph cache; None
    keys it by the model's config and weights. Raises BackendUnavailable (a ConfigError) with
    what to install when the runtime is missing, ConfigError for an impossible precision.
    """
    if backend == "auto":
        backend = auto_backend(device.type, installed_runtimes())
    check_precision(backend, device.type, precision)
    if backend == "torch":
        runner = TorchRunner(model, device, semantics, precision)
    else:
        runner = RUNNER_FACTORIES[backend](model, device, semantics, precision, checkpoint)
    log.info("backend %s", runner.description)
    return runner


__all__ = ["BACKENDS", "BACKEND_CHOICES", "BackendUnavailable", "OnnxRuntimeRunner",
           "OpenVinoRunner", "PRECISIONS", "TorchPlan", "TorchRunner", "auto_backend",
           "effective_precision", "graph_cache_path", "installed_runtimes", "make_runner",
           "ort_providers", "torch_plan", "user_cache_dir"]
