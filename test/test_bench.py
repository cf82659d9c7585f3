import json

import pytest

from superseg_ros.cli import bench


def test_bench_runs_one_small_configuration(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["--backbones", "vgg", "--resolutions", "64x96", "--repeats", "1",
                       "--warmup", "0", "--json", str(out)])
    assert code == 0

    data = json.loads(out.read_text())
    assert data["meta"]["random_weights"] is True
    (row,) = data["results"]
    assert "error" not in row
    assert row["backbone"] == "vgg" and row["resolution"] == [64, 96]
    for key in ("preprocess_ms", "network_ms", "postprocess_ms", "post_over_network_pct"):
        assert row[key] > 0, key
    assert 0 < row["keypoints"] <= 1000
    assert 0 < row["baseline_mib"] <= row["peak_mib"]
    assert "| vgg | 64x96 |" in capsys.readouterr().out


def test_unknown_backbone_exits_2_and_lists_valid_names(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--backbones", "resnet18,resnet19"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'resnet19'" in err and "mobilenet" in err
