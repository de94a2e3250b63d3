"""The one place where the rclpy of the supported ROS 2 distributions differs for this package.

Supported: Jazzy (rclpy 7.1, Fast DDS 2.14, Python 3.12) and Kilted (rclpy 9.x, Fast DDS 3.2,
Python 3.11 here). Everything else the package uses (parameters and their descriptors, QoS
profiles, executors, timers, graph queries, raw publish/subscribe, serialization, signal
handling) has the same API on both. What differs:

- a subscription callback's message info: Kilted gives the publisher's GID
  (``publisher_gid``), Jazzy only the publication sequence number;
- ``Executor.shutdown()`` while another thread is inside ``spin()``: Jazzy destroys the guard
  condition under the waiting thread, which then dies with ``AttributeError: 'NoneType' object
  has no attribute 'handle'`` (seen in this package's tests); :class:`SpinThread` ends the thread
  first. On both, ``shutdown()`` does not wait for the callbacks a ``MultiThreadedExecutor``
  has handed to its pool (its wait is skipped once the shutdown flag is set), so SpinThread
  takes single-threaded executors only;
- the environment variable of the Fast DDS profile file (Fast DDS 2 vs 3): not rclpy, handled in
  :mod:`seg_perception.ros.dds`, which sets both names.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from seg_perception.ros.dds import PublisherInfo

#: ``input_qos`` parameter value -> reliability of the camera subscriptions
INPUT_RELIABILITY = {
    "sensor_data": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
}


def distro() -> str:
    """The ROS 2 distribution of the rclpy in use: ``jazzy`` (7.x) or ``kilted`` (9.x)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("ros-rclpy", "rclpy"):
        try:
            major = int(version(dist).split(".")[0])
        except (PackageNotFoundError, ValueError):
            continue
        return {7: "jazzy", 9: "kilted"}.get(major, f"rclpy {major}")
    import os

    return os.environ.get("ROS_DISTRO", "unknown")  # a source or apt install without metadata


def input_qos(kind: str, depth: int) -> QoSProfile:
    """The camera subscriptions' QoS: ROS's sensor-data profile (best effort, volatile, keep
    last) with the chosen reliability and depth."""
    return QoSProfile(
        history=qos_profile_sensor_data.history,
        depth=depth,
        reliability=INPUT_RELIABILITY[kind],
        durability=qos_profile_sensor_data.durability,
    )


def gid_text(gid: Sequence[int] | bytes) -> str:
    """An endpoint GID as ``ros2 topic info -v`` prints it (dotted hex)."""
    return ".".join(f"{b:02x}" for b in bytes(gid))


def message_source(info: Mapping[str, Any] | None) -> tuple[str | None, int | None]:
    """``(publisher GID or None, publication sequence number or None)`` from a subscription
    callback's message info. Kilted's info carries ``publisher_gid``; Jazzy's does not (the
    caller then tells publishers apart only when one is matched)."""
    if not info:
        return None, None
    seq = info.get("publication_sequence_number")
    gid = info.get("publisher_gid")
    data = gid.get("data") if isinstance(gid, Mapping) else None
    return (gid_text(data) if data else None), (int(seq) if seq else None)


def publishers_of(node: Node, topic: str) -> list[PublisherInfo]:
    """The publishers on ``topic`` (a fully qualified name) as the ROS graph lists them."""
    out = []
    for info in node.get_publishers_info_by_topic(topic):
        ns = info.node_namespace.rstrip("/")
        reliability = info.qos_profile.reliability
        reliable = {
            ReliabilityPolicy.RELIABLE: True,
            ReliabilityPolicy.BEST_EFFORT: False,
        }.get(reliability)
        out.append(PublisherInfo(f"{ns}/{info.node_name}", gid_text(info.endpoint_gid), reliable))
    return out


class SpinThread:
    """``executor`` spun in a daemon thread until :meth:`stop`, which lets the thread leave
    before it shuts the executor down (safe on Jazzy and Kilted alike).

    Only a :class:`~rclpy.executors.SingleThreadedExecutor`: it runs each callback inside
    ``spin_once``, so once the thread has left no callback is in flight. A
    ``MultiThreadedExecutor`` hands callbacks to a thread pool, and ``shutdown()`` destroys the
    executor's guard condition without waiting for them; a queued callback then fails with
    ``InvalidHandle`` and rclpy prints "The following exception was never retrieved: cannot use
    Destroyable because destruction was requested" when it is collected (about every other
    stop in a by-hand loop with a 0.5 ms timer). Nodes that must not wait for one another get
    one SpinThread each (:meth:`of`).
    """

    def __init__(self, executor: Executor, name: str | None = None, period_s: float = 0.1):
        if not isinstance(executor, SingleThreadedExecutor):
            raise TypeError(
                "SpinThread: expected a SingleThreadedExecutor, got "
                f"{type(executor).__name__} (its pool's callbacks outlive shutdown(); spin "
                "each node in its own SpinThread instead)"
            )
        self.executor = executor
        self._period = period_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    @classmethod
    def of(cls, node: Node, name: str | None = None) -> SpinThread:
        """``node`` alone in a new single-threaded executor of its context, spun in a thread."""
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        return cls(executor, name=name)

    def _run(self) -> None:
        while not self._stop.is_set() and self.executor.context.ok():
            try:
                self.executor.spin_once(timeout_sec=self._period)
            except ExternalShutdownException:  # the context was shut down under us
                return

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (within one ``period_s``), then shut the executor down."""
        self._stop.set()
        self.thread.join(timeout)
        self.executor.shutdown(timeout_sec=timeout)
