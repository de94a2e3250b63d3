"""One camera frame in -> semantic outputs out. No ROS: used by the node and by offline tools.

The pipeline resizes the RGB frame to the engine's input size, runs the engine (class ids come
out of the engine, computed in-graph at network resolution), brings the ids back to the input
resolution with nearest-neighbour sampling and renders the colour and overlay images. Buffers
are reused from frame to frame; returned arrays are valid until the next call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from seg_perception.engines.base import Engine
from seg_perception.labels import LabelTable

SEMANTIC = "semantic"
SEMANTIC_COLOR = "semantic_color"
OVERLAY = "overlay"
ALL_OUTPUTS = frozenset({SEMANTIC, SEMANTIC_COLOR, OVERLAY})
STAGES = ("preprocess", "engine", "postprocess", "colorize")


@dataclass
class FrameOutputs:
    """Outputs of one frame at the input resolution (``None`` where not requested)."""

    semantic: np.ndarray | None = None  # (H, W) uint8 trainIds
    semantic_color: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    overlay: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    confidence: np.ndarray | None = None  # (h, w) float32 at network resolution
    timings_ms: dict[str, float] = field(default_factory=dict)


class _Buffers:
    """Arrays reused across frames, reallocated only when a shape changes."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
        buf = self._bufs.get(key)
        if buf is None or buf.shape != shape:
            buf = self._bufs[key] = np.empty(shape, dtype=dtype)
        return buf


class Pipeline:
    """Real-time semantic segmentation of single frames.

    Args:
        engine: a semantic engine (``class_ids`` out).
        labels: the label table (colours).
        overlay_alpha: weight of the label colours in the overlay image.
        clock: time source for stage timings (seconds).
    """

    def __init__(
        self,
        engine: Engine,
        labels: LabelTable,
        *,
        overlay_alpha: float = 0.5,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.engine = engine
        self.labels = labels
        self.overlay_alpha = float(overlay_alpha)
        self._clock = clock
        self._buf = _Buffers()

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> engine batch ``(1, h, w, 3)`` uint8."""
        h, w = self.engine.input_hw
        batch = self._buf.get("batch", (1, h, w, 3))
        if rgb.shape[:2] == (h, w):
            np.copyto(batch[0], rgb)
        else:
            shrink = rgb.shape[0] * rgb.shape[1] > h * w
            cv2.resize(
                rgb,
                (w, h),
                dst=batch[0],
                interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
            )
        return batch

    def run(self, rgb: np.ndarray, want: Iterable[str] = ALL_OUTPUTS) -> FrameOutputs:
        """Segment one RGB frame ``(H, W, 3)`` uint8; compute only the outputs in ``want``."""
        want = frozenset(want)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(
                f"pipeline input must be (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}"
            )
        out = FrameOutputs()
        t = self._clock
        t0 = t()
        batch = self.preprocess(rgb)
        t1 = t()
        result = self.engine.infer(batch)
        t2 = t()
        height, width = rgb.shape[:2]
        ids_lowres = result["class_ids"][0]
        confidence = result.get("confidence")
        out.confidence = None if confidence is None else confidence[0]
        semantic = self._buf.get("semantic", (height, width))
        if ids_lowres.shape == (height, width):
            np.copyto(semantic, ids_lowres)
        else:
            cv2.resize(ids_lowres, (width, height), dst=semantic, interpolation=cv2.INTER_NEAREST)
        out.semantic = semantic
        t3 = t()
        if want & {SEMANTIC_COLOR, OVERLAY}:
            color = self._buf.get("color", (height, width, 3))
            self.labels.colorize(semantic, out=color)
            out.semantic_color = color
            if OVERLAY in want:
                overlay = self._buf.get("overlay", (height, width, 3))
                cv2.addWeighted(
                    rgb, 1.0 - self.overlay_alpha, color, self.overlay_alpha, 0.0, dst=overlay
                )
                out.overlay = overlay
        t4 = t()
        out.timings_ms = {
            "preprocess": (t1 - t0) * 1e3,
            "engine": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
            "colorize": (t4 - t3) * 1e3,
        }
        return out
