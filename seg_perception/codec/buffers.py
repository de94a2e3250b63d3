"""The byte buffers of message ``data`` fields, shared by the raw and the compressed codec.

A message's ``data`` is an ``array.array('B')`` (rclpy), a NumPy array (rosbags), ``bytes``, a
``bytearray``, a ``memoryview`` or a list of ints (hand-made messages).
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np

from seg_perception.codec.encodings import ImageDecodeError

__all__ = ["byte_length", "byte_view", "u8_array"]


def byte_length(data: Any) -> int | None:
    """Size in bytes of a message's ``data`` without reading it (None: not a byte buffer)."""
    if isinstance(data, (bytes, bytearray, list, tuple)):
        return len(data)
    try:
        return memoryview(data).nbytes
    except TypeError:
        return None


def byte_view(data: Any) -> tuple[np.ndarray, bool]:
    """1-D uint8 array over ``data`` and whether a view into it may be handed out (the buffer
    belongs to the message object or cannot change); a list that is not bytes 0..255 raises
    :class:`ImageDecodeError` ("bad_data")."""
    if isinstance(data, array.array):  # rclpy: owned by this message object alone
        return np.frombuffer(data, np.uint8), True
    if isinstance(data, bytes):
        return np.frombuffer(data, np.uint8), True
    if isinstance(data, (list, tuple)):
        try:
            return np.asarray(data, dtype=np.uint8), False
        except (OverflowError, ValueError, TypeError) as exc:
            raise ImageDecodeError(
                f"image data list is not bytes 0..255: {exc}", reason="bad_data"
            ) from exc
    view = memoryview(data)
    if not view.c_contiguous:
        return np.frombuffer(view.tobytes(), np.uint8), False
    return np.frombuffer(view.cast("B"), np.uint8), view.readonly


def u8_array(buf: np.ndarray) -> array.array:
    """The ``array.array('B')`` rclpy stores (a message made with ``check_fields=True`` keeps
    it as is; without, the setter copies it once more): the array's own memory when it is a whole
    C-contiguous view of one (``engines.base.byte_array_backed``: the message shares it until
    it is published and dropped), else one copy."""
    base = buf.base
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if (
        isinstance(base, array.array)
        and base.typecode == "B"
        and buf.flags.c_contiguous
        and buf.nbytes == len(base)
        and buf.__array_interface__["data"][0] == base.buffer_info()[0]
    ):
        return base
    out = array.array("B")
    out.frombytes(buf.reshape(-1).view(np.uint8).data)
    return out
