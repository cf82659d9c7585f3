"""superseg-train's joint stage with `data.labels: adapt`: label, train, relabel, train."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY
from superseg_ros.checkpoint import load_model
from superseg_ros.config import ConfigError
from superseg_ros.training.cli import run_pipeline
from superseg_ros.training.config import training_config
from superseg_ros.training.trainer import Trainer
from test_training import magicpoint_config, write_labelled_folder


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread avoids OpenMP waiting on the shared 2 cores."""


def test_iterated_adaptation_rounds(tmp_path):
    stage1 = Trainer(magicpoint_config(tmp_path, schedule={"iterations": 2}),
                     progress=False).run()
    images, _ = write_labelled_folder(tmp_path, n=3, size=(64, 96))
    conf = training_config({
        "name": "joint", "stage": "joint", "output": str(tmp_path / "joint"), "device": "cpu",
        "init": {"checkpoint": str(stage1)},
        "data": {"images": str(images), "labels": "adapt", "label_rounds": 2, "size": [64, 96]},
        # a barely trained detector finds few peaks: a low threshold still gives labels
        "adaptation": {"num_homographies": 3, "batch_size": 3, "detection_threshold": 0.0},
        "loss": {"max_points": 32}, "schedule": {"iterations": 2}, "batch_size": 2,
        "validate_every": 0, "tensorboard": False})
    final = run_pipeline(conf, progress=False)
    out = Path(conf["output"])
    assert final == out / "model.pt"
    for r in (1, 2):
        summary = json.loads((out / f"labels_round{r}" / "adaptation.json").read_text())
        assert summary["images"] == 3
        assert (out / f"round{r}" / "model.pt").exists()
    # round 2 was labelled by round 1's model and started from it
    round2 = load_model(out / "round2" / "model.pt")
    assert [h["stage"] for h in round2.meta["history"]] == ["magicpoint", "joint"]
    assert load_model(final).trained_heads["descriptor"]
    labels1 = np.load(out / "labels_round1" / "000.npz")["keypoints"]
    labels2 = np.load(out / "labels_round2" / "000.npz")["keypoints"]
    assert labels1.shape != labels2.shape or not np.allclose(labels1, labels2)
    # run again: labels are found done and the rounds resume at their last step
    run_pipeline(conf, progress=False)
    assert json.loads((out / "labels_round1" / "adaptation.json").read_text())["images"] == 3
    assert load_model(out / "round2" / "model.pt").meta["step"] == 2


def test_adapt_needs_an_init_checkpoint(tmp_path):
    images, _ = write_labelled_folder(tmp_path, n=1)
    conf = training_config({"stage": "joint", "output": str(tmp_path / "j"), "model": dict(TINY),
                            "data": {"images": str(images), "labels": "adapt"}})
    with pytest.raises(ConfigError, match="init.checkpoint"):
        run_pipeline(conf, progress=False)
