"""Checkpoints: round trip, fp16 storage, and clear errors for every way a file can be wrong."""

import json
import zipfile

import cv2
import numpy as np
import pytest
import torch

from superseg_ros.checkpoint import (CHECKPOINT_IS, CheckpointError, load_model, open_model,
                                     read_checkpoint, save_checkpoint)
from superseg_ros.config import ConfigError
from superseg_ros.network import SuperSegmentation

from conftest import TINY


def outputs(model, x):
    with torch.inference_mode():
        return model.eval()(x)


def test_round_trip_keeps_weights_config_tables_and_trained_heads(tmp_path, tiny_model):
    heads = {"detector": True, "descriptor": True, "semantic": False, "subpixel": True}
    path = save_checkpoint(tiny_model, tmp_path / "m.pt", trained_heads=heads,
                           meta={"stage": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    loaded = load_model(path)
    assert loaded.config == tiny_model.config and loaded.semantics == tiny_model.semantics
    assert loaded.trained_heads == heads and loaded.meta == {"stage": "test"}
    x = torch.rand(1, 3, 32, 40)
    for key, value in outputs(tiny_model, x).items():
        assert torch.equal(outputs(loaded, x)[key], value), key


def test_fp16_storage_halves_the_file_and_loads_as_fp32(tmp_path):
    model = SuperSegmentation({"encoder": "mobilenet"})
    full = save_checkpoint(model, tmp_path / "full.pt")
    half = save_checkpoint(model, tmp_path / "half.pt", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(outputs(loaded, x)["heatmap"], outputs(model, x)["heatmap"],
                               atol=2e-3, rtol=0)


def test_truncated_file_names_the_file(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.pt: not a readable checkpoint"):
        load_model(path)


def test_random_bytes_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_model(junk)
    with pytest.raises(CheckpointError, match="nope.pt: no such checkpoint file"):
        load_model(tmp_path / "nope.pt")


def test_foreign_files_are_recognised(tmp_path, tiny_model):
    bare = tmp_path / "bare.pt"
    torch.save(tiny_model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="bare state dict.*load_imagenet_encoder"):
        load_model(bare)
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3, "optimizer": {}}, other)
    with pytest.raises(CheckpointError, match="not a superseg_ros checkpoint.*epoch"):
        load_model(other)


def test_code_in_a_pickle_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "superseg_ros.checkpoint", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as exc:
        read_checkpoint(path)
    assert "Python objects" in str(exc.value) and "builtins.print" in str(exc.value)
    assert "weights_only" not in str(exc.value)


def write_onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:])
    onnx.save(helper.make_model(graph, producer_name="pytorch"), path)


def write_truncated_checkpoint(path):
    torch.save({"w": torch.zeros(64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_image(path, suffix):
    path.write_bytes(cv2.imencode(suffix, np.zeros((4, 4, 3), np.uint8))[1].tobytes())


def write_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


# How each kind of file is made, and what the message must call it.
NOT_CHECKPOINTS = {
    "empty": (lambda p: p.write_bytes(b""), "it is an empty file"),
    "yaml": (lambda p: p.write_text("# run\nmodel:\n  encoder: vgg\n"),
             "it is a text file (YAML"),
    "json": (lambda p: p.write_text(json.dumps({"encoder": "vgg"})), "it is a text file (JSON"),
    "onnx": (write_onnx, "it is an ONNX model (protobuf): an exported network"),
    "png": (lambda p: write_image(p, ".png"), "it is a PNG image"),
    "jpeg": (lambda p: write_image(p, ".jpg"), "it is a JPEG image"),
    "zip": (write_zip, "it is a zip archive that is not a PyTorch file"),
    "truncated": (write_truncated_checkpoint, "it is a truncated or corrupt PyTorch archive"),
    "module": (lambda p: torch.save(torch.nn.Linear(2, 2), p),
               "Python objects other than tensors and plain containers (a whole pickled "
               "nn.Module: torch.nn.modules.linear.Linear); superseg_ros never unpickles code"),
    "binary": (lambda p: p.write_bytes(bytes(range(256)) * 4), "it is unknown binary data"),
}


@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
def test_files_that_are_not_checkpoints_are_named(tmp_path, kind):
    make, expected = NOT_CHECKPOINTS[kind]
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: not a readable checkpoint: ")
    assert expected in message
    assert message.endswith(CHECKPOINT_IS)  # complete, not cut off
    assert "weights_only" not in message
    assert exc.value.__cause__ is None and exc.value.__suppress_context__  # nor in a traceback


def edited(tmp_path, model, edit):
    path = save_checkpoint(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


def test_wrong_version_config_key_table_and_weights(tmp_path, tiny_model):
    cases = [
        (lambda p: p.update(format_version=99), "format version 99 is not supported"),
        (lambda p: p["model_config"].update(encodr="vgg"), "unknown model key 'encodr'"),
        (lambda p: p["semantics"].update(class_to_group=[0] * 18), "predicts 19 classes"),
        (lambda p: p["trained_heads"].pop("semantic"), "trained_heads must list"),
        (lambda p: p["model_config"].update(descriptor_dim=64), "weights do not match.*wrong shape"),
        (lambda p: p["state_dict"].pop("detector.out.bias"), "1 missing.*detector.out.bias"),
        (lambda p: p.pop("state_dict"), "lacks state_dict"),
    ]
    for edit, message in cases:
        with pytest.raises(CheckpointError, match=message):
            load_model(edited(tmp_path, tiny_model, edit))


def test_open_model_random_and_bundled(tmp_path, tiny_model):
    model, name = open_model("random", config=TINY)
    assert "RANDOM WEIGHTS" in name and not any(model.trained_heads.values())
    path = save_checkpoint(tiny_model, tmp_path / "m.pt")
    assert open_model(str(path))[1] == "m.pt (vgg)"
    with pytest.raises(ConfigError, match="only be given with 'random'"):
        open_model(str(path), config=TINY)


def test_saved_files_get_normal_permissions(tmp_path, tiny_model):
    import os
    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tiny_model, tmp_path / "m.pt")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_shipping_can_change_the_refinement_and_nothing_else(tmp_path, tiny_model):
    """tools/ship_model.py --set: the refinement settings change, every weight that is still
    used stays, the unused head is left out of the file, and the change is recorded."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "ship_model", Path(__file__).resolve().parents[1] / "tools" / "ship_model.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    trained = save_checkpoint(tiny_model, tmp_path / "trained.pt",
                              meta={"stage": "joint"})
    out = tmp_path / "shipped.pt"
    assert ship.main([str(trained), "--output", str(out), "--set", "subpixel_window=3",
                      "--set", "subpixel_head=false"]) == 0
    shipped = load_model(out)
    assert shipped.config["subpixel_window"] == 3 and shipped.subpixel is None
    assert shipped.meta["set_at_shipping"] == {"subpixel_window": 3, "subpixel_head": False}
    assert shipped.meta["stage"] == "joint"
    stored = read_checkpoint(out)["state_dict"]
    assert not any(k.startswith("subpixel.") for k in stored)
    for key, value in tiny_model.state_dict().items():
        if not key.startswith("subpixel."):
            assert torch.equal(stored[key].to(value.dtype), value.half().to(value.dtype)), key


def test_settings_that_change_what_the_weights_mean_cannot_be_set_at_shipping(tiny_model):
    from superseg_ros.checkpoint import with_refinement
    with pytest.raises(ConfigError, match="decoder_stride: only subpixel_window, subpixel_head"):
        with_refinement(tiny_model, {"decoder_stride": 8})
    no_head, dropped = with_refinement(tiny_model, {"subpixel_window": 2,
                                                    "subpixel_head": False})
    assert dropped and all(k.startswith("subpixel.") for k in dropped)
    with pytest.raises(ConfigError, match="needs weights this model does not have"):
        with_refinement(no_head, {"subpixel_head": True})
