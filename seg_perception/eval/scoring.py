"""Scoring shared by the offline (:mod:`.evaluate`) and the live (:mod:`.live`) evaluation:
the accumulators every metric and the report are computed from, latency percentiles, and the
strict-JSON form of a metrics tree."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seg_perception.labels import LabelTable
from seg_perception.metrics import PanopticQuality, SemanticMetrics, TrimapIoU
from seg_perception.metrics_instance import InstanceIoU, MaskAP, panoptic_instances
from seg_perception.panoptic import gt_panoptic
from seg_perception.stats import percentiles

__all__ = ["NUM_SAMPLES", "Accumulators", "json_safe"]

NUM_SAMPLES = 3  # frames kept for the report's pictures


@dataclass
class Accumulators:
    """Everything the metrics and the report are computed from."""

    labels: LabelTable
    panoptic: bool
    semantic: SemanticMetrics = field(init=False)
    fused: SemanticMetrics = field(init=False)
    trimap: TrimapIoU = field(init=False)
    pq: PanopticQuality = field(init=False)
    iiou: InstanceIoU = field(init=False)
    mask_ap: MaskAP = field(init=False)
    timings: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    frames: int = 0
    scored: int = 0
    with_instances: int = 0  # scored frames with instanceIds ground truth (iIoU)
    samples: list[dict[str, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.semantic = SemanticMetrics(labels=self.labels)
        self.fused = SemanticMetrics(labels=self.labels)
        self.asp = SemanticMetrics(labels=self.labels)
        self.trimap = TrimapIoU(labels=self.labels)
        self.pq = PanopticQuality(self.labels)
        self.iiou = InstanceIoU(self.labels)
        self.mask_ap = MaskAP(self.labels)

    def update(
        self,
        semantic: np.ndarray,
        gt_sem: np.ndarray,
        fused: np.ndarray | None = None,
        panoptic: np.ndarray | None = None,
        gt_inst: np.ndarray | None = None,
        asp_semantic: np.ndarray | None = None,
        *,
        segments: list[dict[str, Any]] | None = None,
    ) -> None:
        """Score one frame (pipeline outputs against ground truth). ``asp_semantic``: the ASP
        model's own semantic map at the input resolution (the fusion's other input);
        ``segments``: the fusion's segment list, whose detection scores rank the thing segments
        for mask AP (no AP without it: the live evaluation sees no scores). With ``gt_inst``
        (Cityscapes instanceIds) also iIoU and, with a ``panoptic`` map, PQ and mask AP."""
        self.scored += 1
        self.semantic.update(semantic, gt_sem)
        self.trimap.update(semantic, gt_sem)
        if fused is not None:
            self.fused.update(fused, gt_sem)
        if asp_semantic is not None:
            self.asp.update(asp_semantic, gt_sem)
        if gt_inst is not None:
            self.with_instances += 1
            self.iiou.update(semantic, gt_sem, gt_inst)
        if panoptic is not None and gt_inst is not None:
            self.pq.update(panoptic, gt_panoptic(gt_sem, gt_inst, self.labels))
            if segments is not None:
                found = panoptic_instances(panoptic, segments, self.labels)
                self.mask_ap.update(gt_inst, found, lambda p: panoptic == p.value)

    def compute(self, *, interrupted: bool = False, total_frames: int | None = None) -> dict:
        sem = self.semantic.compute()
        out: dict[str, Any] = {
            "frames": {
                "processed": self.frames,
                "scored": self.scored,
                "without_gt": self.frames - self.scored,
                "in_bag": total_frames,
                "interrupted": interrupted,
            },
            "semantic": sem,
            "confusion": self.semantic.confusion.tolist(),
            "boundary_iou": self.trimap.compute(),
            "latency_ms": {k: percentiles(v) for k, v in self.timings.items() if v},
        }
        if self.with_instances:  # the official definitions (metrics_instance)
            out["instance_iou"] = self.iiou.compute()
        if self.mask_ap.frames:
            out["mask_ap"] = self.mask_ap.compute()
        if self.panoptic:
            out["panoptic"] = self.pq.compute()
            fused = self.fused.compute()
            out["fusion"] = {
                "miou_realtime": sem["miou"],
                # the ASP model's semantic head alone (null where no frame gave it)
                "miou_asp": self.asp.compute()["miou"] if self.asp.confusion.any() else None,
                "miou_fused": fused["miou"],
                "gain": fused["miou"] - sem["miou"],
                "fused_iou": fused["iou"],
            }
        return out


def json_safe(x: Any) -> Any:
    """A metrics tree as strict JSON can hold it: NaN / inf -> ``None``, NumPy scalars -> Python
    numbers, tuples -> lists, dict keys -> strings (``json.dumps(..., allow_nan=False)`` then
    succeeds)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x
