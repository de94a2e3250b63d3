"""Rosbag2 input/output (sqlite3 and MCAP) with ``rosbags``: no ROS installation needed.

Messages are CDR-serialized with the rosbags typestore of ROS 2 Kilted, so the raw bytes a bag
holds are exactly what ``rclpy.serialization.deserialize_message`` expects.

* :func:`write_synth_bag` records synthetic frames as a camera stream plus ground truth:
  ``{ns}/image`` (``sensor_msgs/msg/Image``, ``rgb8``), ``{ns}/image/compressed``
  (``sensor_msgs/msg/CompressedImage``, ``"rgb8; jpeg compressed bgr8"`` as image_transport
  writes it), ``{ns}/gt/semantic`` (``mono8`` trainIds) and ``{ns}/gt/instance`` (``32SC1``
  Cityscapes instanceIds). The messages of one frame share one header and the bag timestamp
  equals the header stamp.
* :class:`OutputBag` records arbitrary serialized messages (node outputs).
* :func:`read_bag_messages`, :func:`bag_topics`, :func:`deserialize` read bags back; the
  messages they give are decoded by :mod:`seg_perception.codec` (``image_from_ros`` for ground
  truth, ``msg_to_rgb8`` for camera frames), like rclpy messages.

Writing is atomic: a bag is written into a hidden temporary directory next to the target and
renamed into place only when complete; on any error the partial bag is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore
from tqdm import tqdm

from seg_perception.errors import SegError

if TYPE_CHECKING:
    from .synth import SynthFrame

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
COMPRESSED_FORMAT = "rgb8; jpeg compressed bgr8"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
DEFAULT_START_NS = 1_700_000_000_000_000_000


class BagError(SegError, ValueError):
    """A bag cannot be read or written; the message names the file."""


@cache
def typestore() -> Typestore:
    """The ROS 2 Kilted message typestore (shared, built once)."""
    return get_typestore(Stores.ROS2_KILTED)


# -- messages -----------------------------------------------------------------------------------
def _header(stamp_ns: int, frame_id: str) -> Any:
    ts = typestore()
    Time, Header = ts.types["builtin_interfaces/msg/Time"], ts.types["std_msgs/msg/Header"]
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def image_msg(array: np.ndarray, *, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """A rosbags ``sensor_msgs/msg/Image`` holding ``array`` (``(H, W)`` or ``(H, W, C)``)."""
    a = np.ascontiguousarray(array)
    if a.ndim not in (2, 3):
        raise ValueError(f"image array must be (H, W) or (H, W, C), got shape {a.shape}")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # is_bigendian = 0
    h, w = a.shape[:2]
    return typestore().types[IMAGE](
        header=_header(stamp_ns, frame_id),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=a.nbytes // h if h else 0,
        data=a.reshape(-1).view(np.uint8),
    )


def serialize_image(array: np.ndarray, *, encoding: str, stamp_ns: int, frame_id: str) -> bytes:
    """CDR bytes of a ``sensor_msgs/msg/Image`` (what rclpy's ``deserialize_message`` reads)."""
    msg = image_msg(array, encoding=encoding, stamp_ns=stamp_ns, frame_id=frame_id)
    return bytes(typestore().serialize_cdr(msg, IMAGE))


def serialize_compressed(
    rgb: np.ndarray, *, stamp_ns: int, frame_id: str, quality: int = 90
) -> bytes:
    """CDR bytes of a JPEG ``sensor_msgs/msg/CompressedImage`` of an RGB ``(H, W, 3)`` image."""
    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg quality must be in 1..100, got {quality}")
    ok, jpg = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {rgb.shape}")
    msg = typestore().types[COMPRESSED](
        header=_header(stamp_ns, frame_id), format=COMPRESSED_FORMAT, data=jpg.reshape(-1)
    )
    return bytes(typestore().serialize_cdr(msg, COMPRESSED))


def deserialize(rawdata: bytes | memoryview, msgtype: str) -> Any:
    """Deserialize CDR bytes into a rosbags message object of ``msgtype``."""
    ts = typestore()
    if msgtype not in ts.types:
        raise BagError(f"unknown message type {msgtype!r} (not in the ROS 2 Kilted typestore)")
    return ts.deserialize_cdr(rawdata, msgtype)


# -- reading ------------------------------------------------------------------------------------
def _open_reader(path: str | Path) -> Reader:
    p = Path(path)
    if not p.exists():
        raise BagError(f"bag not found: {p}")
    try:
        reader = Reader(p)
        reader.open()
    except Exception as exc:  # rosbags raises several types for damaged bags
        raise BagError(f"{p}: not a readable rosbag2 bag ({type(exc).__name__}: {exc})") from exc
    return reader


def bag_topics(path: str | Path) -> dict[str, str]:
    """``{topic: msgtype}`` of a bag (directory, ``.mcap`` or ``.db3`` file)."""
    reader = _open_reader(path)
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def read_bag_messages(
    path: str | Path, topics: Iterable[str] | None = None
) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield ``(topic, msgtype, timestamp_ns, rawdata)`` in bag order, optionally for ``topics``.

    The bag is opened (and a missing or damaged bag reported) at the call, not at the first
    ``next()``.
    """
    reader = _open_reader(path)
    conns = reader.connections
    if topics is not None:
        wanted = set(topics)
        conns = [c for c in conns if c.topic in wanted]
    return _messages(reader, conns, Path(path))


def _messages(reader: Reader, conns: list, path: Path) -> Iterator[tuple[str, str, int, bytes]]:
    try:
        if not conns:
            return
        try:
            for conn, stamp, raw in reader.messages(connections=conns):
                yield conn.topic, conn.msgtype, int(stamp), bytes(raw)
        except Exception as exc:
            raise BagError(f"{path}: damaged bag ({type(exc).__name__}: {exc})") from exc
    finally:
        with contextlib.suppress(Exception):
            reader.close()


# -- writing ------------------------------------------------------------------------------------
class OutputBag:
    """Atomic rosbag2 writer for already-serialized messages.

    Use as a context manager (or call :meth:`close` / :meth:`abort`). The bag appears at ``path``
    only when closed successfully; an exception inside the ``with`` block removes the partial bag.

    Args:
        path: the bag directory to create.
        storage: ``"mcap"`` or ``"sqlite3"``.
        overwrite: replace an existing bag at ``path`` (on success only).
    """

    def __init__(self, path: str | Path, storage: str = "mcap", *, overwrite: bool = False) -> None:
        if storage not in STORAGES:
            raise ValueError(f"unknown bag storage {storage!r}; valid: {sorted(STORAGES)}")
        self.path = Path(path)
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise BagError(f"{self.path}: already exists (pass overwrite=True to replace it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        )
        self._writer: Writer | None = Writer(
            self._tmp / self.path.name,
            version=Writer.VERSION_LATEST,
            storage_plugin=STORAGES[storage],
        )
        self._conns: dict[str, Any] = {}
        try:
            self._writer.open()
        except Exception:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def add_connection(self, topic: str, msgtype: str) -> None:
        """Declare ``topic`` with ``msgtype`` (a ROS 2 Kilted type name); idempotent."""
        if self._writer is None:
            raise BagError(f"{self.path}: bag is closed")
        if topic in self._conns:
            if self._conns[topic].msgtype != msgtype:
                raise BagError(
                    f"{self.path}: topic {topic} already has type {self._conns[topic].msgtype}"
                )
            return
        if msgtype not in typestore().types:
            raise BagError(f"{self.path}: unknown message type {msgtype!r} for topic {topic}")
        self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=typestore())

    def write(self, topic: str, timestamp: int, rawdata: bytes | memoryview) -> None:
        """Append one serialized message (timestamp in ns)."""
        if self._writer is None:
            raise BagError(f"{self.path}: bag is closed")
        if topic not in self._conns:
            raise BagError(f"{self.path}: topic {topic} was not added (call add_connection first)")
        self._writer.write(self._conns[topic], int(timestamp), rawdata)

    def close(self) -> Path:
        """Finish the bag and move it into place; returns its path."""
        if self._writer is None:
            raise BagError(f"{self.path}: bag is closed")
        writer, self._writer = self._writer, None
        try:
            writer.close()
            if self.path.exists():
                if not self.overwrite:
                    raise BagError(f"{self.path}: appeared while writing; not replacing it")
                old = self._tmp / ".replaced"
                os.replace(self.path, old)
            os.replace(self._tmp / self.path.name, self.path)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        shutil.rmtree(self._tmp, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Drop the partial bag (nothing appears at ``path``)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.abort()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> OutputBag:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _namespace(ns: str) -> str:
    ns = "/" + ns.strip("/")
    return "" if ns == "/" else ns


def write_synth_bag(
    path: str | Path,
    frames: Iterable[SynthFrame],
    *,
    storage: str = "mcap",
    fps: float = 10.0,
    namespace: str = "/camera",
    frame_id: str = "camera",
    start_stamp_ns: int = DEFAULT_START_NS,
    compressed: bool = True,
    raw: bool = True,
    jpeg_quality: int = 90,
    progress: bool = False,
    overwrite: bool = False,
    total: int | None = None,
) -> Path:
    """Record frames as camera + ground-truth topics (see the module docstring); returns the path.

    Frame ``i`` of the iterable gets the stamp ``start_stamp_ns + round(i * 1e9 / fps)``.
    ``total`` (the number of frames, if known) only sizes the progress bar.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not (raw or compressed):
        raise ValueError("write_synth_bag: raw and compressed are both False; no camera topic")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    ns = _namespace(namespace)
    t_img, t_jpg = f"{ns}/image", f"{ns}/image/compressed"
    t_sem, t_inst = f"{ns}/gt/semantic", f"{ns}/gt/instance"
    with OutputBag(path, storage, overwrite=overwrite) as bag:
        if raw:
            bag.add_connection(t_img, IMAGE)
        if compressed:
            bag.add_connection(t_jpg, COMPRESSED)
        bag.add_connection(t_sem, IMAGE)
        bag.add_connection(t_inst, IMAGE)
        for i, f in enumerate(
            tqdm(frames, desc="bag", unit="frame", total=total, disable=not progress)
        ):
            stamp = int(start_stamp_ns) + round(i * 1e9 / fps)

            def img(a: np.ndarray, enc: str, stamp: int = stamp) -> bytes:
                return serialize_image(a, encoding=enc, stamp_ns=stamp, frame_id=frame_id)

            if raw:
                bag.write(t_img, stamp, img(f.image, "rgb8"))
            if compressed:
                jpg = serialize_compressed(
                    f.image, stamp_ns=stamp, frame_id=frame_id, quality=jpeg_quality
                )
                bag.write(t_jpg, stamp, jpg)
            bag.write(t_sem, stamp, img(f.semantic, "mono8"))
            bag.write(t_inst, stamp, img(f.instance.astype(np.int32), "32SC1"))
    return Path(path)
