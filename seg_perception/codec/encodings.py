"""ROS image encodings (cv_bridge's ``getCvType`` table) and the codec's error types.

The bottom of :mod:`seg_perception.codec`: NumPy and the package's error base only.
"""

from __future__ import annotations

import re

import numpy as np

from seg_perception.errors import SegError

__all__ = [
    "DTYPE_TO_DEPTH", "ImageCodecError", "ImageDecodeError", "ImageEncodeError",
    "cv_bridge_knows", "cv_type_name", "encoding_info",
]  # fmt: skip


class ImageCodecError(SegError, ValueError):
    """A conversion failed; ``reason`` is a short machine-readable tag (for drop counters)."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class ImageDecodeError(ImageCodecError):
    """A message could not be turned into an array (``reason``: "empty", "too_large",
    "step_too_small", "data_too_short", "data_too_long", "unknown_encoding",
    "unsupported_encoding", "incompatible_type", "odd_width", "bad_data", "corrupt_compressed")."""


class ImageEncodeError(ImageCodecError):
    """An array could not be turned into a message (``reason``: "bad_shape", "empty",
    "unsupported_dtype", "incompatible_type", "unknown_encoding", "unsupported_encoding",
    "unsupported_format", "encode_failed")."""


# ------------------------------------------------------------------------------ encodings
_DEPTHS: dict[str, np.dtype] = {
    "8U": np.dtype(np.uint8), "8S": np.dtype(np.int8), "16U": np.dtype(np.uint16),
    "16S": np.dtype(np.int16), "32S": np.dtype(np.int32), "32F": np.dtype(np.float32),
    "64F": np.dtype(np.float64),
}  # fmt: skip
#: the dtypes a ROS image can hold (native byte order) -> cv depth name ("8U", "32F", ...)
DTYPE_TO_DEPTH: dict[np.dtype, str] = {dt: name for name, dt in _DEPTHS.items()}
# Named encodings exactly as cv_bridge's getCvType maps them (depth, channels).
_NAMED: dict[str, tuple[str, int]] = {
    "rgb8": ("8U", 3), "bgr8": ("8U", 3), "rgba8": ("8U", 4), "bgra8": ("8U", 4),
    "rgb16": ("16U", 3), "bgr16": ("16U", 3), "rgba16": ("16U", 4), "bgra16": ("16U", 4),
    "mono8": ("8U", 1), "mono16": ("16U", 1),
    **{f"bayer_{p}8": ("8U", 1) for p in ("rggb", "bggr", "gbrg", "grbg")},
    **{f"bayer_{p}16": ("16U", 1) for p in ("rggb", "bggr", "gbrg", "grbg")},
    "yuv422": ("8U", 2), "yuv422_yuy2": ("8U", 2),
}  # fmt: skip
# sensor_msgs/image_encodings aliases newer than cv_bridge's table: same layout.
_ALIASES = {"uyvy": ("8U", 2), "yuyv": ("8U", 2)}
# In sensor_msgs but not representable as one (H, W, C) array, so cv_bridge rejects them too.
_UNSUPPORTED = ("nv12", "nv21", "nv24")
# cv_bridge's generic types: "(8U|...|64F)C([0-9]+)" or the bare depth (1 channel).
_GENERIC = re.compile(r"(8U|8S|16U|16S|32S|32F|64F)(?:C([0-9]+))?")
_CV_CN_MAX = 512


def encoding_info(
    encoding: str, *, error: type[ImageCodecError] = ImageDecodeError
) -> tuple[np.dtype, int]:
    """Native dtype and channel count of a ROS image encoding (cv_bridge's ``getCvType``)."""
    if encoding in _NAMED or encoding in _ALIASES:
        depth, channels = _NAMED.get(encoding) or _ALIASES[encoding]
        return _DEPTHS[depth], channels
    m = _GENERIC.fullmatch(encoding)
    if m is not None:
        channels = int(m.group(2)) if m.group(2) is not None else 1
        if 1 <= channels <= _CV_CN_MAX:
            return _DEPTHS[m.group(1)], channels
    if encoding in _UNSUPPORTED:
        raise error(
            f"image encoding {encoding!r} (planar YUV) is not supported: it has no "
            "(H, W, C) passthrough form",
            reason="unsupported_encoding",
        )
    raise error(
        f"unknown image encoding {encoding!r}: expected one of "
        f"{sorted([*_NAMED, *_ALIASES])} or a generic type such as '8UC3', '32FC1'",
        reason="unknown_encoding",
    )


def cv_bridge_knows(encoding: str) -> bool:
    """Whether ``encoding`` is in cv_bridge's own table (a named encoding or a generic type);
    False for the newer aliases (``uyvy``, ``yuyv``) and for unknown names."""
    return encoding in _NAMED or _GENERIC.fullmatch(encoding) is not None


def cv_type_name(dtype: np.dtype, channels: int) -> str:
    """The generic encoding of a native ``dtype`` (a key of :data:`DTYPE_TO_DEPTH`) with
    ``channels`` channels, e.g. ``(uint8, 3) -> "8UC3"``."""
    return f"{DTYPE_TO_DEPTH[dtype]}C{channels}"
