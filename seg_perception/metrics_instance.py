"""Instance-aware Cityscapes metrics with the official definitions (pure numpy).

* :class:`InstanceIoU` -- iIoU, the instance-weighted IoU of ``cityscapesscripts.evaluation.
  evalPixelLevelSemanticLabeling`` (per class and per category, "nIoU" in its printout): a
  ground-truth instance's true-positive and false-negative pixels are weighted by
  ``average instance size of its class / its size``, false positives are not weighted;
  ``iIoU = TP_w / (TP_w + FP + FN_w)``.
* :class:`MaskAP` -- the mask AP of ``cityscapesscripts.evaluation.
  evalInstanceLevelSemanticLabeling`` (no distances): per class and overlap threshold 0.5, 0.55,
  ..., 0.95 predictions are matched to ground-truth instances of at least 100 pixels, groups
  (``instanceId < 1000``), void and too-small instances are regions to ignore, and AP is the
  step-wise integral of the precision-recall curve; ``ap`` averages classes and thresholds,
  ``ap50`` the 0.5 threshold.

Both read the ground truth as Cityscapes instanceIds (``labelId * 1000 + j`` on thing pixels with
an instance, the labelId elsewhere), as the official scripts read ``*_gtFine_instanceIds.png``;
tests check them against the scripts on exported files. :func:`panoptic_instances` gives the
thing segments of a panoptic map, the predictions both the export and :class:`MaskAP` use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seg_perception.labels import CITYSCAPES, PANOPTIC_DIVISOR, LabelTable

__all__ = [
    "CITYSCAPES_AVG_INSTANCE_SIZE",
    "InstanceIoU",
    "MaskAP",
    "PredictedInstance",
    "panoptic_instances",
]

INSTANCE_DIVISOR = 1000  # Cityscapes instanceIds: labelId * 1000 + j
#: mean instance size in pixels per class over Cityscapes, the iIoU weights (``args.avgClassSize``
#: of cityscapesscripts' evalPixelLevelSemanticLabeling)
CITYSCAPES_AVG_INSTANCE_SIZE: dict[str, float] = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}
#: evalInstanceLevelSemanticLabeling: ``np.arange(0.5, 1., 0.05)`` and ``minRegionSizes[0]``
OVERLAPS = np.arange(0.5, 1.0, 0.05)
MIN_REGION_SIZE = 100


def _mean_finite(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


# ----------------------------------------------------------------------------- predictions
@dataclass(frozen=True)
class PredictedInstance:
    """One thing segment of a panoptic map: its panoptic value, trainId and score."""

    value: int
    train_id: int
    score: float


def panoptic_instances(
    panoptic: np.ndarray,
    segments: Sequence[dict[str, Any]] | None = None,
    labels: LabelTable = CITYSCAPES,
) -> list[PredictedInstance]:
    """The thing segments of ``panoptic`` (``trainId * 1000 + k`` with ``k >= 1``), in increasing
    panoptic value, each with the ``score`` of its entry in ``segments`` (1.0 when it has none:
    segments formed from the semantic map, or no segment list given). Thing pixels with ``k = 0``
    claim no object and give none."""
    pan = np.asarray(panoptic)
    values = np.unique(pan[(pan % PANOPTIC_DIVISOR) > 0]) if pan.size else np.zeros(0, int)
    scores = {int(s["id"]): s.get("score") for s in segments or ()}
    out = []
    for v in values.tolist():
        train_id = v // PANOPTIC_DIVISOR
        if train_id >= labels.num_classes or not labels.is_thing(train_id):
            continue
        score = scores.get(v)
        out.append(PredictedInstance(v, train_id, 1.0 if score is None else float(score)))
    return out


def _label_rows(labels: LabelTable) -> dict[int, Any]:
    return {lab.id: lab for lab in labels.labels}


# ----------------------------------------------------------------------------- iIoU
class InstanceIoU:
    """iIoU per class and per category, as evalPixelLevelSemanticLabeling computes it.

    Classes: those with instances that are evaluated (Cityscapes: person ... bicycle); categories:
    those whose labels all have instances (human, vehicle). Ground-truth instances are the
    instanceIds above 1000 of evaluated labels; weights come from ``avg_instance_size`` (a class
    missing there gets no iIoU).
    """

    def __init__(
        self,
        labels: LabelTable = CITYSCAPES,
        avg_instance_size: dict[str, float] | None = None,
    ) -> None:
        self.labels = labels
        self.avg = CITYSCAPES_AVG_INSTANCE_SIZE if avg_instance_size is None else avg_instance_size
        c = labels.num_classes
        self.classes = [t for t in labels.thing_train_ids if labels.train_names[t] in self.avg]
        rows = labels.labels
        self.categories = [
            cat
            for cat in labels.categories
            if all(lab.has_instances for lab in rows if lab.category == cat)
            and any(lab.train_id < c for lab in rows if lab.category == cat)
        ]
        cats = {cat: i for i, cat in enumerate(self.categories)}
        # trainId -> index of its (all-instance) category, len(categories) for the others
        self._cat_of = np.full(256, len(cats), np.intp)
        for t, cat in enumerate(labels.train_category):
            if cat in cats:
                self._cat_of[t] = cats[cat]
        self._rows = _label_rows(labels)
        self.reset()

    def reset(self) -> None:
        c, k = self.labels.num_classes, len(self.categories)
        self.tp_w, self.fn_w, self.fp = np.zeros(c), np.zeros(c), np.zeros(c, np.int64)
        self.cat_tp_w, self.cat_fn_w = np.zeros(k), np.zeros(k)
        self.cat_fp = np.zeros(k, np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, gt_instance_ids: np.ndarray) -> None:
        """Add one frame: ``pred`` / ``gt`` ``(H, W)`` trainIds, ``gt_instance_ids`` ``(H, W)``
        Cityscapes instanceIds."""
        pred, gt, inst = np.asarray(pred), np.asarray(gt), np.asarray(gt_instance_ids)
        if not pred.shape == gt.shape == inst.shape:
            raise ValueError(
                f"InstanceIoU.update: shapes differ: {pred.shape}, {gt.shape}, {inst.shape}"
            )
        c, k = self.labels.num_classes, len(self.categories)
        p = pred.astype(np.intp)
        p = np.where((p >= 0) & (p < c), p, 255)
        g = gt.astype(np.intp)
        evaluated = (g >= 0) & (g < c)
        # false positives: predicted c on a pixel of another evaluated class (not weighted)
        wrong = evaluated & (p != g) & (p < c)
        self.fp += np.bincount(p[wrong], minlength=c)[:c]
        pc, gc = self._cat_of[p], self._cat_of[np.where(evaluated, g, 255)]
        cat_wrong = evaluated & (pc < k) & (pc != gc)
        self.cat_fp += np.bincount(pc[cat_wrong], minlength=k + 1)[:k]
        ids, sizes = np.unique(inst[inst > INSTANCE_DIVISOR], return_counts=True)
        for iid, size in zip(ids.tolist(), sizes.tolist(), strict=True):
            lab = self._rows.get(iid // INSTANCE_DIVISOR)
            if lab is None or lab.ignore_in_eval or lab.train_id >= c:
                continue
            t = lab.train_id
            weight = self.avg[lab.name] / size if lab.name in self.avg else math.nan
            mask = inst == iid
            hit = int(np.count_nonzero(p[mask] == t))
            if t in self.classes:
                self.tp_w[t] += hit * weight
                self.fn_w[t] += (size - hit) * weight
            cat = self._cat_of[t]
            if cat < k:
                cat_hit = int(np.count_nonzero(self._cat_of[p[mask]] == cat))
                self.cat_tp_w[cat] += cat_hit * weight
                self.cat_fn_w[cat] += (size - cat_hit) * weight

    def merge(self, other: InstanceIoU) -> InstanceIoU:
        if other.labels.num_classes != self.labels.num_classes:
            raise ValueError("InstanceIoU.merge: different label tables")
        for name in ("tp_w", "fn_w", "fp", "cat_tp_w", "cat_fn_w", "cat_fp"):
            getattr(self, name).__iadd__(getattr(other, name))
        return self

    @staticmethod
    def _iiou(tp: float, fp: float, fn: float) -> float:
        denom = tp + fp + fn
        return float(tp / denom) if denom > 0 else math.nan

    def compute(self) -> dict[str, Any]:
        """``iiou`` (mean over classes with a value), ``per_class`` {name: iIoU},
        ``mean_category_iiou`` and ``category_iiou`` {category: iIoU} (``nan``: undefined)."""
        names = self.labels.train_names
        per_class = {
            names[t]: self._iiou(self.tp_w[t], self.fp[t], self.fn_w[t]) for t in self.classes
        }
        per_cat = {
            cat: self._iiou(self.cat_tp_w[i], self.cat_fp[i], self.cat_fn_w[i])
            for i, cat in enumerate(self.categories)
        }
        return {
            "iiou": _mean_finite(list(per_class.values())),
            "per_class": per_class,
            "mean_category_iiou": _mean_finite(list(per_cat.values())),
            "category_iiou": per_cat,
        }


# ----------------------------------------------------------------------------- mask AP
@dataclass
class _Pred:
    pixels: int
    score: float
    void: int
    matches: dict[int, int]  # index into the frame's ground truth of this class -> intersection


class MaskAP:
    """Mask AP per class, AP and AP50 as evalInstanceLevelSemanticLabeling computes them (its
    default without distance information: minimum region size 100 pixels).

    ``update(gt_instance_ids, predictions, mask_of)`` adds a frame: the ground truth as Cityscapes
    instanceIds, the predicted instances (trainId, score) and a function giving each one's
    ``(H, W)`` bool mask (e.g. ``panoptic == value``).
    """

    def __init__(self, labels: LabelTable = CITYSCAPES) -> None:
        self.labels = labels
        rows = labels.labels
        #: evaluated classes with instances, by labelId, in the label table's order
        self.class_ids = [lab.id for lab in rows if lab.has_instances and not lab.ignore_in_eval]
        self.names = {lab.id: lab.name for lab in rows}
        self.void_ids = np.array([lab.id for lab in rows if lab.ignore_in_eval], np.int64)
        self.reset()

    def reset(self) -> None:
        # per frame: labelId -> (ground truth [(instanceId, pixels)], predictions)
        self.frames: list[dict[int, tuple[list[tuple[int, int]], list[_Pred]]]] = []

    @staticmethod
    def _label_of(instance_id: int) -> int:
        return instance_id if instance_id < INSTANCE_DIVISOR else instance_id // INSTANCE_DIVISOR

    def update(
        self,
        gt_instance_ids: np.ndarray,
        predictions: Sequence[PredictedInstance],
        mask_of: Any,
    ) -> None:
        inst = np.asarray(gt_instance_ids).astype(np.int64)
        ids, sizes = np.unique(inst, return_counts=True)
        frame: dict[int, tuple[list[tuple[int, int]], list[_Pred]]] = {
            lid: ([], []) for lid in self.class_ids
        }
        where: dict[int, tuple[int, int]] = {}  # instanceId -> (labelId, index in its list)
        for iid, size in zip(ids.tolist(), sizes.tolist(), strict=True):
            lid = self._label_of(iid)
            if lid in frame:
                where[iid] = (lid, len(frame[lid][0]))
                frame[lid][0].append((iid, size))
        for p in predictions:
            lid = int(self.labels.train_to_label[p.train_id])
            if lid not in frame:
                continue
            mask = np.asarray(mask_of(p))
            pixels = int(np.count_nonzero(mask))
            if not pixels:
                continue
            vals, counts = np.unique(inst[mask], return_counts=True)
            void = int(counts[np.isin(vals, self.void_ids)].sum())
            matches = {
                where[v][1]: c
                for v, c in zip(vals.tolist(), counts.tolist(), strict=True)
                if v in where and where[v][0] == lid
            }
            frame[lid][1].append(_Pred(pixels, float(p.score), void, matches))
        self.frames.append(frame)

    def merge(self, other: MaskAP) -> MaskAP:
        self.frames.extend(other.frames)
        return self

    def _class_ap(self, lid: int, overlap: float) -> float:
        y_true: list[float] = []
        y_score: list[float] = []
        hard_fns = 0
        have_gt = have_pred = False
        for frame in self.frames:
            gts, preds = frame[lid]
            keep = [
                i
                for i, (iid, n) in enumerate(gts)
                if iid >= INSTANCE_DIVISOR and n >= MIN_REGION_SIZE
            ]
            have_gt |= bool(keep)
            have_pred |= bool(preds)
            for gi in keep:  # every instance: its best prediction is a TP, the others FPs
                scores = [
                    p.score
                    for p in preds
                    if gi in p.matches
                    and p.matches[gi] / (gts[gi][1] + p.pixels - p.matches[gi]) > overlap
                ]
                if not scores:
                    hard_fns += 1
                    continue
                best = max(scores)
                y_true.append(1.0)
                y_score.append(best)
                rest = sorted(scores)
                rest.remove(best)
                y_true += [0.0] * len(rest)
                y_score += rest
            for p in preds:  # unmatched predictions: FPs unless mostly on regions to ignore
                if any(
                    inter / (gts[gi][1] + p.pixels - inter) > overlap
                    for gi, inter in p.matches.items()
                ):
                    continue
                ignore = p.void
                for gi, inter in p.matches.items():
                    if gts[gi][0] < INSTANCE_DIVISOR:  # a group
                        ignore += inter
                    if gts[gi][1] < MIN_REGION_SIZE:  # too small (counted again if a group)
                        ignore += inter
                if ignore / p.pixels <= overlap:
                    y_true.append(0.0)
                    y_score.append(p.score)
        if not have_gt:
            return math.nan
        if not have_pred:
            return 0.0
        return _average_precision(np.array(y_true), np.array(y_score), hard_fns)

    def compute(self) -> dict[str, Any]:
        """``ap`` (mean over classes and overlaps with a value), ``ap50`` (at overlap 0.5) and
        ``per_class`` {name: {ap, ap50}}; a class without ground truth has ``nan``."""
        aps = np.array([[self._class_ap(lid, o) for o in OVERLAPS] for lid in self.class_ids])
        aps = aps.reshape(len(self.class_ids), len(OVERLAPS))
        per_class = {
            self.names[lid]: {"ap": float(np.average(aps[i])), "ap50": float(aps[i, 0])}
            for i, lid in enumerate(self.class_ids)
        }
        return {
            "ap": _mean_finite(aps.ravel().tolist()),
            "ap50": _mean_finite(aps[:, 0].tolist()),
            "per_class": per_class,
        }


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_fns: int) -> float:
    """The step-wise integral of the precision-recall curve, as evalInstanceLevelSemanticLabeling
    computes it (one point per distinct score, plus precision 1 at recall 0)."""
    if y_true.size == 0:  # predictions, all ignored, and no instance found: recall stays 0
        return 0.0
    order = np.argsort(y_score, kind="stable")
    scores, truth = y_score[order], y_true[order]
    cumsum = np.cumsum(truth)
    _, first = np.unique(scores, return_index=True)
    n, n_true = len(scores), cumsum[-1]
    below = np.where(first > 0, cumsum[np.maximum(first - 1, 0)], 0.0)  # trues under the score
    tp = n_true - below
    fp = n - first - tp
    fn = below + hard_fns
    precision = np.append(tp / (tp + fp), 1.0)
    recall = np.append(tp / (tp + fn), 0.0)
    padded = np.concatenate([recall[:1], recall, [0.0]])
    widths = np.convolve(padded, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, widths))
