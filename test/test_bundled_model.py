"""The model that ships in models/: loadable, small, its semantic filter on and working."""

import numpy as np
import pytest
import torch

from superseg_ros.checkpoint import bundled_model_path, open_model
from superseg_ros.demo import render_scene
from superseg_ros.extractor import Extractor
from superseg_ros.semantics import STATIC, semantics_for
from superseg_ros.training.synthetic_shapes import SyntheticShapes

BUNDLED = bundled_model_path()
pytestmark = pytest.mark.skipif(BUNDLED is None, reason="no models/superseg.pt in this tree")


def test_bundled_model_is_small_and_loads_by_default():
    assert BUNDLED.stat().st_size < 30 * 2**20
    model, name = open_model(None)
    assert name.startswith("superseg.pt")
    assert model.config["preset"] == "lean"
    assert model.trained_heads == {"detector": True, "descriptor": True, "semantic": True,
                                   "subpixel": True}
    # a CamVid-trained model carries CamVid's class table (what the node publishes)
    assert model.semantics == semantics_for("classes", "camvid")
    # the file says how it was made: stage 1, stage 2, stage 3 on CamVid (the decoder then moved
    # to stride 4), a second keypoint round on real images, continued, then with the heatmap-
    # centroid refinement, stage 3 again, a round on denser labels, then stage 3 on the semantic
    # head alone (the keypoint heads frozen); each with its config
    runs = model.meta["history"] + [model.meta]
    assert [m["stage"] for m in runs] == ["magicpoint", "joint", "labelled", "labelled", "joint",
                                          "joint", "joint", "labelled", "joint", "labelled"]
    assert [m["config"]["name"] for m in runs] == [
        "magicpoint_cpu", "joint_cpu_round1", "camvid_cpu_round1", "camvid_cpu_stride4",
        "keypoints_cpu_round1", "keypoints_cpu_long", "subpixel_joint_cpu", "camvid_cpu_round4",
        "keypoints_dense_cpu_round1", "camvid_semantic_dense"]
    assert runs[-1]["config"]["train_only"] == ["semantic"]
    assert model.config["decoder_stride"] == 4
    # chosen after training on generated pairs (models/README.md): the heatmap's centroid in a
    # 7x7 window refines, the sub-pixel head is left out
    assert model.config["subpixel_window"] == 3 and model.subpixel is None
    assert model.meta["set_at_shipping"] == {"subpixel_window": 3, "subpixel_head": False}
    assert runs[-1]["config"]["data"]["dataset"] == "camvid"


def forced_classes(model, left: str, right: str):
    """A forward hook on the semantic head: class `left` wins on the left half of the image,
    `right` on the right half, whatever the image shows. Returns the hook's handle."""
    names = model.semantics["classes"]

    def hook(module, inputs, logits):
        forced = torch.full_like(logits, -20.0)
        half = logits.shape[-1] // 2
        forced[:, names.index(left), :, :half] = 20.0
        forced[:, names.index(right), :, half:] = 20.0
        return forced

    return model.semantic.register_forward_hook(hook)


def test_bundled_model_filter_is_on_and_removes_keypoints_on_forced_dynamic_pixels():
    model, _ = open_model(None)
    image = render_scene(240, 320, seed=3)
    extractor = Extractor(model, {"max_keypoints": 500}, device="cpu")
    assert extractor.semantic_active and extractor.semantic_note is None  # auto -> on
    handle = forced_classes(model, "Car", "Building")
    try:
        on = extractor(image).unbatch()[0]
        off = Extractor(model, {"max_keypoints": 500, "semantic_filter": "off"},
                        device="cpu")(image).unbatch()[0]
    finally:
        handle.remove()
    left = off["keypoints"][:, 0] < 160 - 8
    assert left.sum() >= 10, "the filter-off run finds keypoints on the left half"
    # on: nothing kept on the forced-dynamic half, the rejected ones are there, and the kept
    # ones are static (Building) and stable
    assert len(on["keypoints"]) > 0 and (on["keypoints"][:, 0] >= 160 - 4).all()
    assert len(on["rejected_keypoints"]) >= left.sum() * 0.9
    assert (on["rejected_keypoints"][:, 0] < 160 + 4).all()
    assert (on["groups"] == STATIC).all() and on["stable"].all()
    assert on["stability_mask"][:, :150].sum() == 0 and on["stability_mask"][:, 170:].all()


def test_readme_python_api_runs_from_any_directory(tmp_path, monkeypatch):
    """The README's Python API example, as written, from a folder that is not the repository:
    it finds the bundled model by the package's helper, and the filter runs."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    monkeypatch.chdir(tmp_path)
    image = SyntheticShapes({"height": 64, "width": 80}, seed=2).sample(0).image
    rgb = np.repeat(image[..., None], 3, axis=2)
    namespace = {"rgb_image_a": rgb, "rgb_image_b": rgb}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["per_image"]) == 2
    assert "stability_mask" in namespace["per_image"][0]  # the bundled model's filter is on
