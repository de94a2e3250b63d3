"""Camera frames: a ``sensor_msgs`` Image or CompressedImage -> the network's RGB input.

The one place that knows both message types; it dispatches on the message's fields (``encoding``
and ``step``: Image; ``format`` and ``data``: CompressedImage), so rclpy and rosbags messages
alike are accepted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seg_perception.codec.compressed import check_compressed, decode_compressed
from seg_perception.codec.image import check_image, imgmsg_to_array, to_rgb8

__all__ = ["check_image_fields", "msg_to_rgb8"]


def _is_image(msg: Any) -> bool:
    return hasattr(msg, "encoding") and hasattr(msg, "step")


def _is_compressed(msg: Any) -> bool:
    return hasattr(msg, "format") and hasattr(msg, "data")


def check_image_fields(msg: Any, max_pixels: int = 0) -> None:
    """The checks of an Image or CompressedImage that need no pixel conversion (cheap enough for
    a subscription callback): size limit (``max_pixels`` > 0), empty, step too small, data
    shorter or longer than ``step * height``, unknown or unsupported encoding, empty / depth /
    cut-short compressed payloads. Raises
    :class:`~seg_perception.codec.encodings.ImageDecodeError` with a ``reason``, ``TypeError``
    for another message type."""
    if _is_image(msg):
        check_image(msg, max_pixels)
    elif _is_compressed(msg):
        check_compressed(msg)
    else:
        raise TypeError(f"expected sensor_msgs Image or CompressedImage, got {type(msg).__name__}")


def msg_to_rgb8(msg: Any, *, checked: bool = False) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from an Image (:func:`~.image.to_rgb8` of its passthrough array)
    or a CompressedImage (:func:`~.compressed.decode_compressed`). ``checked=True``: the message
    passed :func:`check_image_fields` already, so each frame is validated once."""
    if _is_image(msg):
        return to_rgb8(imgmsg_to_array(msg, checked=checked), str(msg.encoding))
    if _is_compressed(msg):
        return decode_compressed(msg, checked=checked)
    raise TypeError(
        f"msg_to_rgb8 expects sensor_msgs Image or CompressedImage, got {type(msg).__name__}"
    )
