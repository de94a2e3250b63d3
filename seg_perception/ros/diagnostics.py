"""Node statistics and their ``diagnostic_msgs/DiagnosticArray`` form."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header


@dataclass
class NodeStats:
    """Counters of one camera stream. Updated by the worker, read by the diagnostics timer."""

    received: int = 0
    processed: int = 0
    dropped_stale: int = 0  # replaced in the mailbox by a newer frame before processing
    skipped_no_subscribers: int = 0
    panoptic_frames: int = 0
    engine_errors: int = 0
    last_error: str = ""
    bad_reasons: Counter = field(default_factory=Counter)
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    engine_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    stamps: deque = field(default_factory=lambda: deque(maxlen=200))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def bad_total(self) -> int:
        return sum(self.bad_reasons.values())

    def count_bad(self, reason: str) -> None:
        with self.lock:
            self.bad_reasons[reason] += 1

    def record_frame(self, *, total_ms: float, engine_ms: float) -> None:
        with self.lock:
            self.processed += 1
            self.latency_ms.append(total_ms)
            self.engine_ms.append(engine_ms)
            self.stamps.append(time.monotonic())

    def output_rate_hz(self) -> float:
        with self.lock:
            if len(self.stamps) < 2:
                return 0.0
            span = self.stamps[-1] - self.stamps[0]
            return (len(self.stamps) - 1) / span if span > 0 else 0.0

    def snapshot(self) -> dict[str, str]:
        rate = self.output_rate_hz()
        with self.lock:
            lat = np.array(self.latency_ms) if self.latency_ms else np.zeros(1)
            eng = np.array(self.engine_ms) if self.engine_ms else np.zeros(1)
            values = {
                "frames_received": self.received,
                "frames_processed": self.processed,
                "dropped_stale": self.dropped_stale,
                "bad_frames": self.bad_total,
                "skipped_no_subscribers": self.skipped_no_subscribers,
                "panoptic_frames": self.panoptic_frames,
                "engine_errors": self.engine_errors,
                "output_rate_hz": f"{rate:.2f}",
                "latency_p50_ms": f"{np.percentile(lat, 50):.1f}",
                "latency_p95_ms": f"{np.percentile(lat, 95):.1f}",
                "engine_p50_ms": f"{np.percentile(eng, 50):.1f}",
            }
            for reason, n in sorted(self.bad_reasons.items()):
                values[f"bad_frames.{reason}"] = n
            if self.last_error:
                values["last_error"] = self.last_error
        return {k: str(v) for k, v in values.items()}


def build_diagnostics(
    stamp: Time,
    name: str,
    stats: NodeStats,
    *,
    engine_state: str,
    engine_name: str,
    input_topic: str,
) -> DiagnosticArray:
    """One status for the node: OK, WARN on bad or dropped frames, ERROR on engine failures."""
    values = stats.snapshot()
    values.update(engine=engine_name, engine_state=engine_state, input_topic=input_topic)
    if stats.engine_errors or engine_state == "failed":
        level, message = DiagnosticStatus.ERROR, "engine errors"
    elif stats.bad_total:
        level, message = DiagnosticStatus.WARN, "bad input frames dropped"
    else:
        level, message = DiagnosticStatus.OK, "ok"
    status = DiagnosticStatus(
        level=level,
        name=f"{name}: segmentation",
        message=message,
        hardware_id=engine_name,
        values=[KeyValue(key=k, value=v) for k, v in values.items()],
    )
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
