"""Shared parts of ``seg-perception fuzz`` and ``soak``: a ``seg_node`` subprocess started from a
temporary parameter file, an in-process ROS client, the /diagnostics watcher, RSS and tables.

Nothing here imports rclpy or numpy at module level (the CLI imports command modules to build
``--help``); ROS imports happen inside the functions that need them.
"""

from __future__ import annotations

import array
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from seg_perception.errors import SegError

#: Parameters of the node under stress: random weights (no weights file needed), a small
#: network, one inference thread, fast diagnostics, no panoptic model.
SMALL_NODE_PARAMS: dict[str, Any] = {
    "allow_random_weights": True,
    "weights": "/nonexistent/seg_stress_random_weights.safetensors",
    "backend": "onnxruntime",
    "network_height": 64,
    "network_width": 128,
    "threads": 1,
    "diagnostics_period_s": 0.1,
    "warmup_frames": 1,
    "panoptic.enabled": False,
}
_VMRSS = re.compile(r"^VmRSS:\s+(\d+)\s+kB", re.MULTILINE)


def add_node_arguments(parser: Any, *, startup_help: str, out_help: str) -> None:
    """The options fuzz and soak share: JSON output, node start-up time, engine cache, extra node
    parameters, log folder (``parser``: an ``argparse.ArgumentParser``)."""
    from seg_perception.cli_paths import OutputDir, OutputFile
    from seg_perception.config import add_key_value_option

    parser.add_argument(
        "--json", default=None, action=OutputFile, help="also write the results as JSON here"
    )
    parser.add_argument("--startup-timeout", type=float, default=180.0, help=startup_help)
    parser.add_argument(
        "--engine-cache",
        default=None,
        action=OutputDir,
        help="engine cache folder (default: a temporary one)",
    )
    add_key_value_option(
        parser, "--set", help="extra node parameters, e.g. --set backend=torch threads=1"
    )
    parser.add_argument("--out", default=None, action=OutputDir, help=out_help)


class StressError(SegError, RuntimeError):
    """The node could not be started or never became ready (the message names the log)."""


# ---------------------------------------------------------------------------------- params
def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"panoptic.enabled": False}`` -> ``{"panoptic": {"enabled": False}}`` (parameter files
    nest the dotted names, as ROS 2 flattens them)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"parameter {key!r} nests under a value that is not a section")
        node[leaf] = value
    return out


def write_params_file(path: str | Path, params: Mapping[str, Any]) -> Path:
    """Write ``params`` (flat, dotted names) as a ``/**/seg_node: ros__parameters:`` file, the
    key that reaches the node in any namespace. Unknown names are rejected here, naming them."""
    import yaml

    from seg_perception.config import SegConfig, validate

    unknown = sorted(k for k in params if k not in SegConfig.names())
    if unknown:
        raise ValueError(
            f"node parameters: unknown name(s) {', '.join(unknown)}; "
            f"valid: {', '.join(SegConfig.names())}"
        )
    validate(dict(params), source="stress node parameters", partial=True)
    path = Path(path)
    doc = {"/**/seg_node": {"ros__parameters": nest(params)}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def read_rss_kib(pid: int) -> int | None:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` of /proc/<pid>/status); None when
    the process is gone or the file has no VmRSS (a zombie)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = _VMRSS.search(text)
    return int(m.group(1)) if m else None


class NodeProcess:
    """``seg_node`` as a subprocess, started exactly as the launch file starts it
    (:func:`seg_perception.ros.bridge.start_node`); stdout and stderr go to ``log_path``."""

    def __init__(self, params_file: Path, *, namespace: str, log_path: Path) -> None:
        from seg_perception.ros.bridge import start_node

        self.namespace = namespace
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen = start_node(
            params_file, namespace=namespace, log_path=self.log_path
        )
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int | None:
        return read_rss_kib(self.pid) if self.alive() else None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (as Ctrl-C under ``ros2 launch``), SIGKILL after ``timeout``; the exit code."""
        from seg_perception.ros.bridge import stop_process

        if self.exit_code is None:
            self.exit_code = stop_process(self.proc, timeout)
        return self.exit_code

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 1500) -> str:
        return self.log_text()[-chars:]

    def has_traceback(self) -> bool:
        return "Traceback" in self.log_text()


# ---------------------------------------------------------------------------------- ROS client
class RosClient:
    """An rclpy context of its own with two nodes, each spun by its own thread: ``pub`` for
    publishers and timers, ``sub`` for subscriptions (so a busy publisher never delays the
    receive time stamps). ``close()`` shuts everything down."""

    def __init__(self, name: str) -> None:
        import rclpy

        from seg_perception.ros.bridge import loopback_env
        from seg_perception.ros.compat import SpinThread

        os.environ.update(loopback_env())  # this process talks DDS on this machine only
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.pub = rclpy.create_node(f"{name}_pub", context=self.context)
        self.sub = rclpy.create_node(f"{name}_sub", context=self.context)
        self._spinners = [
            SpinThread.of(node, name=f"{node.get_name()}_spin") for node in (self.pub, self.sub)
        ]

    def now_stamp(self) -> Any:
        return self.pub.get_clock().now().to_msg()

    def close(self) -> None:
        import rclpy

        for spinner in self._spinners:
            spinner.stop(timeout=2.0)
        self.pub.destroy_node()
        self.sub.destroy_node()
        rclpy.try_shutdown(context=self.context)


def u8(payload: bytes | bytearray | memoryview) -> array.array:
    """A message ``data`` field value (``array.array('B')`` skips rclpy's per-byte checks)."""
    return array.array("B", bytes(payload))


# ---------------------------------------------------------------------------------- diagnostics
def _norm(topic: str) -> str:
    return "/" + topic.strip("/")


class DiagnosticsWatcher:
    """The newest values of every camera status on ``/diagnostics``.

    A camera status is one with a ``frames_received`` value; it is keyed by its ``input_topic``
    value (absolute), so one watcher serves several nodes and several cameras per node.
    """

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self._cv = threading.Condition()
        self._latest: dict[str, dict[str, str]] = {}
        self._seq: dict[str, int] = {}
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_message, 50)

    def _on_message(self, msg: Any) -> None:
        with self._cv:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if "frames_received" not in values:
                    continue  # an engine status, or another node's
                topic = values.get("input_topic") or status.name
                key = _norm(topic)
                self._latest[key] = values
                self._seq[key] = self._seq.get(key, 0) + 1
            self._cv.notify_all()

    def latest(self, input_topic: str) -> dict[str, str] | None:
        with self._cv:
            return self._latest.get(_norm(input_topic))

    def seq(self, input_topic: str) -> int:
        """How many statuses of this camera arrived so far."""
        with self._cv:
            return self._seq.get(_norm(input_topic), 0)

    def wait(
        self,
        input_topic: str,
        predicate: Callable[[dict[str, str]], bool],
        timeout: float,
        *,
        after_seq: int = -1,
        abort: Callable[[], bool] = lambda: False,
    ) -> dict[str, str] | None:
        """The first status of ``input_topic`` (newer than ``after_seq``) that satisfies
        ``predicate``; None after ``timeout`` seconds or once ``abort()`` is true."""
        key = _norm(input_topic)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                values = self._latest.get(key)
                if values is not None and self._seq.get(key, 0) > after_seq and predicate(values):
                    return values
                left = deadline - time.monotonic()
                if left <= 0 or abort():
                    return None
                self._cv.wait(min(left, 0.1))


def counter(values: Mapping[str, str] | None, key: str) -> int:
    """An integer diagnostics value (0 when absent)."""
    if not values:
        return 0
    try:
        return int(float(values.get(key, "0")))
    except ValueError:
        return 0


def bad_reasons(values: Mapping[str, str] | None) -> dict[str, int]:
    """``bad_frames.<reason>`` counters of a camera status."""
    prefix = "bad_frames."
    return {k[len(prefix) :]: counter(values, k) for k in values or {} if k.startswith(prefix)}


def node_counters(values: Mapping[str, str] | None) -> dict[str, int]:
    """The counters a stress report keeps from a camera status."""
    keys = ("frames_received", "frames_processed", "bad_frames", "dropped_stale",
            "dropped_deadline", "skipped_no_subscribers", "engine_errors")  # fmt: skip
    out = {k: counter(values, k) for k in keys}
    out.update({f"bad_frames.{r}": n for r, n in sorted(bad_reasons(values).items())})
    return out


# ---------------------------------------------------------------------------------- readiness
def handshake(
    send: Callable[[int], None],
    answered: Callable[[int], bool],
    alive: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    resend_s: float = 0.5,
) -> None:
    """Send good frames ``send(k)`` (k = 0, 1, ...) until ``answered(k)`` for one of them: the
    node's engine is up and discovery has matched both directions (outputs are computed only for
    subscribed topics). Raises :class:`StressError` when the node dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    sent = 0
    while time.monotonic() < deadline:
        send(sent)
        sent += 1
        until = time.monotonic() + resend_s
        while time.monotonic() < until:
            if any(answered(k) for k in range(sent)):
                return
            if not alive():
                raise StressError(f"{what}: seg_node exited before it answered a frame")
            time.sleep(0.01)
    raise StressError(f"{what}: no answer from seg_node within {timeout:.0f} s")


# ---------------------------------------------------------------------------------- tables
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def report_goals(failed: list[str], name: str) -> int:
    """Print the verdict; exit status 0 when no goal failed, 1 otherwise."""
    if failed:
        print(f"[{name}] GOAL NOT MET: " + "; ".join(failed), flush=True)
        return 1
    print(f"[{name}] goal met", flush=True)
    return 0


def write_json(path: str | Path | None, result: Mapping[str, Any]) -> None:
    if not path:
        return
    import json

    from seg_perception.atomic import write_text_atomic

    write_text_atomic(Path(path), json.dumps(result, indent=2, sort_keys=False) + "\n")
