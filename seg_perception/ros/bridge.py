"""Moving serialised messages between bags and DDS: play a bag's topics, record topics to a bag.

Messages travel as CDR bytes, never re-encoded: rosbags stores exactly what rclpy publishes
(``publisher.publish(bytes)``) and receives (``raw=True`` subscriptions).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from seg_perception.codec import ros_type
from seg_perception.ros.dds import large_image_transport

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def loopback_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tools that talk DDS on this machine only."""
    env = dict(os.environ if env is None else env)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.pop("ROS_LOCALHOST_ONLY", None)
    large_image_transport(env)
    return env


def node_command(
    params_file: str | Path, *, namespace: str = "", params: dict[str, str] | None = None
) -> list[str]:
    """The ``seg_node`` command line exactly as ``ros2 launch`` builds it."""
    exe = Path(sys.executable).with_name("seg_node")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "seg_perception.ros.node"]
    cmd += ["--ros-args", "--params-file", str(params_file)]
    if namespace:
        cmd += ["-r", f"__ns:={namespace}"]
    for key, value in (params or {}).items():
        cmd += ["-p", f"{key}:={value}"]
    return cmd


def start_node(
    params_file: str | Path,
    *,
    namespace: str = "",
    params: dict[str, str] | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``seg_node`` as its own process; its output goes to ``log_path`` (or is inherited)."""
    out = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed by the process owner
    return subprocess.Popen(
        node_command(params_file, namespace=namespace, params=params),
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        env=loopback_env(env),
    )


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT, then SIGKILL after ``timeout`` seconds; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


@dataclass
class Received:
    """One message received by a :class:`TopicRecorder`."""

    topic: str
    msgtype: str
    rawdata: bytes
    wall_ns: int


class TopicRecorder:
    """Raw subscriptions on ``topics`` ({name: msgtype}); calls ``sink`` for every message."""

    def __init__(
        self,
        node: Node,
        topics: dict[str, str],
        sink: Callable[[Received], None],
        qos: QoSProfile = RELIABLE,
    ) -> None:
        self.node = node
        self.sink = sink
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._subs = [
            node.create_subscription(
                ros_type(msgtype), topic, self._callback(topic, msgtype), qos, raw=True
            )
            for topic, msgtype in topics.items()
        ]

    def _callback(self, topic: str, msgtype: str) -> Callable[[bytes], None]:
        def on_message(raw: bytes) -> None:
            with self._lock:
                self.counts[topic] = self.counts.get(topic, 0) + 1
                self.sink(Received(topic, msgtype, bytes(raw), time.time_ns()))

        return on_message


def play_messages(
    node: Node,
    messages: Iterable[tuple[str, str, int, bytes]],
    *,
    rate: float = 1.0,
    on_publish: Callable[[str, int, bytes], None] | None = None,
    qos: QoSProfile = RELIABLE,
    stop: threading.Event | None = None,
    wait_subscribers: float = 0.0,
    gate: Callable[[], None] | None = None,
) -> int:
    """Publish ``(topic, msgtype, bag_timestamp_ns, rawdata)`` at the recorded timing / ``rate``.

    ``wait_subscribers``: seconds to wait, for each new topic, until a subscriber is matched (so
    that the first messages are not published before discovery). ``gate``: called before each
    message and may block (e.g. until the previous one was answered); the recorded timing is
    then a minimum spacing. Returns the number published.
    """
    pubs: dict[str, object] = {}
    start_wall = start_bag = None
    count = 0
    for topic, msgtype, stamp, raw in messages:
        if stop is not None and stop.is_set():
            break
        if topic not in pubs:
            pubs[topic] = node.create_publisher(ros_type(msgtype), topic, qos)
            deadline = time.monotonic() + wait_subscribers  # let discovery match subscribers
            while pubs[topic].get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        if gate is not None:
            gate()
        if start_wall is None:
            start_wall, start_bag = time.monotonic(), stamp
        due = start_wall + (stamp - start_bag) / 1e9 / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pubs[topic].publish(raw)
        count += 1
        if on_publish is not None:
            on_publish(topic, time.time_ns(), raw)
    if qos.reliability == ReliabilityPolicy.RELIABLE:
        for pub in pubs.values():  # a process that exits right away must not lose the tail
            pub.wait_for_all_acked(Duration(seconds=5))
    return count
