"""Message type names (``pkg/msg/Name``, as bags store them) <-> rclpy message classes.

The classes are imported on first use, so that the codec and offline tools import without ROS.
"""

from __future__ import annotations

import importlib
from functools import cache

__all__ = ["ros_type", "type_name"]


@cache
def ros_type(msgtype: str) -> type:
    """``"sensor_msgs/msg/Image"`` -> ``sensor_msgs.msg.Image``; ValueError naming the type."""
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise ValueError(f"message type {msgtype!r} is not of the form 'package/msg/Name'")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])
    except (ImportError, AttributeError):
        raise ValueError(f"message type {msgtype!r} is not installed") from None


def type_name(msg_class: type) -> str:
    """``sensor_msgs.msg.Image`` -> ``"sensor_msgs/msg/Image"``."""
    return f"{msg_class.__module__.split('.')[0]}/msg/{msg_class.__name__}"
