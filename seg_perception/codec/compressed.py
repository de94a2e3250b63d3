"""``sensor_msgs/CompressedImage`` <-> RGB arrays, as image_transport's compressed plugin does.

The sibling of :mod:`.image` (raw images): both use :mod:`.buffers` and the errors of
:mod:`.encodings`; neither imports the other (:mod:`.frames` takes either message type).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from seg_perception.codec.buffers import byte_length, byte_view, u8_array
from seg_perception.codec.encodings import ImageDecodeError, ImageEncodeError
from seg_perception.codec.msg_types import ros_type

__all__ = ["check_compressed", "decode_compressed", "encode_compressed"]

# sensor_msgs image_encodings isColor(): the encodings image_transport colour-converts.
_COLOR = {f"{c}{b}" for c in ("rgb", "bgr", "rgba", "bgra") for b in (8, 16)} | {
    "yuv422", "yuv422_yuy2", "uyvy", "yuyv"}  # fmt: skip


def check_compressed(msg: Any) -> tuple[np.ndarray, int]:
    """The checks of a CompressedImage that need no decoding (cheap enough for a subscription
    callback): no data, a depth format, a JPEG cut short. Returns (payload bytes, length);
    raises :class:`ImageDecodeError`."""
    fmt = str(msg.format)
    nbytes = byte_length(msg.data)
    if not nbytes:
        raise ImageDecodeError(f"compressed image (format {fmt!r}) has no data", reason="empty")
    buf, _ = byte_view(msg.data)
    if "compresseddepth" in fmt.lower():
        raise ImageDecodeError(
            f"compressed image format {fmt!r}: depth images have no RGB form",
            reason="unsupported_encoding",
        )
    # A JPEG cut short still decodes (grey rows, a libjpeg warning); its entropy data cannot
    # contain the EOI marker FF D9 (0xFF is stuffed), so a missing EOI near the end means cut.
    if buf[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in buf[-64:].tobytes():
        raise ImageDecodeError(
            f"compressed image (format {fmt!r}, {nbytes} bytes): truncated "
            "JPEG (no end-of-image marker)",
            reason="corrupt_compressed",
        )
    return buf, nbytes


def decode_compressed(msg: Any, *, checked: bool = False) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` -> ``(H, W, 3)`` uint8 RGB (``cv2.imdecode``).

    Channel order follows image_transport's compressed subscriber: the decoded pixels are BGR
    unless the format is "<colour encoding>; ... compressed <x>" with ``x`` not starting with
    "bgr" (then the payload was written in RGB order). Grey and 16-bit payloads become 8-bit RGB.
    Raises :class:`ImageDecodeError` ("empty", "unsupported_encoding" for compressedDepth,
    "corrupt_compressed").
    """
    fmt = str(msg.format)
    # checked: the message passed check_compressed already (the node's subscription callback)
    if checked:
        buf, nbytes = byte_view(msg.data)[0], int(byte_length(msg.data) or 0)
    else:
        buf, nbytes = check_compressed(msg)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        img, detail = None, str(exc).strip().splitlines()[-1]
    else:
        detail = "cv2.imdecode returned nothing"
    if img is None or img.size == 0:
        raise ImageDecodeError(
            f"compressed image (format {fmt!r}, {nbytes} bytes) could not be decoded: {detail}",
            reason="corrupt_compressed",
        )
    encoding, sep, rest = fmt.partition(";")
    # compressed_subscriber: for a colour encoding, "compressed bgr..." means BGR pixels,
    # anything else means the payload already holds RGB; without ";" it is BGR (cv2 default).
    payload_is_rgb = bool(sep) and encoding.strip() in _COLOR and "compressed bgr" not in rest
    return img if payload_is_rgb else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_compressed(
    rgb: np.ndarray, *, fmt: str = "jpeg", quality: int = 90, png_level: int = 3, header: Any = None
) -> Any:
    """``(H, W, 3)`` uint8 RGB (or ``(H, W)`` mono8) -> ``sensor_msgs.msg.CompressedImage``.

    ``format`` is written as image_transport's compressed publisher writes it:
    "rgb8; jpeg compressed bgr8", "rgb8; png compressed bgr8", "mono8; jpeg compressed mono8",
    "mono8; png compressed " (sic). ``quality`` 1..100 is the JPEG quality, ``png_level`` 0..9
    the PNG compression level. Raises :class:`ImageEncodeError`.
    """
    kind = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}.get(fmt.lower())
    if kind is None:
        raise ImageEncodeError(
            f"encode_compressed: format {fmt!r} not supported, expected 'jpeg' or 'png'",
            reason="unsupported_format",
        )
    mono = isinstance(rgb, np.ndarray) and rgb.ndim == 2
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or not (mono or (rgb.ndim == 3 and rgb.shape[2] == 3))
        or rgb.size == 0
    ):
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageEncodeError(
            f"encode_compressed: expected (H, W, 3) or (H, W) uint8, got {got}", reason="bad_shape"
        )
    if not 1 <= quality <= 100 or not 0 <= png_level <= 9:
        raise ImageEncodeError(
            f"encode_compressed: quality must be 1..100 and png_level 0..9, "
            f"got {quality}, {png_level}",
            reason="bad_parameter",
        )
    image = rgb if mono else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if kind == "jpeg":
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        target = "mono8" if mono else "bgr8"
    else:
        ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
        target = "" if mono else "bgr8"  # the publisher appends nothing for grey PNG
    if not ok:
        raise ImageEncodeError(
            f"encode_compressed: cv2.imencode({kind}) failed for shape {rgb.shape}",
            reason="encode_failed",
        )
    # check_fields=True: the data setter keeps our array.array (no copy)
    msg = ros_type("sensor_msgs/msg/CompressedImage")(check_fields=True)
    if header is not None:
        msg.header = header
    msg.format = f"{'mono8' if mono else 'rgb8'}; {kind} compressed {target}"
    msg.data = u8_array(data)
    return msg
