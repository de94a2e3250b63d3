"""Per-camera and per-engine statistics and their ``diagnostic_msgs/DiagnosticArray`` form.

Levels are judged per diagnostics period (the counts since the previous message), so a status
returns to OK once the condition is gone: ERROR on engine errors or a drop ratio at or above
``error_drop_ratio``; WARN on a drop ratio at or above ``warn_drop_ratio``, bad input, an output
rate below ``min_rate_ratio`` x the expected rate, a p95 frame age above the deadline, a matched
publisher from which no frame arrived for ``silent_input_s``, or at least ``lost_input_ratio`` of
the frames the publishers sent lost on the way (gaps in their publication sequence numbers).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from seg_perception.config import DiagnosticsConfig
from seg_perception.ros.dds import README_SECTION, PublisherInfo

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
_COUNTERS = (
    "received",
    "processed",
    "dropped_stale",
    "dropped_deadline",
    "skipped_no_subscribers",
    "panoptic_frames",
    "engine_errors",
    "lost_in_transport",
)


@dataclass
class NodeStats:
    """Counters of one camera stream. Updated by the node's threads, read by the diagnostics
    timer."""

    received: int = 0
    processed: int = 0
    dropped_stale: int = 0  # replaced in the mailbox by a newer frame before processing
    dropped_deadline: int = 0  # older than max_frame_age_ms when the worker took it
    skipped_no_subscribers: int = 0
    panoptic_frames: int = 0
    engine_errors: int = 0
    lost_in_transport: int = 0  # frames publishers sent that never arrived (sequence gaps)
    last_error: str = ""
    last_frame_t: float | None = None  # monotonic time of the last frame received
    matched_since: float | None = None  # since when publishers are matched (None: none is)
    matched_publishers: int = 0
    bad_reasons: Counter = field(default_factory=Counter)
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=200))  # in node
    age_ms: deque = field(default_factory=lambda: deque(maxlen=200))  # stamp -> published
    engine_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    stamps: deque = field(default_factory=lambda: deque(maxlen=200))
    lock: threading.Lock = field(default_factory=threading.Lock)
    _mark: dict = field(default_factory=dict)  # counters at the previous window()
    _last_seq: dict = field(default_factory=dict)  # publisher -> its last sequence number

    @property
    def bad_total(self) -> int:
        return sum(self.bad_reasons.values())

    def received_from(self, publisher: Hashable, seq: int | None, now: float | None = None) -> None:
        """A frame arrived from ``publisher`` (any key that tells publishers apart) with its
        publication sequence number ``seq`` (None: the RMW did not say); a gap since that
        publisher's previous frame counts as frames lost in transport."""
        with self.lock:
            self.received += 1
            self.last_frame_t = time.monotonic() if now is None else now
            if not seq or seq < 0:
                return
            last = self._last_seq.get(publisher)
            self._last_seq[publisher] = seq
            if last is not None and seq > last + 1:
                self.lost_in_transport += seq - last - 1

    def matched(self, count: int, now: float | None = None) -> None:
        """The number of publishers matched on the input topic now (polled)."""
        with self.lock:
            self.matched_publishers = count
            if count <= 0:
                self.matched_since = None
            elif self.matched_since is None:
                self.matched_since = time.monotonic() if now is None else now

    def silent_s(self, now: float | None = None) -> float:
        """Seconds for which publishers have been matched and no frame arrived (0 when none is
        matched)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            if self.matched_since is None:
                return 0.0
            since = self.matched_since
            if self.last_frame_t is not None:
                since = max(since, self.last_frame_t)
            return max(0.0, now - since)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def count_bad(self, reason: str) -> int:
        """Count a bad frame; returns the count of that reason."""
        with self.lock:
            self.bad_reasons[reason] += 1
            return self.bad_reasons[reason]

    def record_error(self, exc: BaseException) -> None:
        with self.lock:
            self.engine_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def record_frame(
        self, *, total_ms: float, engine_ms: float | None, age_ms: float | None
    ) -> None:
        """A processed frame; ``engine_ms`` None: the real-time engine did not run for it (only
        panoptic outputs were wanted, fused with the ASP model's own semantic map)."""
        with self.lock:
            self.processed += 1
            self.latency_ms.append(total_ms)
            if engine_ms is not None:
                self.engine_ms.append(engine_ms)
            if age_ms is not None:
                self.age_ms.append(age_ms)
            self.stamps.append(time.monotonic())

    def output_rate_hz(self) -> float:
        with self.lock:
            if len(self.stamps) < 2:
                return 0.0
            span = self.stamps[-1] - self.stamps[0]
            return (len(self.stamps) - 1) / span if span > 0 else 0.0

    def age_p95_ms(self) -> float | None:
        """p95 of the recent frames' age at publication (None without stamped frames)."""
        with self.lock:
            return float(np.percentile(np.array(self.age_ms), 95)) if self.age_ms else None

    def window(self) -> dict[str, float]:
        """Counter increments since the previous call (and its duration ``seconds``)."""
        now = time.monotonic()
        with self.lock:
            current = {k: getattr(self, k) for k in _COUNTERS}
            current["bad"] = self.bad_total
            last = self._mark or {**dict.fromkeys(current, 0), "t": now}
            delta = {k: current[k] - last.get(k, 0) for k in current}
            delta["seconds"] = now - last["t"]
            self._mark = {**current, "t": now}
        return delta

    def snapshot(self) -> dict[str, str]:
        rate = self.output_rate_hz()
        with self.lock:
            lat = np.array(self.latency_ms) if self.latency_ms else np.zeros(1)
            eng = np.array(self.engine_ms) if self.engine_ms else np.zeros(1)
            values: dict[str, object] = {
                "frames_received": self.received,
                "frames_processed": self.processed,
                "dropped_stale": self.dropped_stale,
                "dropped_deadline": self.dropped_deadline,
                "bad_frames": self.bad_total,
                "skipped_no_subscribers": self.skipped_no_subscribers,
                "panoptic_frames": self.panoptic_frames,
                "engine_errors": self.engine_errors,
                "frames_lost_in_transport": self.lost_in_transport,
                "publishers_matched": self.matched_publishers,
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


def camera_level(
    window: dict[str, float],
    *,
    thresholds: DiagnosticsConfig,
    age_p95_ms: float | None = None,
    deadline_ms: float = 0.0,
    silent_s: float = 0.0,
) -> tuple[int, str]:
    """Level and message of one camera from the counts of one period and the seconds for which
    a matched publisher has sent nothing that arrived (pure)."""
    seconds = max(window["seconds"], 1e-9)
    received = window["received"]
    dropped = window["dropped_stale"] + window["dropped_deadline"] + window["bad"]
    drop_ratio = dropped / received if received else 0.0
    expected = thresholds.expected_rate_hz or received / seconds
    rate = window["processed"] / seconds
    if window["engine_errors"]:
        return ERROR, f"engine failed on {int(window['engine_errors'])} frame(s)"
    if received and drop_ratio >= thresholds.error_drop_ratio:
        return ERROR, f"dropped {drop_ratio:.0%} of frames"
    problems = []
    if thresholds.silent_input_s > 0 and silent_s >= thresholds.silent_input_s:
        problems.append(
            f"no frame for {silent_s:.0f} s from a matched publisher: frames lost in transport? "
            f"(too large for its DDS transport; {README_SECTION})"
        )
    if lost_in_transport(window, thresholds):
        lost = int(window["lost_in_transport"])
        problems.append(
            f"{lost} of {lost + int(received)} frames sent never arrived ({README_SECTION})"
        )
    if received and drop_ratio >= thresholds.warn_drop_ratio:
        problems.append(f"dropped {drop_ratio:.0%} of frames")
    if window["bad"]:
        problems.append(f"{int(window['bad'])} bad input frame(s)")
    # skipped frames (no subscribers) are not expected to produce output
    busy = received - window["skipped_no_subscribers"]
    if busy > 0 and expected > 0 and rate < thresholds.min_rate_ratio * expected:
        problems.append(f"output {rate:.1f} Hz < {thresholds.min_rate_ratio:g} x {expected:.1f} Hz")
    if deadline_ms > 0 and age_p95_ms is not None and age_p95_ms > deadline_ms:
        problems.append(f"p95 frame age {age_p95_ms:.0f} ms > deadline {deadline_ms:.0f} ms")
    if problems:
        return WARN, "; ".join(problems)
    return OK, "ok" if received else "no frames"


def lost_in_transport(window: dict[str, float], thresholds: DiagnosticsConfig) -> bool:
    """At least ``lost_input_ratio`` of the frames sent in the period never arrived."""
    lost = window.get("lost_in_transport", 0)
    return lost > 0 and lost >= thresholds.lost_input_ratio * (lost + window["received"])


FAILED_AFTER = 10  # consecutive failed calls that mark an engine "failed" (until one succeeds)


@dataclass
class EngineHealth:
    """State of one engine (``warming``, ``loaded``, ``reloading``, ``failed``) and its
    failures."""

    role: str  # "semantic" | "panoptic"
    name: str
    state: str = "warming"
    calls: int = 0
    errors: int = 0
    burst: int = 0  # consecutive failed calls
    last_error: str = ""
    reload_error: str = ""  # the last failed reload (kept until a reload succeeds)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _mark: int = 0

    def failed(self, exc: BaseException) -> bool:
        """Count a failed call; True when it starts a burst (log it then, not on every frame)."""
        with self.lock:
            self.calls += 1
            self.errors += 1
            self.burst += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.burst >= FAILED_AFTER:
                self.state = "failed"
            return self.burst == 1

    def succeeded(self) -> int:
        """Count a good call; returns the length of the burst it ends (0: none)."""
        with self.lock:
            self.calls += 1
            ended, self.burst = self.burst, 0
            if self.state == "failed":
                self.state = "loaded"
            return ended

    def status(self, node_name: str) -> DiagnosticStatus:
        with self.lock:
            new_errors, self._mark = self.errors - self._mark, self.errors
            values = {
                "engine": self.name,
                "state": self.state,
                "calls": self.calls,
                "errors": self.errors,
            }
            if self.last_error:
                values["last_error"] = self.last_error
            if self.reload_error:
                values["reload_error"] = self.reload_error
            if new_errors or self.state == "failed":
                level, message = ERROR, f"{new_errors} failed call(s): {self.last_error}"
            elif self.reload_error:
                level, message = WARN, f"reload failed, serving {self.name}: {self.reload_error}"
            elif self.state != "loaded":
                level, message = WARN, self.state
            else:
                level, message = OK, "loaded"
        return DiagnosticStatus(
            level=level,
            name=f"{node_name}: {self.role} engine",
            message=message,
            hardware_id=self.name,
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )


def camera_status(
    node_name: str,
    camera: str,
    stats: NodeStats,
    *,
    thresholds: DiagnosticsConfig,
    deadline_ms: float,
    input_topic: str,
    engine_name: str,
    window: dict[str, float] | None = None,
    silent_s: float = 0.0,
    publishers: Sequence[PublisherInfo] = (),
) -> DiagnosticStatus:
    """The status of one camera over the period since its previous status (``window``: that
    period's counts, taken here when not given); ``publishers`` are named in its values."""
    window = stats.window() if window is None else window
    values = stats.snapshot()
    age = stats.age_p95_ms()
    if age is not None:
        values["age_p95_ms"] = f"{age:.1f}"
    level, message = camera_level(
        window, thresholds=thresholds, age_p95_ms=age, deadline_ms=deadline_ms, silent_s=silent_s
    )
    if silent_s:
        values["silent_s"] = f"{silent_s:.1f}"
    if publishers:
        values["publishers"] = "; ".join(p.describe() for p in publishers)
    values.update(camera=camera, input_topic=input_topic, engine=engine_name)
    return DiagnosticStatus(
        level=level,
        name=f"{node_name}: camera {camera or 'default'}",
        message=message,
        hardware_id=engine_name,
        values=[KeyValue(key=k, value=v) for k, v in values.items()],
    )


def diagnostic_array(stamp: Time, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    return DiagnosticArray(header=Header(stamp=stamp), status=statuses)
