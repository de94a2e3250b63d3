"""Calibration images for int8 engines: from a folder, a bag's camera topic or the synthetic
generator; resized to the network input, batched, and hashed for the engine cache key.

Pure NumPy/OpenCV (+ ``rosbags`` for bags); no TensorRT or ONNX Runtime here, so the batching and
hashing are unit-tested on any machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from seg_perception.errors import SegError

__all__ = [
    "IMAGE_SUFFIXES",
    "CalibrationError",
    "batches_sha256",
    "calibration_batches",
    "calibration_images",
    "images_from_bag",
    "images_from_folder",
    "resize_to",
    "synthetic_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
_IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class CalibrationError(SegError, ValueError):
    """Calibration data could not be read; the message names the file or topic."""


def resize_to(image: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB -> ``(H, W, 3)`` uint8 at the network size (area when shrinking,
    bilinear when growing: the node's own pre-processing, so calibration sees what it will see)."""
    h, w = input_hw
    if image.shape[:2] == (h, w):
        return np.ascontiguousarray(image)
    shrink = image.shape[0] * image.shape[1] > h * w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def images_from_folder(folder: str | Path, *, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` RGB images from ``folder`` (recursively, in sorted path order)."""
    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationError(
            f"calibration folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    # Spread the picks over the whole folder (a sequence's first frames are much alike).
    picks = paths if len(paths) <= limit else [paths[i] for i in _spread(len(paths), limit)]
    out = []
    for p in picks:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CalibrationError(f"calibration image {p} cannot be decoded")
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return out


def _spread(n: int, k: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def images_from_bag(bag: str | Path, *, topic: str | None, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` RGB frames of ``topic`` (``sensor_msgs`` Image or CompressedImage) of a
    ROS 2 bag (sqlite3 or MCAP), spread evenly over the bag. ``topic=None`` picks the only camera
    topic (an error lists them when there are several)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from seg_perception.codec import msg_to_rgb8

    path = Path(bag)
    if not path.exists():
        raise CalibrationError(f"calibration bag {path} does not exist")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for bad bags
        raise CalibrationError(f"calibration bag {path} cannot be opened: {exc}") from exc
    try:
        cams = {c.topic: c for c in reader.connections if c.msgtype in _IMAGE_TYPES}
        if topic is None:
            if len(cams) != 1:
                raise CalibrationError(
                    f"calibration bag {path}: pass a camera topic; image topics: "
                    f"{', '.join(sorted(cams)) or 'none'}"
                )
            topic = next(iter(cams))
        if topic not in cams:
            raise CalibrationError(
                f"calibration bag {path} has no image topic {topic!r}; image topics: "
                f"{', '.join(sorted(cams)) or 'none'}"
            )
        conn = cams[topic]
        total = max(int(conn.msgcount), 1)
        keep = set(_spread(total, limit)) if total > limit else set(range(total))
        out = []
        for i, (c, _, raw) in enumerate(reader.messages(connections=[conn])):
            if i in keep:
                out.append(msg_to_rgb8(reader.deserialize(raw, c.msgtype)).copy())
            if len(out) >= limit:
                break
    finally:
        reader.close()
    if not out:
        raise CalibrationError(f"calibration bag {path}: topic {topic} has no messages")
    return out


def synthetic_images(
    count: int, input_hw: tuple[int, int], *, seed: int = 1234, start: int = 0
) -> list[np.ndarray]:
    """``count`` frames of the synthetic street-scene generator at ``input_hw``."""
    from seg_perception.data.synth import generate_frame

    h, w = input_hw
    return [
        generate_frame(seed=seed, index=start + i, height=h, width=w).image for i in range(count)
    ]


def calibration_images(
    source: str | Path | None,
    *,
    input_hw: tuple[int, int],
    count: int = 16,
    topic: str | None = None,
    seed: int = 1234,
) -> list[np.ndarray]:
    """Calibration images at the network size from ``source``: ``None`` or ``"synthetic"`` (the
    synthetic generator), a folder of images, or a bag (``.mcap``/``.db3`` file or a bag folder
    with ``metadata.yaml``)."""
    if count < 1:
        raise CalibrationError(f"calibration image count must be >= 1, got {count}")
    if source is None or str(source) == "synthetic":
        images = synthetic_images(count, input_hw, seed=seed)
    else:
        p = Path(source)
        if not p.exists():
            raise CalibrationError(f"calibration source {p} does not exist")
        is_bag = p.suffix in (".mcap", ".db3") or (p / "metadata.yaml").is_file()
        if is_bag:
            images = images_from_bag(p, topic=topic, limit=count)
        elif p.is_dir():
            images = images_from_folder(p, limit=count)
        else:
            raise CalibrationError(
                f"calibration source {p} is neither a folder of images nor a bag "
                f"(.mcap, .db3, or a folder with metadata.yaml)"
            )
    return [resize_to(_as_rgb(img, source), input_hw) for img in images]


def _as_rgb(img: np.ndarray, source: object) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise CalibrationError(
            f"calibration source {source}: expected (H, W, 3) uint8 images, got {img.dtype} "
            f"{img.shape}"
        )
    return img


def calibration_batches(
    images: Sequence[np.ndarray], *, batch_size: int, input_hw: tuple[int, int]
) -> list[np.ndarray]:
    """Stack images into ``ceil(len / batch_size)`` batches ``(B, H, W, 3)`` uint8.

    TensorRT's calibrator needs full batches of its fixed size, so the last batch is filled up
    with images from the start of the list, in order (each image is used at least once and at
    most ``batch_size - 1`` images twice). Images not at ``input_hw`` are resized.
    """
    if batch_size < 1:
        raise CalibrationError(f"calibration batch size must be >= 1, got {batch_size}")
    if not images:
        raise CalibrationError("no calibration images")
    n = len(images)
    n_batches = -(-n // batch_size)
    order = [i % n for i in range(n_batches * batch_size)]
    sized = [resize_to(_as_rgb(img, "images"), input_hw) for img in images]
    return [
        np.stack([sized[i] for i in order[b * batch_size : (b + 1) * batch_size]])
        for b in range(n_batches)
    ]


def batches_sha256(batches: Sequence[np.ndarray] | Iterator[np.ndarray]) -> str:
    """Hash of the calibration batches: shapes, dtypes and bytes, in order."""
    h = hashlib.sha256()
    for b in batches:
        arr = np.ascontiguousarray(b)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()
