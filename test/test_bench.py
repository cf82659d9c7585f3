"""superseg-bench and the node's per-stage timings. Nothing here is timed: only which rows and
keys exist and how they relate."""

import json
import sys

import pytest

import ros_helpers
from superseg_ros.checkpoint import save_checkpoint
from superseg_ros.cli import bench, bench_node
from superseg_ros.demo import render_scene
from superseg_ros.network import SuperSegmentation

from conftest import TINY

SIZES = [(32, 40), (40, 56)]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch
    torch.manual_seed(0)
    return save_checkpoint(SuperSegmentation(TINY), tmp_path_factory.mktemp("model") / "tiny.pt")


def test_schedule_runs_every_row_and_size_once_per_repeat_in_a_rotating_order():
    rounds = bench.schedule(["a", "b", "c"], ["s", "t"], 3)
    pairs = [("a", "s"), ("b", "s"), ("c", "s"), ("a", "t"), ("b", "t"), ("c", "t")]
    assert len(rounds) == 3
    for r, order in enumerate(rounds):
        assert sorted(order) == sorted(pairs)
        assert order == pairs[r:] + pairs[:r]  # the same cycle, one further along each repeat
    assert bench.schedule(["a"], ["s"], 2) == [[("a", "s")], [("a", "s")]]


def test_rows_for_the_bundled_model_are_the_reference_the_lean_default_and_itself():
    """The bundled model is the lean preset with a stride-4 decoder and the heatmap-centroid
    refinement without the sub-pixel head: it is timed itself, beside the lean default and the
    dilated architecture it replaced (random weights: speed does not depend on them), and its
    rows name what differs from the default."""
    rows = bench.plan_rows(None, ["torch", "onnxruntime"])
    bundled = "lean (decoder_stride 4, subpixel_window 3, subpixel_head False)"
    assert [(r.architecture, r.backend, r.reference) for r in rows] == [
        ("dilated (reference)", "torch", True), ("lean", "torch", False),
        ("lean", "onnxruntime", False), (bundled, "torch", False),
        (bundled, "onnxruntime", False)]
    assert rows[0].weights == bench.REFERENCE_WEIGHTS
    assert rows[1].weights == bench.RANDOM_WEIGHTS
    assert rows[3].weights.startswith("bundled superseg.pt")
    # 'random' is the lean default architecture itself: no third set of rows
    assert len(bench.plan_rows("random", ["torch"])) == 2


def test_bench_on_a_tiny_model_gives_every_row_and_the_same_json(tmp_path, monkeypatch, capsys,
                                                                 tiny_checkpoint, one_thread):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # exported graphs go here
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    out = tmp_path / "bench.json"
    code = bench.main(["--model", str(tiny_checkpoint), "--backend", "torch", "openvino",
                       "--sizes", *(f"{h}x{w}" for h, w in SIZES), "--threads", "1",
                       "--repeats", "2", "--warmup", "0", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]

    # per size: the reference, lean x 2 backends, the tiny model x 2 backends
    keys = [(r["architecture"], r["weights"], r["backend"], tuple(r["size"])) for r in rows]
    expected = [(arch, weights, backend, size) for size in SIZES
                for arch, weights, backend in
                [("dilated (reference)", bench.REFERENCE_WEIGHTS, "torch")]
                + [("lean", bench.RANDOM_WEIGHTS, b) for b in ("torch", "openvino")]
                + [("lean", "tiny.pt (vgg)", b) for b in ("torch", "openvino")]]
    assert keys == expected
    for row in rows:
        if row["backend"] == "openvino":
            assert row["status"] == "skipped" and "openvino" in row["reason"]
            assert row["speedup"] is None
        else:
            assert row["status"] == "ok"
            assert len(row["times_ms"]["network"]) == 2
            assert row["fps"] > 0 and row["speedup"] > 0
    assert [r["speedup"] for r in rows if r["reference"]] == [1.0, 1.0]

    header = data["header"]
    assert header["torch_threads"] == 1 and header["cpus"] >= 1 and "date" in header
    # the table has the same rows, in the same order
    table = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(rows)
    for line, row in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [row["architecture"], row["weights"], row["backend"],
                             "{}x{}".format(*row["size"])]
        assert ("skipped" in cells[4]) == (row["status"] == "skipped")


def test_an_unreadable_model_exits_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    assert bench.main(["--model", str(bad), "--sizes", "32x40"]) == 2
    assert "bad.pt" in capsys.readouterr().err


def test_the_node_reports_its_stage_times_in_diagnostics(tmp_path, tiny_checkpoint):
    from superseg_ros.ros.node import STAGES

    args = bench_node.node_arguments(str(tiny_checkpoint), None, 50, namespace="bench")
    image = render_scene(240, 320)
    with ros_helpers.python_process(args, tmp_path / "node.log") as child:
        with ros_helpers.ros_node("bench_test_client") as node:
            client = bench_node.Client(node, "bench")
            try:
                client.wait_for_node(child.popen, 60)
                trips = [client.round_trip(image, 60) for _ in range(3)]
                client.node_status(3, 30)
            finally:
                client.close()
            values = ros_helpers.last_status(client.statuses, "/bench/superseg_node")
    assert len(trips) == 3 and values["frames_processed"] == "3", child.output()
    for stage in STAGES:
        for p in ("p50", "p95"):
            assert float(values[f"stage_{stage}_ms_{p}"]) >= 0
    for p in ("p50", "p95"):  # inference is part of each frame's processing
        assert float(values[f"stage_inference_ms_{p}"]) <= float(values[f"processing_ms_{p}"])
    names = [name for name, _, _ in bench_node.stage_rows(values)]
    assert names[:len(STAGES)] == list(STAGES)
