"""tools/soak.py's report: window percentiles against numpy, and the verdict's four targets."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SOAK = Path(__file__).resolve().parents[1] / "tools" / "soak.py"
spec = importlib.util.spec_from_file_location("soak_tool", SOAK)
soak = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soak)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_window_percentiles_match_numpy(n):
    values = list(np.random.default_rng(n).gamma(4.0, 20.0, n))
    p50, p95 = soak.percentiles(values)
    assert p50 == pytest.approx(np.percentile(values, 50), abs=0.051)
    assert p95 == pytest.approx(np.percentile(values, 95), abs=0.051)
    assert soak.percentiles([]) == (None, None)


def samples(window_p50s, rss=None, node_p50s=None):
    out = [{"frame": 0, "rss_mib": 390.0}]
    for i, p50 in enumerate(window_p50s):
        out.append({"frame": 1000 * (i + 1), "rss_mib": (rss or {}).get(i, 430.0),
                    "window_latency_ms_p50": p50, "window_latency_ms_p95": p50 * 1.2,
                    "latency_ms_p50": (node_p50s or {}).get(i, p50)})
    return out


FINAL = {"errors": 0, "frames_processed": 10, "outputs": {"keypoints": 10}}


def test_verdict_judges_the_windows_not_the_node_snapshot():
    flat = [72.0, 73.0, 66.0, 68.0, 66.0, 75.0, 72.0, 77.0, 73.0, 80.0]
    # the node's last-100 snapshot was slow once, at the end: the windows decide
    v = soak.verdict(samples(flat, node_p50s={9: 124.0}), FINAL, None)
    assert v["passed"] and v["latency_p50_drift"] == pytest.approx(80 / 72, abs=1e-3)
    drifting = [72.0 + 10 * i for i in range(10)]
    v = soak.verdict(samples(drifting), FINAL, None)
    assert not v["checks"]["latency_drift"] and v["latency_p50_slope_ms_per_1000_frames"] == \
        pytest.approx(10.0)


def test_verdict_rss_growth_errors_and_death():
    flat = [70.0] * 10
    # growth is measured from the first sample after frame 0 (frame 1000) to the last
    assert soak.verdict(samples(flat, rss={9: 430.0 * 1.049}), FINAL, None)["passed"]
    v = soak.verdict(samples(flat, rss={9: 430.0 * 1.05}), FINAL, None)
    assert not v["checks"]["rss_growth"] and not v["passed"]
    assert not soak.verdict(samples(flat), dict(FINAL, errors=1), None)["passed"]
    v = soak.verdict(samples(flat), FINAL, "exited with -9 after 5 frames")
    assert not v["checks"]["node_alive"]
