"""Summary statistics of measured times: the one latency summary that every report uses
(``eval`` metrics, ``eval --live``, ``soak``, ``bench engines``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["percentiles"]


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ..., "mean": ..., "n": ...}`` of ``values`` (the
    percentiles ``qs`` by linear interpolation, in the unit of the values, rounded to 1e-3).
    Empty input gives zeros and ``n`` 0, so that a report never holds NaN."""
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return {**{f"p{q}": 0.0 for q in qs}, "mean": 0.0, "n": 0}
    return {
        **{f"p{q}": round(float(v), 3) for q, v in zip(qs, np.percentile(a, qs), strict=True)},
        "mean": round(float(a.mean()), 3),
        "n": int(a.size),
    }
