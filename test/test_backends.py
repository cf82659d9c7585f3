"""Inference backends: parity with torch, the exported-graph cache, errors, the live node.

Exports take seconds, so one graph (a tiny model, semantics on) is exported per module into a
private cache folder and shared by the parity tests and the node processes; the cache tests
export only what they test (a reused, a changed and a corrupt graph). Nothing is timed.
"""

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ros_helpers
from superseg_ros import backends
from superseg_ros.backends import (CPU_PROVIDER, CUDA_PROVIDER, TENSORRT, BackendUnavailable,
                                   TorchPlan, auto_backend, check_precision, graph_cache_path,
                                   installed_runtimes, ort_providers, torch_plan)
from superseg_ros.checkpoint import load_model, save_checkpoint
from superseg_ros.config import ConfigError
from superseg_ros.demo import render_scene
from superseg_ros.export import DEFAULT_TOLERANCE
from superseg_ros.extractor import Extractor
from superseg_ros.network import SuperSegmentation

from conftest import TINY

# Parity with torch fp32 on the CPU. The runtimes do the same fp32 arithmetic in another order
# (measured: heatmap, descriptors, offsets within ~1e-6), so only a peak that ties with a
# neighbour may flip: keypoint counts may differ by this many,
KEYPOINT_COUNT_TOLERANCE = 2
# matched keypoints (nearest neighbours) lie this close, in pixels after sub-pixel offsets,
KEYPOINT_TOLERANCE_PX = 1e-3
# their descriptors agree to this cosine,
DESCRIPTOR_MIN_COSINE = 0.9999
# and this fraction of stability-mask pixels is equal (a pixel at the threshold may flip).
MASK_MIN_AGREEMENT = 0.999
ODD_SIZES = ((97, 131), (203, 157))  # (H, W), neither a multiple of 8: padding is exercised
EXTRACTOR = {"detection_threshold": 0.0}  # every NMS peak, not only the confident ones
# The node as superseg-launch runs it, with Python's INFO log on so the backend is reported.
NODE_WITH_INFO_LOG = ("import logging, sys; logging.basicConfig(level=logging.INFO, "
                      "format='%(name)s: %(message)s'); "
                      "from superseg_ros.ros.launch_cli import main; sys.exit(main())")


def installed(runtime: str) -> bool:
    return all(backends._importable(m) for m in (runtime, "onnx", "onnxscript"))


def runtime(name: str):
    return pytest.param(name, marks=pytest.mark.skipif(not installed(name),
                                                       reason=f"{name} is not installed"))


RUNTIMES = [runtime("onnxruntime"), runtime("openvino")]


def semantic_model(seed: int = 0, config: dict = TINY) -> SuperSegmentation:
    """A tiny network whose heads are all marked trained and whose masks have both stable and
    unstable regions. A freshly initialised tiny head outputs near-constant logits (BatchNorm
    without statistics flattens them), so: BatchNorm statistics from rendered scenes, then
    sharper class logits with the stable classes favoured (about 40 % of pixels stable)."""
    torch.manual_seed(seed)
    model = SuperSegmentation(config)
    model.trained_heads = {head: True for head in model.trained_heads}
    scenes = torch.stack([torch.from_numpy(render_scene(96, 128, seed=s)).permute(2, 0, 1)
                          for s in range(4)]).float() / 255
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = this batch's
    with torch.no_grad():
        model.train()(scenes)
        classifier = [m for m in model.semantic.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        classifier.weight.mul_(20.0)
        stable = torch.tensor([g in (0, 1) for g in model.semantics["class_to_group"]])
        classifier.bias[stable] += 4.0
    return model.eval()


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """XDG_CACHE_HOME for this module's tests and the node processes they start."""
    home = tmp_path_factory.mktemp("xdg_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(semantic_model(), tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def extractors(cache_home, checkpoint):
    """backend -> Extractor on the checkpoint's model (no checkpoint path given, as the node
    does: the graph is keyed by the weights, in cache_home), built once each."""
    built = {}

    def get(backend: str) -> Extractor:
        if backend not in built:
            built[backend] = Extractor(load_model(checkpoint), {**EXTRACTOR, "backend": backend},
                                       device="cpu")
        return built[backend]

    return get


@pytest.fixture
def count_exports(monkeypatch):
    """The real exporter, counted."""
    calls = []
    export = backends.export_onnx

    def counted(*args, **kwargs):
        calls.append(args[1])
        return export(*args, **kwargs)

    monkeypatch.setattr(backends, "export_onnx", counted)
    return calls


def compare(got: dict, want: dict) -> dict:
    """How far two unbatched results are apart, keypoints matched as sets (nearest neighbour)."""
    a, b = got["keypoints"], want["keypoints"]
    distances = np.linalg.norm(a[:, None].astype(np.float64) - b[None], axis=-1)
    nearest = distances.argmin(1)
    error = distances[np.arange(len(a)), nearest]
    close = error <= KEYPOINT_TOLERANCE_PX
    cosine = (got["descriptors"][close] * want["descriptors"][nearest[close]]).sum(-1)
    report = {
        "keypoints": (len(a), len(b)),
        "unmatched": max(len(a), len(b)) - int(close.sum()),
        "max_position_error": float(error[close].max()),
        "min_cosine": float(cosine.min()),
        "stable_flags_equal": bool((got["stable"][close] == want["stable"][nearest[close]]).all()),
    }
    if "stability_mask" in want:
        report["mask_agreement"] = float((got["stability_mask"] == want["stability_mask"]).mean())
    return report


def assert_parity(got: dict, want: dict) -> dict:
    report = compare(got, want)
    assert abs(report["keypoints"][0] - report["keypoints"][1]) <= KEYPOINT_COUNT_TOLERANCE, report
    assert report["unmatched"] <= KEYPOINT_COUNT_TOLERANCE, report
    assert report["min_cosine"] > DESCRIPTOR_MIN_COSINE, report
    assert report["stable_flags_equal"], report
    assert report.get("mask_agreement", 1.0) >= MASK_MIN_AGREEMENT, report
    return report


# ------------------------------------------------------------------- decisions (no device needed)
def test_torch_uses_fp16_autocast_and_channels_last_on_cuda_only():
    assert torch_plan("cuda", "auto") == TorchPlan(torch.float16, channels_last=True)
    assert torch_plan("cuda", "fp32") == TorchPlan(None, channels_last=True)
    assert torch_plan("cuda", "bf16") == TorchPlan(torch.bfloat16, channels_last=True)
    assert torch_plan("cpu", "auto") == TorchPlan(None, channels_last=False)
    assert torch_plan("cpu", "bf16") == TorchPlan(torch.bfloat16, channels_last=False)


def test_auto_picks_the_fastest_installed_backend_for_the_device():
    cpu_ort = {"onnxruntime": (CPU_PROVIDER,)}
    assert auto_backend("cpu", {}) == "torch"
    assert auto_backend("cpu", cpu_ort) == "onnxruntime"
    assert auto_backend("cpu", {**cpu_ort, "openvino": ("CPU",)}) == backends.AUTO_ORDER_CPU[0]
    assert auto_backend("cuda", cpu_ort) == "torch"
    assert auto_backend("cuda", {"onnxruntime": (CUDA_PROVIDER, CPU_PROVIDER)}) == "torch"
    assert auto_backend("cuda", {"onnxruntime": (TENSORRT, CUDA_PROVIDER)}) == "onnxruntime"


def test_onnxruntime_providers_tensorrt_then_cuda_and_a_hint_without_them(tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda:1")
    assert ort_providers(cpu, (TENSORRT, CUDA_PROVIDER, CPU_PROVIDER), True, tmp_path) == \
        [CPU_PROVIDER]
    chosen = ort_providers(cuda, (TENSORRT, CUDA_PROVIDER, CPU_PROVIDER), True, tmp_path)
    assert [p if isinstance(p, str) else p[0] for p in chosen] == \
        [TENSORRT, CUDA_PROVIDER, CPU_PROVIDER]
    assert chosen[0][1]["trt_fp16_enable"] is True and chosen[0][1]["device_id"] == 1
    assert chosen[0][1]["trt_engine_cache_path"] == str(tmp_path)
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime-gpu"):
        ort_providers(cuda, (CPU_PROVIDER,), False, tmp_path)


def test_precisions_a_backend_cannot_run_are_config_errors():
    check_precision("torch", "cpu", "bf16")
    check_precision("onnxruntime", "cpu", "auto")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        check_precision("torch", "cpu", "fp16")
    with pytest.raises(ConfigError, match="precision bf16 needs backend torch or openvino"):
        check_precision("onnxruntime", "cpu", "bf16")
    with pytest.raises(ConfigError, match="openvino runs on the CPU only"):
        check_precision("openvino", "cuda", "auto")


def test_backend_defaults_to_torch_and_an_unknown_one_is_a_config_error(tiny_model):
    assert Extractor(tiny_model, device="cpu").backend == "torch"
    with pytest.raises(ConfigError, match="extractor.backend must be one of torch, onnxruntime"):
        Extractor(tiny_model, {"backend": "tensorflow"}, device="cpu")


@pytest.mark.parametrize("name, message", [
    ("onnxruntime", "backend onnxruntime needs the onnxruntime package: pip install onnxruntime "
                    "(onnxruntime-gpu for CUDA)"),
    ("openvino", "backend openvino needs the openvino package: pip install openvino"),
])
def test_missing_runtime_names_the_package_to_install(name, message, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    with pytest.raises(BackendUnavailable) as error:
        Extractor(tiny_model, {"backend": name}, device="cpu")
    assert isinstance(error.value, ConfigError)  # CLIs exit 2, the node stops with the message
    assert str(error.value) == message


def test_auto_without_runtimes_is_torch_and_a_missing_exporter_names_its_packages(
        tiny_model, cache_home, monkeypatch):
    with monkeypatch.context() as patch:
        for name in ("onnxruntime", "openvino"):
            patch.setitem(sys.modules, name, None)
        assert Extractor(tiny_model, {"backend": "auto"}, device="cpu").backend == "torch"
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # the exporter's backend
    with pytest.raises(BackendUnavailable, match="backend onnxruntime: .* pip install onnx "
                                                 "onnxruntime onnxscript"):
        Extractor(tiny_model, {"backend": "onnxruntime"}, device="cpu")


@pytest.mark.parametrize("prog", ["superseg-extract", "superseg-eval"])
def test_clis_exit_2_naming_the_package_when_the_runtime_is_missing(prog, tmp_path, monkeypatch,
                                                                    capsys):
    import cv2

    from superseg_ros.cli import extract
    from superseg_ros.evaluation import cli as evaluation

    for seed in range(2):
        cv2.imwrite(str(tmp_path / f"{seed}.png"), render_scene(64, 64, seed=seed))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    common = ["--model", "random", "--output", str(tmp_path / "out"), "--backend", "onnxruntime",
              "--device", "cpu"]
    if prog == "superseg-extract":
        code = extract.main(common + ["--input", str(tmp_path / "0.png")])
    else:
        code = evaluation.main(common + ["--images", str(tmp_path), "--pairs", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{prog}: error: backend onnxruntime needs the onnxruntime package: pip install " \
        "onnxruntime (onnxruntime-gpu for CUDA)" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("backend", RUNTIMES)
def test_backend_matches_torch_keypoints_1e3px_descriptors_cos9999_masks_999(
        backend, size, extractors, one_thread):
    """Keypoints as sets (count within KEYPOINT_COUNT_TOLERANCE, matched within
    KEYPOINT_TOLERANCE_PX), descriptors of matched keypoints (cosine > DESCRIPTOR_MIN_COSINE),
    stable flags equal, stability masks (>= MASK_MIN_AGREEMENT of pixels equal)."""
    image = render_scene(*size, seed=sum(size))
    want = extractors("torch")(image).unbatch()[0]
    got = extractors(backend)(image).unbatch()[0]
    assert extractors(backend).backend == backend
    # the filter has work to do: both kinds of region, and keypoints it rejected
    assert len(want["keypoints"]) > 20 and 0.2 < want["stability_mask"].mean() < 0.8
    assert len(want["rejected_keypoints"]) > 0
    assert_parity(got, want)


# the default (lean) architecture at tiny widths: ResNet-18 pyramid, neck, separable ASPP
TINY_LEAN = {"encoder_width": 8, "neck_channels": 16, "head_channels": 16, "descriptor_dim": 32,
             "aspp_channels": 16, "low_level_channels": 8, "decoder_channels": 16}


@pytest.mark.parametrize("backend", RUNTIMES)
def test_lean_architecture_matches_torch_in_every_backend(backend, cache_home, one_thread):
    """The neck's resizes of ceil-sized stride-16/32 maps at an odd size (97x131: 13x17 cells)
    survive export; same tolerances as above."""
    model = semantic_model(config=TINY_LEAN)
    assert model.config["preset"] == "lean" and model.config["neck_channels"]
    image = render_scene(97, 131, seed=3)
    want = Extractor(model, EXTRACTOR, device="cpu")(image).unbatch()[0]
    got = Extractor(model, {**EXTRACTOR, "backend": backend}, device="cpu")(image).unbatch()[0]
    assert len(want["keypoints"]) > 20
    assert_parity(got, want)


@pytest.mark.parametrize("backend", RUNTIMES)
def test_network_returns_the_same_tensors_whatever_the_backend(backend, extractors):
    reference = extractors("torch")
    with torch.inference_mode():
        batch, _ = reference.preprocess(render_scene(97, 131, seed=1))
        want = reference.network(batch)
        got = extractors(backend).network(batch)
    assert list(got) == list(want) == ["heatmap", "descriptors", "offsets", "segmentation"]
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == torch.float32
        assert got[name].device == want[name].device
        # export's tolerance for unit-scale outputs, scaled to the (sharpened) logits' size
        scale = max(1.0, float(want[name].abs().max()))
        torch.testing.assert_close(got[name], want[name], atol=DEFAULT_TOLERANCE * scale, rtol=0)


# ------------------------------------------------------------------------------------- the cache
@pytest.fixture
def own_checkpoint(tmp_path, checkpoint):
    """A copy of the module's checkpoint in a folder of its own."""
    path = tmp_path / "model" / "tiny.pt"
    path.parent.mkdir()
    shutil.copy(checkpoint, path)
    return path


def graphs(folder):
    return sorted(p.name for p in folder.glob("*.onnx"))


@pytest.mark.skipif(not installed("onnxruntime"), reason="onnxruntime is not installed")
def test_graph_is_cached_beside_the_checkpoint_reused_and_rebuilt_when_it_changes(
        own_checkpoint, count_exports):
    """Semantic filter off, so this is also the graph without the segmentation output."""
    conf = {**EXTRACTOR, "backend": "onnxruntime", "semantic_filter": "off"}
    first = Extractor(load_model(own_checkpoint), conf, device="cpu", checkpoint=own_checkpoint)
    (name,) = graphs(own_checkpoint.parent)
    digest = backends.file_digest(own_checkpoint)[:16]
    assert name.startswith(f"tiny.{digest}.") and name.endswith(".nosem.onnx")
    assert str(own_checkpoint.parent / name) in first.backend_note
    batch, _ = first.preprocess(render_scene(64, 80, seed=0))
    assert list(first.network(batch)) == ["heatmap", "descriptors", "offsets"]
    assert len(count_exports) == 1
    mtime = (own_checkpoint.parent / name).stat().st_mtime_ns

    # unchanged checkpoint: the file is reused, not exported again
    again = Extractor(load_model(own_checkpoint), conf, device="cpu", checkpoint=own_checkpoint)
    assert len(count_exports) == 1 and "cached graph" in again.backend_note
    assert (own_checkpoint.parent / name).stat().st_mtime_ns == mtime

    # other weights under the same file name: a new graph, the old one removed
    save_checkpoint(semantic_model(seed=1), own_checkpoint)
    changed = Extractor(load_model(own_checkpoint), conf, device="cpu", checkpoint=own_checkpoint)
    assert len(count_exports) == 2
    (new_name,) = graphs(own_checkpoint.parent)
    assert new_name != name and new_name.startswith(
        f"tiny.{backends.file_digest(own_checkpoint)[:16]}.")
    torch_result = Extractor(load_model(own_checkpoint), {**conf, "backend": "torch"},
                             device="cpu")
    image = render_scene(97, 131, seed=3)
    assert_parity(changed(image).unbatch()[0], torch_result(image).unbatch()[0])


@pytest.mark.parametrize("backend", RUNTIMES)
def test_corrupt_cache_file_gives_one_warning_naming_it_then_a_rebuild(
        backend, own_checkpoint, count_exports, caplog, capfd):
    model = load_model(own_checkpoint)
    path = graph_cache_path(model, True, own_checkpoint)
    path.write_bytes(b"\x08\x07 not a whole protobuf")  # e.g. a copy cut short
    with caplog.at_level(logging.WARNING, logger="superseg_ros.backends"):
        extractor = Extractor(model, {**EXTRACTOR, "backend": backend}, device="cpu",
                              checkpoint=own_checkpoint)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and len(warnings[0].getMessage().splitlines()) == 1
    assert capfd.readouterr().err == ""  # nor any runtime's own complaints on the terminal
    assert str(path) in warnings[0].getMessage() and "rebuilding" in warnings[0].getMessage()
    assert len(count_exports) == 1 and path.stat().st_size > 1000
    assert len(extractor(render_scene(64, 80, seed=0)).unbatch()[0]["keypoints"]) > 0


def test_cache_location_unwritable_folder_and_models_without_a_file(
        own_checkpoint, cache_home, monkeypatch):
    model = load_model(own_checkpoint)
    beside = graph_cache_path(model, True, own_checkpoint)
    assert beside.parent == own_checkpoint.parent
    code = backends.graph_code_digest()[:8]
    assert beside.name == f"tiny.{backends.file_digest(own_checkpoint)[:16]}.{code}.sem.onnx"

    # a model without a file: keyed by config and weights, in the user cache
    fileless = graph_cache_path(model, False)
    assert fileless.parent == cache_home / "superseg_ros" and fileless.name.endswith(".nosem.onnx")
    assert fileless.name.startswith("model.")
    assert graph_cache_path(load_model(own_checkpoint), False) == fileless
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert graph_cache_path(model, False) != fileless

    # an installed, read-only share/ folder: the user cache, same name
    real_access = os.access
    monkeypatch.setattr(backends.os, "access", lambda p, mode: False if Path(p) ==
                        own_checkpoint.parent else real_access(p, mode))
    assert graph_cache_path(load_model(own_checkpoint), True, own_checkpoint) == \
        cache_home / "superseg_ros" / beside.name


# -------------------------------------------------------------------------- the node over DDS
@pytest.mark.parametrize("backend", [runtime("onnxruntime"), "auto"])
def test_node_with_backend_gives_the_torch_keypoints_over_dds(backend, extractors, checkpoint,
                                                             tmp_path):
    """superseg_node in its own process with extractor.backend:=<backend>; one Image +
    CameraInfo in, its keypoints and descriptors agree with the in-process torch extractor
    within the parity tolerances, and its log names the backend that ran."""
    ros_helpers.import_rclpy()
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from superseg_msgs.msg import Descriptors, Keypoints

    from superseg_ros.ros.image_conversion import make_image

    ran = auto_backend("cpu", installed_runtimes()) if backend == "auto" else backend
    extractors(ran)  # exports the graph into the shared cache, so the node starts at once
    namespace = f"{backend}node"
    args = ["-c", NODE_WITH_INFO_LOG, "--model", str(checkpoint), "--namespace", namespace,
            "--param", f"extractor.backend:={backend}", "--param", "device:=cpu",
            "--param", "extractor.detection_threshold:=0.0", "--param", "qos.profile:=reliable"]
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    scene = render_scene(203, 157, seed=5)
    with ros_helpers.python_process(args, tmp_path / "node.log") as child, \
            ros_helpers.ros_node(f"{namespace}_client") as node:
        keypoints, descriptors = [], []
        node.create_subscription(Keypoints, f"/{namespace}/superseg/keypoints",
                                 keypoints.append, qos)
        node.create_subscription(Descriptors, f"/{namespace}/superseg/descriptors",
                                 descriptors.append, qos)
        image_pub = node.create_publisher(Image, f"/{namespace}/image", qos)
        info_pub = node.create_publisher(CameraInfo, f"/{namespace}/camera_info", qos)
        up = ros_helpers.spin_until(node, lambda: image_pub.get_subscription_count() > 0
                                    and info_pub.get_subscription_count() > 0
                                    and node.count_publishers(
                                        f"/{namespace}/superseg/keypoints") > 0, 60)
        assert up, f"node did not come up:\n{child.output()}"
        image = make_image(scene, "rgb8")
        image.header.stamp = node.get_clock().now().to_msg()
        info = CameraInfo(width=157, height=203, distortion_model="plumb_bob", header=image.header)
        info.k = [150.0, 0.0, 78.0, 0.0, 150.0, 101.0, 0.0, 0.0, 1.0]
        info.d = [0.0] * 5
        image_pub.publish(image)
        info_pub.publish(info)
        arrived = ros_helpers.spin_until(node, lambda: keypoints and descriptors, 30)
        assert arrived, f"no keypoints came back:\n{child.output()}"
        log = child.output()
    assert f"backend {ran} (" in log, log

    msg, block = keypoints[0], descriptors[0]
    got = {"keypoints": np.stack([np.asarray(msg.x), np.asarray(msg.y)], 1),
           "descriptors": np.asarray(block.data, np.float32).reshape(block.count, -1),
           "stable": np.asarray(msg.stable, bool)}
    want = extractors("torch")(scene).unbatch()[0]
    assert len(want["keypoints"]) > 10
    assert_parity(got, {k: want[k] for k in ("keypoints", "descriptors", "stable")})
