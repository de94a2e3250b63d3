"""The latency summary shared by eval, eval --live, soak and bench engines."""

import pytest

from seg_perception.stats import percentiles


def test_percentiles_interpolate_and_summarise() -> None:
    p = percentiles([float(i) for i in range(1, 21)])
    assert p == {"p50": 10.5, "p95": 19.05, "p99": 19.81, "mean": 10.5, "n": 20}
    q = percentiles([1.0, 2.0, 3.0, 4.0, 100.0], qs=(50, 90))
    assert set(q) == {"p50", "p90", "mean", "n"}
    assert q["p50"] == 3.0 and q["p90"] == pytest.approx(61.6) and q["mean"] == 22.0


def test_percentiles_round_and_never_nan() -> None:
    assert percentiles([1 / 3])["p50"] == 0.333
    assert percentiles([]) == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "n": 0}
