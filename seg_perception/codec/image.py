"""``sensor_msgs`` Image <-> NumPy conversion, cv_bridge-compatible.

Raw images only: :mod:`.compressed` handles ``CompressedImage``, :mod:`.frames` takes either.

When a working ROS 2 ``cv_bridge`` is importable (checked on a tiny image at import time, so a
build against NumPy 1 is detected and skipped), it does the passthrough conversions; otherwise this
module's own code does, and gives the same arrays and message fields as cv_bridge's
``imgmsg_to_cv2(msg, "passthrough")`` / ``cv2_to_imgmsg(arr, encoding)`` (rolling branch of
ros-perception/vision_opencv):

* shape ``(H, W)`` for one channel, ``(H, W, C)`` otherwise; dtype from the encoding exactly as
  cv_bridge's ``getCvType`` maps it (``yuv422`` = UYVY and ``yuv422_yuy2`` = YUYV are 8UC2);
* ``step`` row padding is dropped (the result is C-contiguous);
* ``is_bigendian`` data is returned in native byte order with the right values;
* ``array_to_imgmsg`` writes the C-order bytes, ``step = len(data) // height`` and
  ``is_bigendian`` = whether the array's dtype is big-endian.

One rule for the size of ``data``, whoever reads the message (camera frames in the node and in
bags, ground truth, node outputs): it must be exactly ``step * height`` bytes, as sensor_msgs
defines it ("actual matrix data, size is (step * rows)"). Shorter data and trailing bytes both
raise :class:`ImageDecodeError` ("data_too_short" / "data_too_long"): a message whose size
disagrees with its own fields is damaged, and which bytes are pixels cannot be told.

Deliberate differences from cv_bridge, each a case where cv_bridge crashes or returns garbage:
invalid messages (empty, short/long data, small step, unknown encoding) raise
:class:`ImageDecodeError` before the data is read; a ``step`` that is not a multiple of the pixel
size is decoded by strides (cv_bridge shears the rows); big-endian data works on NumPy 2 (cv_bridge
calls the removed ``ndarray.newbyteorder``); the newer aliases ``uyvy``/``yuyv`` are accepted.

Memory policy of :func:`imgmsg_to_array`: without row padding or byte swapping it returns a view,
like cv_bridge, but only into a buffer that belongs to the message object or cannot change:
``array.array`` (rclpy deserialises every received message into a freshly allocated array; the rmw
buffer it copies from is the one rclpy reuses, and it is never viewed), ``bytes`` and read-only
buffers. Writable foreign buffers (``bytearray``, writable ``memoryview``/ndarray, lists) are
copied. The view keeps the message's array alive; while it exists that ``array.array`` cannot be
resized in place (assigning a new ``msg.data`` is fine). Pass ``copy=True`` for a private array.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import cv2
import numpy as np

from seg_perception.codec.buffers import byte_length, byte_view, u8_array
from seg_perception.codec.encodings import (
    DTYPE_TO_DEPTH,
    ImageDecodeError,
    ImageEncodeError,
    cv_bridge_knows,
    cv_type_name,
    encoding_info,
)
from seg_perception.codec.msg_types import ros_type

__all__ = [
    "BACKEND", "GT_ENCODINGS", "HAVE_CV_BRIDGE", "array_to_imgmsg", "check_image",
    "image_from_ros", "imgmsg_to_array", "to_rgb8",
]  # fmt: skip


def _validate(msg: Any) -> tuple[np.dtype, int, int]:
    """Check an Image's fields against its data size; returns (dtype, channels, row_bytes)."""
    encoding = str(msg.encoding)
    dtype, channels = encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    what = f"image {width}x{height} {encoding!r}"
    if height <= 0 or width <= 0:
        raise ImageDecodeError(
            f"{what}: empty image (height and width must be > 0)", reason="empty"
        )
    pixel_bytes = dtype.itemsize * channels
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise ImageDecodeError(
            f"{what}: step {step} < width*bytes_per_pixel = {width}*{pixel_bytes} = {row_bytes}",
            reason="step_too_small",
        )
    nbytes = byte_length(msg.data)
    if nbytes is None:
        raise ImageDecodeError(
            f"{what}: data of type {type(msg.data).__name__} is not a byte buffer",
            reason="bad_data",
        )
    expected = step * height
    if nbytes != expected:
        reason = "data_too_short" if nbytes < expected else "data_too_long"
        raise ImageDecodeError(
            f"{what}: data has {nbytes} bytes, expected step*height = {step}*{height} = {expected}",
            reason=reason,
        )
    return dtype, channels, row_bytes


def _layout(msg: Any) -> tuple[np.dtype, int, int]:
    """(dtype, channels, row_bytes) of an Image already validated (:func:`check_image`)."""
    dtype, channels = encoding_info(str(msg.encoding))
    return dtype, channels, int(msg.width) * dtype.itemsize * channels


def _own_imgmsg_to_array(msg: Any, copy: bool, checked: bool = False) -> np.ndarray:
    dtype, channels, row_bytes = _layout(msg) if checked else _validate(msg)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    buf, may_view = byte_view(msg.data)
    # Strides instead of cv_bridge's reshape to (H, step // pixel_bytes): also right when the
    # padding is not a whole number of pixels ("step: Full row length in bytes", sensor_msgs).
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    pixel_bytes = dtype.itemsize * channels
    shape = (height, width) if channels == 1 else (height, width, channels)
    strides = (step, pixel_bytes) if channels == 1 else (step, pixel_bytes, dtype.itemsize)
    view = np.ndarray(shape, dtype=wire, buffer=buf, strides=strides)
    if not wire.isnative:
        return view.astype(dtype)  # a native-order copy with the same values
    if copy or not may_view or step != row_bytes:
        return np.array(view, dtype=dtype, order="C")
    return view


def imgmsg_to_array(msg: Any, *, copy: bool = False, checked: bool = False) -> np.ndarray:
    """cv_bridge ``imgmsg_to_cv2(msg, "passthrough")``: ``(H, W)`` or ``(H, W, C)`` array.

    ``msg`` is a ``sensor_msgs.msg.Image`` (or any object with its fields, e.g. from rosbags).
    The message is validated before its data is read; see the module docstring for when the
    result is a view into ``msg.data`` (``copy=True`` always returns a private array).
    ``checked=True``: the message passed :func:`check_image` already (the node's subscription
    callback checks every frame once), so its fields are not checked again. Raises
    :class:`ImageDecodeError`.
    """
    if _BRIDGE is not None and _bridge_handles(msg):
        if not checked:
            _validate(msg)
        out = _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="passthrough")
        return np.array(out) if copy else out
    return _own_imgmsg_to_array(msg, copy, checked)


def _bridge_handles(msg: Any) -> bool:
    """Cases where cv_bridge's passthrough is known to be right (see module docstring)."""
    encoding = str(msg.encoding)
    if not cv_bridge_knows(encoding):
        return False
    try:
        dtype, channels = encoding_info(encoding)
    except ImageDecodeError:
        return False
    # is_bigendian: cv_bridge's byteswap path calls ndarray.newbyteorder (gone in NumPy 2).
    return not msg.is_bigendian and int(msg.step) % (dtype.itemsize * channels) == 0


# ------------------------------------------------------------------------------ array -> Image
def array_to_imgmsg(arr: np.ndarray, encoding: str = "passthrough", header: Any = None) -> Any:
    """cv_bridge ``cv2_to_imgmsg(arr, encoding, header)``: a ``sensor_msgs.msg.Image``.

    ``arr``: ``(H, W)`` or ``(H, W, C)`` of uint8/int8/uint16/int16/int32/float32/float64; its
    type must be the encoding's (``rgb8`` needs uint8 with 3 channels, ``mono16`` uint16 ...).
    ``"passthrough"`` writes the generic type name (e.g. ``"32SC1"``). The header is assigned
    as given (the node passes the input's, so stamp and frame_id carry over).
    Raises ``TypeError`` for a non-array and :class:`ImageEncodeError` for a bad one.
    """
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"array_to_imgmsg expects a numpy.ndarray, got {type(arr).__name__}")
    if arr.ndim not in (2, 3):
        raise ImageEncodeError(
            f"array_to_imgmsg: expected shape (H, W) or (H, W, C), got {arr.shape}",
            reason="bad_shape",
        )
    if arr.size == 0:
        raise ImageEncodeError(f"array_to_imgmsg: empty array of shape {arr.shape}", reason="empty")
    native = arr.dtype.newbyteorder("=")
    if native not in DTYPE_TO_DEPTH:
        raise ImageEncodeError(
            f"array_to_imgmsg: dtype {arr.dtype} has no ROS image type; "
            f"expected one of {sorted(str(d) for d in DTYPE_TO_DEPTH)}",
            reason="unsupported_dtype",
        )
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    cv_type = cv_type_name(native, channels)
    if encoding == "passthrough":
        encoding = cv_type
    else:
        want_dtype, want_channels = encoding_info(encoding, error=ImageEncodeError)
        if (want_dtype, want_channels) != (native, channels):
            raise ImageEncodeError(
                f"array_to_imgmsg: encoding {encoding!r} needs "
                f"{cv_type_name(want_dtype, want_channels)} but the array is {cv_type} "
                f"(dtype {arr.dtype}, shape {arr.shape})",
                reason="incompatible_type",
            )
    if _BRIDGE is not None and cv_bridge_knows(encoding):
        return _BRIDGE.cv2_to_imgmsg(arr, encoding, header)
    # check_fields=True: the data setter keeps our array.array (no copy)
    msg = ros_type("sensor_msgs/msg/Image")(check_fields=True)
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = int(arr.shape[0]), int(arr.shape[1]), encoding
    # cv_bridge: is_bigendian = (dtype.byteorder == '>'); also right on a big-endian host.
    big = arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big")
    msg.is_bigendian = int(big and arr.dtype.itemsize > 1)
    msg.data = u8_array(np.ascontiguousarray(arr))
    msg.step = len(msg.data) // msg.height
    return msg


# ------------------------------------------------------------------------------ -> RGB
_BAYER = {  # cv_bridge's table: ROS names the top-left 2x2, OpenCV names the second row.
    "rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB,
}  # fmt: skip
_TO_RGB: dict[str, int | None] = {
    "rgb8": None, "rgb16": None, "bgr8": cv2.COLOR_BGR2RGB, "bgr16": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB, "rgba16": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB, "bgra16": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB, "mono16": cv2.COLOR_GRAY2RGB,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2, "yuyv": cv2.COLOR_YUV2RGB_YUY2,
    **{f"bayer_{p}{b}": code for p, code in _BAYER.items() for b in (8, 16)},
}  # fmt: skip


def to_rgb8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Network input: ``(H, W, 3)`` uint8 RGB from a passthrough array of ``encoding``.

    Bayer is demosaiced (bilinear) by OpenCV, ``yuv422``/``uyvy`` and ``yuv422_yuy2``/``yuyv`` go
    through OpenCV's UYVY/YUY2 conversions (even width needed), mono is replicated, alpha is
    dropped, 16-bit data is scaled by ``>> 8``. ``rgb8`` input is returned as is when contiguous.
    Depth/float/generic types (``16UC1``, ``32FC1`` ...) raise :class:`ImageDecodeError` with
    reason "unsupported_encoding"; an array that does not match the encoding "incompatible_type".
    """
    dtype, channels = encoding_info(encoding)
    if encoding not in _TO_RGB:
        raise ImageDecodeError(
            f"to_rgb8: encoding {encoding!r} carries no colour (depth, float "
            f"or generic data); colour encodings: {sorted(_TO_RGB)}",
            reason="unsupported_encoding",
        )
    if arr.ndim == 3 and channels == 1 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    want_shape = 2 if channels == 1 else 3
    if (
        arr.dtype.newbyteorder("=") != dtype
        or arr.ndim != want_shape
        or (channels > 1 and arr.shape[2] != channels)
    ):
        raise ImageDecodeError(
            f"to_rgb8: encoding {encoding!r} needs {dtype} with {channels} "
            f"channel(s), got {arr.dtype} of shape {arr.shape}",
            reason="incompatible_type",
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(
            f"to_rgb8: empty {encoding!r} image of shape {arr.shape}", reason="empty"
        )
    code = _TO_RGB[encoding]
    if code in (cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_YUV2RGB_YUY2) and arr.shape[1] % 2:
        raise ImageDecodeError(
            f"to_rgb8: 4:2:2 encoding {encoding!r} needs an even width, got {arr.shape[1]}",
            reason="odd_width",
        )
    if not (arr.flags.c_contiguous and arr.dtype.isnative):
        arr = np.ascontiguousarray(arr, dtype=dtype)
    if code is not None and encoding.startswith("bayer_"):  # demosaic at full depth, then scale
        arr, code = cv2.cvtColor(arr, code), None
    if dtype.itemsize == 2:
        arr = np.right_shift(arr, 8).astype(np.uint8)
    return arr if code is None else cv2.cvtColor(arr, code)


def check_image(msg: Any, max_pixels: int = 0) -> None:
    """The checks of an Image that need no pixel conversion (cheap enough for a subscription
    callback): size limit (``max_pixels`` > 0), empty, step too small, data shorter or longer
    than ``step * height``, unknown or unsupported encoding. Raises :class:`ImageDecodeError`
    with a ``reason``."""
    pixels = int(msg.height) * int(msg.width)
    if max_pixels and pixels > max_pixels:
        raise ImageDecodeError(
            f"{msg.width}x{msg.height} = {pixels} pixels exceeds max_pixels {max_pixels}",
            reason="too_large",
        )
    _validate(msg)


# ------------------------------------------------------------------------------ ground truth
#: the encodings of ground-truth and label images (:func:`image_from_ros`)
GT_ENCODINGS: tuple[str, ...] = ("mono8", "8UC1", "mono16", "16UC1", "32SC1", "rgb8")


def image_from_ros(msg: Any, *, copy: bool = False) -> np.ndarray:
    """Pixels of a ground-truth or label Image (rclpy or rosbags message): trainIds and
    instance / panoptic ids as the node publishes them and bags record them.

    Encodings: ``mono8``/``8UC1`` (uint8), ``mono16``/``16UC1`` (uint16), ``32SC1`` (int32) and
    ``rgb8`` (colour images); any other raises :class:`ImageDecodeError`
    ("unsupported_encoding"): camera frames go through :func:`to_rgb8` instead. Decoded by
    :func:`imgmsg_to_array` with the same rules as camera frames: ``step`` row padding is
    dropped, ``is_bigendian`` honoured, and ``data`` must hold exactly ``step * height`` bytes
    (trailing bytes are an error, like missing ones). Returns ``(H, W)`` or ``(H, W, 3)`` in
    native byte order (a view into ``msg.data`` where :func:`imgmsg_to_array` gives one;
    ``copy=True`` for a private array).
    """
    encoding = str(msg.encoding)
    if encoding not in GT_ENCODINGS:
        raise ImageDecodeError(
            f"image_from_ros: encoding {encoding!r} is not a ground-truth encoding; supported: "
            f"{', '.join(GT_ENCODINGS)} (camera frames: seg_perception.codec.frames.msg_to_rgb8)",
            reason="unsupported_encoding",
        )
    return imgmsg_to_array(msg, copy=copy)


# ------------------------------------------------------------------------------ cv_bridge
def _probe_cv_bridge() -> Any | None:
    """A ``CvBridge`` if one imports and round-trips a tiny image correctly here, else None.

    Set ``SEG_PERCEPTION_NO_CV_BRIDGE=1`` to force the own conversion.
    """
    if os.environ.get("SEG_PERCEPTION_NO_CV_BRIDGE", "") not in ("", "0"):
        return None
    try:
        from cv_bridge import CvBridge

        bridge = CvBridge()
        for ref, encoding in (
            (np.arange(18, dtype=np.uint8).reshape(2, 3, 3), "rgb8"),
            (np.arange(6, dtype=np.uint16).reshape(2, 3) * 4099, "mono16"),
        ):
            msg = bridge.cv2_to_imgmsg(ref, encoding)
            back = bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough")
            mine = _own_imgmsg_to_array(msg, copy=True)
            same = back.dtype == ref.dtype and back.shape == ref.shape
            if not (same and np.array_equal(back, ref) and np.array_equal(mine, ref)):
                return None
        return bridge
    except Exception:  # any failure (ImportError, a NumPy-1 build, ...) -> own code
        return None


_BRIDGE: Any | None = _probe_cv_bridge()
HAVE_CV_BRIDGE: bool = _BRIDGE is not None
BACKEND: str = "cv_bridge" if HAVE_CV_BRIDGE else "numpy"
