"""Header stamps <-> nanoseconds: the key that pairs outputs, ground truth and camera frames."""

from __future__ import annotations

from typing import Any

__all__ = ["NS_PER_S", "stamp_ns"]

NS_PER_S = 1_000_000_000


def stamp_ns(header_or_stamp: Any) -> int:
    """Nanoseconds of a ``std_msgs/Header``'s stamp or of a ``builtin_interfaces/Time``
    (``sec * 1e9 + nanosec``, exact integers), from rclpy or rosbags messages alike.

    Raises ``TypeError`` for an object with neither ``stamp`` nor ``sec``/``nanosec``.
    """
    stamp = getattr(header_or_stamp, "stamp", header_or_stamp)
    try:
        sec, nanosec = stamp.sec, stamp.nanosec
    except AttributeError:
        raise TypeError(
            "stamp_ns expects a std_msgs Header or a builtin_interfaces Time, got "
            f"{type(header_or_stamp).__name__}"
        ) from None
    return int(sec) * NS_PER_S + int(nanosec)
