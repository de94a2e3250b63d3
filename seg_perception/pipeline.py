"""One camera frame in -> semantic, instance and panoptic outputs. No ROS: the node and the
offline evaluation run exactly this code.

Semantic path (every frame): resize the RGB frame to the real-time engine's input size, run it
(class ids come out of the engine, computed in-graph at network resolution), bring the ids back to
the input resolution with nearest-neighbour sampling, render colour and overlay images.

Panoptic path (:meth:`Pipeline.run_panoptic`, when a panoptic engine is configured): run the ASP
model's export form, keep detections above the score threshold, paste their 28x28 masks at the
input resolution, and fuse them with the semantic map (``fusion.method``,
``fusion.semantic_source``) into instance and panoptic maps.

Buffers are reused from frame to frame; returned arrays are valid until the next call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from seg_perception.config import SegConfig, load_config
from seg_perception.engines.base import Engine, OutputBuffers, byte_array_backed
from seg_perception.fusion import fusion_method
from seg_perception.labels import LabelTable
from seg_perception.panoptic import (
    Instances,
    PanopticResult,
    colorize_panoptic,
    mask_bounds,
    paste_masks,
)

SEMANTIC = "semantic"
SEMANTIC_COLOR = "semantic_color"
OVERLAY = "overlay"
ALL_OUTPUTS = frozenset({SEMANTIC, SEMANTIC_COLOR, OVERLAY})
INSTANCE = "instance"
PANOPTIC = "panoptic"
PANOPTIC_COLOR = "panoptic_color"
PANOPTIC_OUTPUTS = frozenset({INSTANCE, PANOPTIC, PANOPTIC_COLOR})
STAGES = ("preprocess", "engine", "postprocess", "colorize")


@dataclass(frozen=True)
class PanopticSettings:
    """How the panoptic path turns detections into outputs (``panoptic.*`` / ``fusion.*``).

    No defaults of its own: :meth:`from_config` reads them from a :class:`SegConfig`, by default
    the shipped ``config/seg.yaml`` (the one source of default values)."""

    score_threshold: float  # panoptic.score_threshold
    method: str  # fusion.method
    semantic_source: str  # fusion.semantic_source: realtime | asp
    min_new_instance_area: int  # fusion.min_new_instance_area

    @classmethod
    def from_config(cls, cfg: SegConfig | None = None, **changes: Any) -> PanopticSettings:
        """The settings ``cfg`` names (default: the shipped ``config/seg.yaml``), with
        ``changes`` (field name -> value) applied on top."""
        cfg = cfg if cfg is not None else load_config()
        settings = cls(
            score_threshold=cfg.panoptic.score_threshold,
            method=cfg.fusion.method,
            semantic_source=cfg.fusion.semantic_source,
            min_new_instance_area=cfg.fusion.min_new_instance_area,
        )
        return replace(settings, **changes)

    def fusion(self, labels: LabelTable) -> Callable[..., PanopticResult]:
        """The fusion these settings name, options bound and checked once: call it per frame as
        ``f(semantic, instances)`` (the node, ``eval`` and the trainer's validation share it)."""
        options: dict[str, object] = {"score_threshold": self.score_threshold}
        if self.method == "heuristic":
            options["min_new_instance_area"] = self.min_new_instance_area
        return fusion_method(self.method, labels=labels, **options)


@dataclass
class PanopticOutputs:
    """Panoptic outputs of one frame at the input resolution."""

    result: PanopticResult  # refined semantic, instance, panoptic maps and segments info
    panoptic_color: np.ndarray | None = None  # (H, W, 3) uint8
    timings_ms: dict[str, float] = field(default_factory=dict)
    # the ASP model's own semantic head, (h, w) uint8 trainIds at its network resolution (a view
    # of the engine output: scored by the evaluation against the fused map)
    asp_semantic: np.ndarray | None = None


def resize_into(image: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Resize ``(H, W, C)`` into ``batch[0]`` (area filter down, linear up); returns ``batch``."""
    h, w = batch.shape[1:3]
    if image.shape[:2] == (h, w):
        np.copyto(batch[0], image)
    else:
        shrink = image.shape[0] * image.shape[1] > h * w
        cv2.resize(
            image,
            (w, h),
            dst=batch[0],
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
    return batch


@dataclass
class FrameOutputs:
    """Outputs of one frame at the input resolution (``None`` where not requested)."""

    semantic: np.ndarray | None = None  # (H, W) uint8 trainIds
    semantic_color: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    overlay: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    confidence: np.ndarray | None = None  # (h, w) float32 at network resolution
    timings_ms: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Semantic (every frame) and panoptic (on request) segmentation of single frames.

    Args:
        engine: a semantic engine (``class_ids`` out).
        labels: the label table (colours, categories).
        overlay_alpha: weight of the label colours in the overlay image.
        panoptic_engine: the ASP model's engine (``boxes``, ``labels``, ``scores``, ``masks``,
            ``semantic_ids`` out), or None for semantic output only.
        panoptic: score threshold and fusion settings of the panoptic path.
        clock: time source for stage timings (seconds).
        tta: the test-time procedure the semantic engine runs (:data:`~seg_perception.choices.
            TTA_MODES`; set by :func:`build_pipeline` for offline evaluation, ``none`` in the node).
    """

    def __init__(
        self,
        engine: Engine,
        labels: LabelTable,
        *,
        overlay_alpha: float = 0.5,
        panoptic_engine: Engine | None = None,
        panoptic: PanopticSettings | None = None,
        clock: Callable[[], float] = time.perf_counter,
        tta: str = "none",
    ) -> None:
        self.engine = engine
        self.tta = tta
        self.labels = labels
        self.overlay_alpha = float(overlay_alpha)
        self.panoptic_engine = panoptic_engine
        self.panoptic = panoptic or PanopticSettings.from_config()
        self._fuse = self.panoptic.fusion(labels)  # resolved and checked once, not per frame
        self._clock = clock
        # the images the node publishes live in array.array memory: no copy into the message
        self._buf = OutputBuffers(byte_array_backed)
        self._pan_buf = OutputBuffers()  # separate: the panoptic path may run in its own thread
        self.engine_calls = 0  # calls of the real-time engine (one per batch of frames)

    def preprocess(self, rgbs: list[np.ndarray]) -> np.ndarray:
        """N frames ``(H_i, W_i, 3)`` uint8 -> engine batch ``(N, h, w, 3)`` uint8."""
        batch = self._buf.get("batch", (len(rgbs), *self.engine.input_hw, 3), np.uint8)
        for i, rgb in enumerate(rgbs):
            resize_into(rgb, batch[i : i + 1])
        return batch

    def with_engine(self, engine: Engine) -> Pipeline:
        """A pipeline like this one with another real-time engine (a run-time reload): the
        panoptic engine and every setting are shared."""
        return Pipeline(
            engine,
            self.labels,
            overlay_alpha=self.overlay_alpha,
            panoptic_engine=self.panoptic_engine,
            panoptic=self.panoptic,
            clock=self._clock,
            tta=self.tta,
        )

    def run(self, rgb: np.ndarray, want: Iterable[str] = ALL_OUTPUTS) -> FrameOutputs:
        """Segment one RGB frame ``(H, W, 3)`` uint8; compute only the outputs in ``want``."""
        return self.run_batch([rgb], [want])[0]

    def run_batch(
        self, rgbs: list[np.ndarray], wants: list[Iterable[str]] | None = None
    ) -> list[FrameOutputs]:
        """Segment N frames (N cameras, any sizes) with one engine call per ``max_batch`` frames.

        ``wants[i]``: the outputs to compute for frame i (default: all). Frame i's arrays live in
        buffers of slot i: valid until the next call with a frame in that slot.
        """
        if not rgbs:
            return []
        wants = [ALL_OUTPUTS] * len(rgbs) if wants is None else wants
        if len(wants) != len(rgbs):
            raise ValueError(f"run_batch: {len(rgbs)} frames but {len(wants)} output sets")
        for i, rgb in enumerate(rgbs):
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise ValueError(
                    f"pipeline input {i} must be (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}"
                )
        step = max(1, int(getattr(self.engine, "max_batch", 1)))
        outs: list[FrameOutputs] = []
        for first in range(0, len(rgbs), step):
            chunk = rgbs[first : first + step]
            t = self._clock
            t0 = t()
            batch = self.preprocess(chunk)
            t1 = t()
            result = self.engine.infer(batch)
            t2 = t()
            self.engine_calls += 1
            for j, rgb in enumerate(chunk):
                out = self._postprocess(first + j, rgb, result, j, frozenset(wants[first + j]))
                out.timings_ms = {
                    "preprocess": (t1 - t0) * 1e3,
                    "engine": (t2 - t1) * 1e3,
                    **out.timings_ms,
                }
                outs.append(out)
        return outs

    def _postprocess(
        self, slot: int, rgb: np.ndarray, result: dict[str, np.ndarray], j: int, want: frozenset
    ) -> FrameOutputs:
        """Frame ``j`` of an engine result -> outputs at the frame's resolution (buffers of
        ``slot``)."""
        out = FrameOutputs()
        t = self._clock
        t2 = t()
        height, width = rgb.shape[:2]
        ids_lowres = result["class_ids"][j]
        confidence = result.get("confidence")
        out.confidence = None if confidence is None else confidence[j]
        semantic = self._buf.get(f"semantic{slot}", (height, width), np.uint8)
        if ids_lowres.shape == (height, width):
            np.copyto(semantic, ids_lowres)
        else:
            cv2.resize(ids_lowres, (width, height), dst=semantic, interpolation=cv2.INTER_NEAREST)
        out.semantic = semantic
        t3 = t()
        if want & {SEMANTIC_COLOR, OVERLAY}:
            color = self._buf.get(f"color{slot}", (height, width, 3), np.uint8)
            if ids_lowres.shape == (height, width):
                self.labels.colorize(semantic, out=color)
            else:  # colour at network resolution, then the same nearest sampling as the ids:
                # identical pixels, a quarter of the look-ups
                small = self._buf.get(f"color_lowres{slot}", (*ids_lowres.shape, 3), np.uint8)
                self.labels.colorize(ids_lowres, out=small)
                cv2.resize(small, (width, height), dst=color, interpolation=cv2.INTER_NEAREST)
            out.semantic_color = color
            if OVERLAY in want:
                overlay = self._buf.get(f"overlay{slot}", (height, width, 3), np.uint8)
                cv2.addWeighted(
                    rgb, 1.0 - self.overlay_alpha, color, self.overlay_alpha, 0.0, dst=overlay
                )
                out.overlay = overlay
        t4 = t()
        out.timings_ms = {"postprocess": (t3 - t2) * 1e3, "colorize": (t4 - t3) * 1e3}
        return out

    def run_panoptic(
        self, rgb: np.ndarray, semantic: np.ndarray | None, want: Iterable[str] = PANOPTIC_OUTPUTS
    ) -> PanopticOutputs:
        """Instances of the ASP model fused with a semantic map, at the input resolution.

        ``semantic`` is the real-time net's map of the same frame (``(H, W)`` uint8), used when
        ``semantic_source`` is ``"realtime"``; with ``"asp"`` the ASP model's own semantic head
        is used and ``semantic`` may be None.
        """
        if self.panoptic_engine is None:
            raise RuntimeError("run_panoptic: the pipeline has no panoptic engine")
        settings, t = self.panoptic, self._clock
        height, width = rgb.shape[:2]
        t0 = t()
        batch = resize_into(
            rgb, self._pan_buf.get("batch", (1, *self.panoptic_engine.input_hw, 3), np.uint8)
        )
        t1 = t()
        out = self.panoptic_engine.infer(batch)
        t2 = t()
        keep = out["scores"] >= settings.score_threshold
        nh, nw = self.panoptic_engine.input_hw
        boxes = out["boxes"][keep] * np.array([width / nw, height / nh] * 2, dtype=np.float32)
        masks = paste_masks(out["masks"][keep], boxes, height, width)
        instances = Instances(
            masks,
            out["labels"][keep].astype(np.int64),
            out["scores"][keep].astype(np.float32),
            boxes=mask_bounds(boxes, height, width),
        )
        asp_semantic = out["semantic_ids"].reshape(nh, nw)
        if settings.semantic_source == "asp" or semantic is None:
            semantic = cv2.resize(
                asp_semantic,
                (width, height),
                interpolation=cv2.INTER_NEAREST,
            )
        t3 = t()
        result = self._fuse(semantic, instances)
        t4 = t()
        colour = (
            colorize_panoptic(result.panoptic, self.labels) if PANOPTIC_COLOR in set(want) else None
        )
        t5 = t()
        return PanopticOutputs(
            result,
            colour,
            {
                "panoptic_preprocess": (t1 - t0) * 1e3,
                "panoptic_engine": (t2 - t1) * 1e3,
                "paste": (t3 - t2) * 1e3,
                "fusion": (t4 - t3) * 1e3,
                "panoptic_colorize": (t5 - t4) * 1e3,
            },
            asp_semantic,
        )


def build_pipeline(
    cfg: SegConfig,
    labels: LabelTable,
    *,
    on_note: Callable[[str, str], None] = lambda _model, _note: None,
    tta: str = "none",
) -> Pipeline:
    """The pipeline of a configuration: the real-time engine, the ASP engine when
    ``panoptic.enabled``, and the fusion settings. The node and both evaluations build it here,
    so that they run the same computation. ``on_note(model, note)`` hears where each engine's
    weights came from. ``tta``: a test-time procedure of the papers for the real-time net
    (``seg-perception eval --tta``; the node never sets it: real time)."""
    from seg_perception.engines import panoptic_spec, semantic_spec
    from seg_perception.engines.factory import build

    spec, note = semantic_spec(cfg, labels, max_batch=len(cfg.camera_names()), tta=tta)
    on_note(cfg.model, note)
    engine = build(spec)
    engine.warmup(cfg.warmup_frames)
    panoptic_engine = None
    if cfg.panoptic.enabled:
        spec, note = panoptic_spec(cfg, labels)
        on_note("panoptic_asp", note)
        panoptic_engine = build(spec)
        panoptic_engine.warmup(min(cfg.warmup_frames, 1))
    settings = PanopticSettings.from_config(cfg)
    return Pipeline(
        engine,
        labels,
        overlay_alpha=cfg.overlay_alpha,
        panoptic_engine=panoptic_engine,
        panoptic=settings,
        tta=tta,
    )
