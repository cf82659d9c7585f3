"""The model that ships in models/: loadable, small, honest about its untrained semantic head."""

import numpy as np
import pytest

from superseg_ros.checkpoint import bundled_model_path, open_model
from superseg_ros.extractor import Extractor
from superseg_ros.training.synthetic_shapes import SyntheticShapes

BUNDLED = bundled_model_path()
pytestmark = pytest.mark.skipif(BUNDLED is None, reason="no models/superseg.pt in this tree")


def test_bundled_model_is_small_and_loads_by_default():
    assert BUNDLED.stat().st_size < 30 * 2**20
    model, name = open_model(None)
    assert name.startswith("superseg.pt")
    assert model.config["preset"] == "dilated"  # written before presets: the old architecture
    assert model.trained_heads == {"detector": True, "descriptor": True, "semantic": False,
                                   "subpixel": True}
    # the file says how it was made: stage 1, then stage 2 twice (relabelled by its own first
    # round), with the config of each run
    runs = model.meta["history"] + [model.meta]
    assert [m["stage"] for m in runs] == ["magicpoint", "joint", "joint"]
    assert [m["config"]["name"] for m in runs] == ["magicpoint_cpu", "joint_cpu_round1",
                                                   "joint_cpu_relabel_round1"]


def test_bundled_model_runs_without_the_semantic_filter_and_says_so():
    model, _ = open_model(None)
    extractor = Extractor(model, {"max_keypoints": 200}, device="cpu")
    assert not extractor.semantic_active
    assert "semantic head is untrained" in extractor.semantic_note
    image = SyntheticShapes({"height": 120, "width": 160}, seed=1).sample(3).image
    features = extractor(np.repeat(image[..., None], 3, axis=2)).unbatch()[0]
    assert len(features["keypoints"]) > 0
    assert (features["groups"] == 255).all()


def test_readme_python_api_runs_from_any_directory(tmp_path, monkeypatch, capsys):
    """The README's Python API example, as written, from a folder that is not the repository:
    it finds the bundled model by the package's helper and prints the filter note once."""
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
    assert capsys.readouterr().out.count("semantic head is untrained") == 1
