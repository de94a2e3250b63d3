"""The messages of ``seg-perception fuzz``: a seeded mix of good and malformed camera frames.

Pure (numpy + OpenCV, no ROS): :func:`plan` returns :class:`FuzzMessage` field sets, and
:func:`to_ros` turns one into a ``sensor_msgs`` message. Every malformed kind names the
``bad_frames.<reason>`` counter the node must increase for it (the reasons of
:class:`seg_perception.codec.ImageDecodeError`, plus ``too_large`` for ``max_pixels``).
Images are small (32..96 px a side) so that a run of hundreds of messages stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

RAW, COMPRESSED = "raw", "compressed"
MIN_SIDE, MAX_SIDE = 32, 96
_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "bgra8": 4, "rgba8": 4}


@dataclass
class FuzzMessage:
    """One message to send: its kind, the transport (node) it goes to, its fields."""

    index: int
    kind: str
    transport: str  # RAW (sensor_msgs/Image) | COMPRESSED (sensor_msgs/CompressedImage)
    good: bool
    reason: str  # bad: the node's expected bad_frames.<reason>; good: ""
    fields: dict[str, Any] = field(repr=False)  # height/width/encoding/step/data | format/data
    size: tuple[int, int] | None = None  # good: (height, width) the output must have


Maker = Callable[[np.random.Generator, int], tuple[dict[str, Any], tuple[int, int] | None]]


def _side(rng: np.random.Generator) -> int:
    return int(rng.integers(MIN_SIDE, MAX_SIDE + 1))


def _pixels(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """A smooth-ish random image (gradient + noise) so JPEG/PNG payloads stay small."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 255 // max(w - 1, 1) + yy * 97 // max(h - 1, 1))[..., None] % 256
    noise = rng.integers(0, 32, (h, w, c))
    return ((base + noise) % 256).astype(np.uint8)


def _raw(rng: np.random.Generator, encoding: str, pad: int = 0, h: int = 0, w: int = 0) -> dict:
    h, w = h or _side(rng), w or _side(rng)
    c = _CHANNELS[encoding]
    step = w * c + pad
    rows = np.zeros((h, step), np.uint8)
    rows[:, : w * c] = _pixels(rng, h, w, c).reshape(h, w * c)
    if pad:
        rows[:, w * c :] = rng.integers(0, 256, (h, pad), dtype=np.uint8)
    return {"height": h, "width": w, "encoding": encoding, "step": step, "data": rows.tobytes()}


def _good_raw(encoding: str, padded: bool = False) -> Maker:
    def make(rng: np.random.Generator, _max_pixels: int) -> tuple[dict, tuple[int, int]]:
        pad = int(rng.integers(1, 17)) if padded else 0
        f = _raw(rng, encoding, pad)
        return f, (f["height"], f["width"])

    return make


def _encoded(rng: np.random.Generator, kind: str) -> tuple[bytes, tuple[int, int]]:
    h, w = _side(rng), _side(rng)
    bgr = _pixels(rng, h, w, 3)
    ext, opts = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 80]) if kind == "jpeg" else (".png", [])
    ok, buf = cv2.imencode(ext, bgr, opts)
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        raise RuntimeError(f"cv2.imencode({ext}) failed")
    return buf.tobytes(), (h, w)


def _good_compressed(kind: str) -> Maker:
    def make(rng: np.random.Generator, _max_pixels: int) -> tuple[dict, tuple[int, int]]:
        data, size = _encoded(rng, kind)
        # image_transport's compressed publisher writes "<encoding>; <kind> compressed <target>"
        return {"format": f"bgr8; {kind} compressed bgr8", "data": data}, size

    return make


# ---------------------------------------------------------------------------- malformed raw
def _zero(dim: str) -> Maker:
    def make(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
        f = _raw(rng, str(rng.choice(["rgb8", "mono8"])))
        f[dim] = 0
        f["step"] = 0 if dim == "width" else f["step"]
        f["data"] = b""
        return f, None

    return make


def _step_too_small(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    f = _raw(rng, "rgb8")
    f["step"] = int(rng.integers(1, f["width"] * 3))  # < width * 3 bytes
    f["data"] = f["data"][: f["step"] * f["height"]]
    return f, None


def _data_length(longer: bool) -> Maker:
    def make(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
        f = _raw(rng, str(rng.choice(["rgb8", "bgr8", "mono8"])))
        k = int(rng.integers(1, f["step"] * 2 + 1))
        f["data"] = f["data"] + bytes(k) if longer else f["data"][:-k]
        return f, None

    return make


def _unknown_encoding(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    f = _raw(rng, "rgb8")
    f["encoding"] = str(rng.choice(["rgb9", "RGB8", "jpeg", "", "8UC0", "bgr 8", "yuv420"]))
    return f, None


def _unsupported_encoding(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    """Encodings the codec knows but that carry no colour (depth, float) or no (H, W, C) form."""
    h, w = _side(rng), _side(rng)
    encoding, nbytes = [("32FC1", 4), ("16UC1", 2), ("64FC1", 8), ("nv12", 1)][int(rng.integers(4))]
    step = w * nbytes
    return {"height": h, "width": w, "encoding": encoding, "step": step,
            "data": rng.integers(0, 256, h * step, dtype=np.uint8).tobytes()}, None  # fmt: skip


def _odd_width(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    h, w = _side(rng), _side(rng) | 1  # 4:2:2 needs an even width
    data = rng.integers(0, 256, h * w * 2, dtype=np.uint8).tobytes()
    enc = str(rng.choice(["yuv422", "yuv422_yuy2"]))
    return {"height": h, "width": w, "encoding": enc, "step": w * 2, "data": data}, None


def _too_large(rng: np.random.Generator, max_pixels: int) -> tuple[dict, None]:
    """A valid mono8 image just over ``max_pixels`` (rejected before decoding)."""
    w = _side(rng)
    h = max_pixels // w + 1 + int(rng.integers(0, 4))
    return _raw(rng, "mono8", h=h, w=w), None


def _huge_dims(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    """Claims of billions of pixels over a few bytes: must be refused without allocating."""
    h = int(rng.integers(1 << 16, 1 << 32))
    w = int(rng.integers(1 << 16, 1 << 32))
    return {"height": h, "width": w, "encoding": "rgb8", "step": (w * 3) % (1 << 32),
            "data": bytes(int(rng.integers(1, 64)))}, None  # fmt: skip


# ---------------------------------------------------------------------------- malformed compressed
def _corrupt(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    variant = int(rng.integers(3))
    if variant == 0:  # noise (first byte 0: no image signature)
        data = b"\x00" + rng.integers(0, 256, int(rng.integers(16, 600)), np.uint8).tobytes()
        fmt = "bgr8; jpeg compressed bgr8"
    else:
        png, _ = _encoded(rng, "png")
        b = bytearray(png)
        if variant == 1:  # IHDR CRC broken
            b[29] ^= 0xFF
        else:  # scrambled image data and checksums
            for i in range(40, min(len(b), 80)):
                b[i] ^= 0x5A
        data, fmt = bytes(b), "bgr8; png compressed bgr8"
    return {"format": fmt, "data": data}, None


def _truncated(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    kind = str(rng.choice(["jpeg", "png"]))
    data, _ = _encoded(rng, kind)
    cut = int(len(data) * rng.uniform(0.2, 0.8))
    return {"format": f"bgr8; {kind} compressed bgr8", "data": data[:cut]}, None


def _empty_compressed(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    return {"format": str(rng.choice(["bgr8; jpeg compressed bgr8", "png", ""])), "data": b""}, None


def _unknown_format(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    """A format image_transport has no decoder for, with a payload that is no image."""
    fmt = str(rng.choice(["h264", "bgr8; webp2 compressed bgr8", "theora", "x-unknown"]))
    data = b"\x00\x00\x00\x01" + rng.integers(0, 256, int(rng.integers(8, 300)), np.uint8).tobytes()
    return {"format": fmt, "data": data}, None


def _compressed_depth(rng: np.random.Generator, _m: int) -> tuple[dict, None]:
    data, _ = _encoded(rng, "png")
    return {"format": "16UC1; compressedDepth png", "data": data}, None


# name -> (transport, good, expected reason, maker)
KINDS: dict[str, tuple[str, bool, str, Maker]] = {
    "rgb8": (RAW, True, "", _good_raw("rgb8")),
    "bgr8": (RAW, True, "", _good_raw("bgr8")),
    "mono8": (RAW, True, "", _good_raw("mono8")),
    "bgra8": (RAW, True, "", _good_raw("bgra8")),
    "step_padding": (RAW, True, "", _good_raw("rgb8", padded=True)),
    "jpeg": (COMPRESSED, True, "", _good_compressed("jpeg")),
    "png": (COMPRESSED, True, "", _good_compressed("png")),
    "zero_width": (RAW, False, "empty", _zero("width")),
    "zero_height": (RAW, False, "empty", _zero("height")),
    "step_too_small": (RAW, False, "step_too_small", _step_too_small),
    "data_too_short": (RAW, False, "data_too_short", _data_length(longer=False)),
    "data_too_long": (RAW, False, "data_too_long", _data_length(longer=True)),
    "unknown_encoding": (RAW, False, "unknown_encoding", _unknown_encoding),
    "unsupported_encoding": (RAW, False, "unsupported_encoding", _unsupported_encoding),
    "odd_width_yuv422": (RAW, False, "odd_width", _odd_width),
    "too_large": (RAW, False, "too_large", _too_large),
    "huge_dimensions": (RAW, False, "too_large", _huge_dims),
    "corrupt_compressed": (COMPRESSED, False, "corrupt_compressed", _corrupt),
    "truncated_compressed": (COMPRESSED, False, "corrupt_compressed", _truncated),
    "empty_compressed": (COMPRESSED, False, "empty", _empty_compressed),
    "unknown_format": (COMPRESSED, False, "corrupt_compressed", _unknown_format),
    "compressed_depth": (COMPRESSED, False, "unsupported_encoding", _compressed_depth),
}


def plan(n: int, *, seed: int, max_pixels: int, good_fraction: float = 0.4) -> list[FuzzMessage]:
    """``n`` messages of sequence ``seed``: every kind at least once when ``n`` allows (so short
    runs cover everything), the rest good with probability ``good_fraction``, then shuffled."""
    if n < 0:
        raise ValueError(f"fuzz: number of messages must be >= 0, got {n}")
    rng = np.random.default_rng([int(seed), 0xF022])
    good = [k for k, v in KINDS.items() if v[1]]
    bad = [k for k, v in KINDS.items() if not v[1]]
    names = [str(k) for k in rng.permutation(list(KINDS))[:n]]
    for _ in range(n - len(names)):
        group = good if rng.random() < good_fraction else bad
        names.append(str(group[int(rng.integers(len(group)))]))
    rng.shuffle(names)
    out = []
    for i, name in enumerate(names):
        transport, is_good, reason, make = KINDS[name]
        fields, size = make(rng, max_pixels)
        out.append(FuzzMessage(i, name, transport, is_good, reason, fields, size))
    return out


def to_ros(m: FuzzMessage, *, stamp: Any, frame_id: str) -> Any:
    """The ``sensor_msgs`` message of ``m`` with this header."""
    import array

    from sensor_msgs.msg import CompressedImage, Image

    f = m.fields
    msg = Image() if m.transport == RAW else CompressedImage()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    if m.transport == RAW:
        msg.height, msg.width, msg.step = f["height"], f["width"], f["step"]
        msg.encoding = f["encoding"]
        msg.is_bigendian = 0
    else:
        msg.format = f["format"]
    msg.data = array.array("B", f["data"])
    return msg
