"""ONNX export: parity with torch at sizes other than the export size, dynamic H/W, the CLI.

Each export takes a few seconds (torch.export + ONNX translation), so exported files are shared
per module and the networks are small; the resnet18 one keeps the dilated layer3/4 path.
"""

import json

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from superseg_ros.cli.export import main  # noqa: E402
from superseg_ros import export  # noqa: E402
from superseg_ros.export import (DEFAULT_TOLERANCE, OUTPUTS, MissingOnnxDependency,  # noqa: E402
                                 OnnxParityError, export_onnx, verify_onnx)
from superseg_ros.network import SuperSegmentation  # noqa: E402

SMALL_HEADS = {"encoder_width": 16, "head_channels": 32, "descriptor_dim": 64,
               "aspp_channels": 32, "decoder_channels": 32}
EXPORT_SIZE = (64, 96)
VERIFY_SIZES = ((120, 160), (72, 200))  # neither is the export size; the second is not 4:3


def small_model(encoder: str, seed: int = 0) -> SuperSegmentation:
    torch.manual_seed(seed)
    return SuperSegmentation({"encoder": encoder, **SMALL_HEADS}).eval()


@pytest.fixture(scope="module", params=["vgg", "resnet18"])
def exported(request, tmp_path_factory):
    model = small_model(request.param)
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    export_onnx(model, path, *EXPORT_SIZE)
    return model, path


def test_parity_at_other_sizes(exported):
    model, path = exported
    errors = verify_onnx(model, path, sizes=VERIFY_SIZES)
    assert set(errors) == set(OUTPUTS)
    assert all(error <= DEFAULT_TOLERANCE for error in errors.values()), errors


def test_parity_with_the_heatmap_centroid_refinement(tmp_path):
    torch.manual_seed(0)
    model = SuperSegmentation({"encoder": "vgg", **SMALL_HEADS, "subpixel_window": 2}).eval()
    path = tmp_path / "window.onnx"
    export_onnx(model, path, *EXPORT_SIZE)
    errors = verify_onnx(model, path, sizes=VERIFY_SIZES[:1])
    assert errors["offsets"] <= DEFAULT_TOLERANCE, errors


def test_graph_has_dynamic_size_named_outputs_metadata_and_no_nms(exported):
    model, path = exported
    graph_model = onnx.load(str(path))
    (image,) = graph_model.graph.input
    assert image.name == "image"
    dims = image.type.tensor_type.shape.dim
    assert dims[1].dim_value == 3
    for i in (0, 2, 3):  # batch, H, W are symbols, not numbers
        assert dims[i].dim_param and not dims[i].dim_value
    assert tuple(o.name for o in graph_model.graph.output) == OUTPUTS
    ops = {node.op_type for node in graph_model.graph.node}
    assert not ops & {"NonMaxSuppression", "TopK"}  # post-processing stays out of the graph
    meta = {p.key: p.value for p in graph_model.metadata_props}
    assert meta["encoder"] == model.config["encoder"]
    assert int(meta["descriptor_dim"]) == 64
    assert json.loads(meta["class_to_group"]) == model.semantics["class_to_group"]
    assert json.loads(meta["trained_heads"]) == model.trained_heads
    assert "multiples of 8" in meta["input"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_without_semantics_there_is_no_segmentation_output(tmp_path):
    model, path = small_model("vgg"), tmp_path / "nosem.onnx"
    export_onnx(model, path, *EXPORT_SIZE, semantics=False)
    names = [o.name for o in onnx.load(str(path)).graph.output]
    assert names == ["heatmap", "descriptors", "offsets"]
    assert set(verify_onnx(model, path, sizes=VERIFY_SIZES[1:], semantics=False)) == set(names)
    with pytest.raises(OnnxParityError, match="segmentation"):
        verify_onnx(model, path, sizes=VERIFY_SIZES[1:], semantics=True)


def test_verify_fails_for_other_weights(exported):
    model, path = exported
    other = small_model(model.config["encoder"], seed=1)
    with pytest.raises(OnnxParityError, match=r"'\w+' at 120x160: max abs error"):
        verify_onnx(other, path, sizes=VERIFY_SIZES)


def test_export_rejects_sizes_that_are_not_multiples_of_8(tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        export_onnx(small_model("vgg"), tmp_path / "x.onnx", 100, 64)
    assert not list(tmp_path.iterdir())


def test_missing_onnx_package_says_what_to_install(tmp_path, monkeypatch):
    def no_onnx(name):
        raise ImportError(f"No module named '{name}'")

    monkeypatch.setattr(export.importlib, "import_module", no_onnx)
    with pytest.raises(MissingOnnxDependency, match="pip install onnx onnxruntime onnxscript"):
        export_onnx(small_model("vgg"), tmp_path / "x.onnx", *EXPORT_SIZE)


def test_cli_usage_errors_exit_2_with_a_message(tmp_path, capsys):
    out = str(tmp_path / "m.onnx")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "random", "--output", out, "--height", "100"])
    assert exit_info.value.code == 2
    assert "--height must be a positive multiple of 8" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "missing.pt"), "--output", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("superseg-export: error:") and "missing.pt" in err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_cli_exports_and_verifies_a_random_model(tmp_path, capsys):
    out = tmp_path / "random.onnx"
    assert main(["--model", "random", "--output", str(out), "--height", "64",
                 "--width", "64"]) == 0
    stdout = capsys.readouterr().out
    assert "randomly initialised" in stdout
    for name in OUTPUTS:
        assert name in stdout
    assert "shape at 240x320" in stdout and "file size:" in stdout
    assert out.is_file()
