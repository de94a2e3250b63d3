"""The Engine protocol: what the pipeline calls, whatever the backend.

Also the small pieces every backend shares: :class:`TensorSpec` (an engine's input/output
description), :class:`OutputBuffers` (host arrays reused across calls) and
:func:`check_images` (one input check, one error text, for every backend).
"""

from __future__ import annotations

import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from seg_perception.errors import SegError

__all__ = [
    "SEMANTIC_OUTPUTS",
    "Engine",
    "EngineError",
    "OutputBuffers",
    "TensorSpec",
    "WarmupMixin",
    "byte_array_backed",
    "check_images",
]

#: outputs of every semantic export form (``networks/export.py``), in graph order.
SEMANTIC_OUTPUTS = ("class_ids", "confidence")


class EngineError(SegError, RuntimeError):
    """An engine could not be created or failed on a batch; the message names file and cause."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an engine: name, shape and NumPy dtype name.

    A dimension that is not fixed by the artefact is a string: its symbolic name (``"batch"``,
    ``"K"``) or ``"?"``.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def __str__(self) -> str:
        dims = "x".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@runtime_checkable
class Engine(Protocol):
    """A loaded network in its export form.

    ``infer`` takes ``images`` uint8 ``(N, H, W, 3)`` RGB at the engine's ``input_hw``, with
    ``1 <= N <= max_batch`` (N cameras in one call), and returns named arrays; for semantic
    networks ``class_ids`` uint8 ``(N, H, W)`` and ``confidence`` float32 ``(N, H, W)``; for the
    panoptic ASP model ``boxes``, ``labels``, ``scores``, ``masks``, ``semantic_ids``.
    Returned arrays are reused by the next call: copy what you keep.
    """

    name: str
    input_hw: tuple[int, int]
    num_classes: int
    max_batch: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]: ...

    def warmup(self, runs: int = 1) -> None: ...

    def close(self) -> None: ...


class WarmupMixin:
    """``warmup`` shared by every backend: ``runs`` calls on a black frame at ``input_hw``."""

    input_hw: tuple[int, int]

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def warmup(self, runs: int = 1) -> None:
        dummy = np.zeros((1, *self.input_hw, 3), dtype=np.uint8)
        for _ in range(runs):
            self.infer(dummy)


def byte_array_backed(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose memory is an ``array.array('B')`` (its ``.base``): what
    rclpy stores in a message's ``uint8[]`` field, so an image can be published from it
    without another copy (see ``codec.image.array_to_imgmsg``)."""
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    store = array.array("B", bytes(n))
    return np.frombuffer(store, dtype=dtype).reshape(shape)


class OutputBuffers:
    """Host arrays keyed by name, reallocated only when the shape or dtype changes.

    ``allocate(shape, dtype)`` makes a new buffer (default ``np.empty``; the pipeline uses
    :func:`byte_array_backed` for the images the node publishes)."""

    def __init__(
        self, allocate: Callable[[tuple[int, ...], np.dtype], np.ndarray] | None = None
    ) -> None:
        self._bufs: dict[str, np.ndarray] = {}
        self._allocate = allocate or (lambda shape, dtype: np.empty(shape, dtype=dtype))

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        dt = np.dtype(dtype)
        buf = self._bufs.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dt:
            buf = self._bufs[name] = self._allocate(tuple(shape), dt)
        return buf

    def store(self, name: str, value: np.ndarray) -> np.ndarray:
        """Copy ``value`` into the buffer ``name`` (same shape and dtype) and return the buffer."""
        buf = self.get(name, value.shape, value.dtype)
        np.copyto(buf, value)
        return buf

    def clear(self) -> None:
        self._bufs.clear()


def check_images(
    images: np.ndarray, *, input_hw: tuple[int, int], max_batch: int, engine: str
) -> np.ndarray:
    """Validate an engine batch; return it C-contiguous.

    Raises :class:`EngineError` naming the engine (its artefact file) and expected vs got.
    """
    h, w = input_hw
    if not isinstance(images, np.ndarray):
        raise EngineError(f"engine {engine}: expected a numpy array, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1:] != (h, w, 3) or images.dtype != np.uint8:
        raise EngineError(
            f"engine {engine}: expected uint8 images of shape (N, {h}, {w}, 3), got "
            f"{images.dtype} {images.shape}"
        )
    n = images.shape[0]
    if not 1 <= n <= max_batch:
        raise EngineError(
            f"engine {engine}: batch of {n} images, but the engine takes 1..{max_batch} (max_batch)"
        )
    return np.ascontiguousarray(images)
