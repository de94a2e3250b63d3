"""Streaming segmentation metrics (pure numpy / OpenCV).

* :class:`SemanticMetrics` — confusion-matrix IoU per class, mIoU, category IoU, pixel accuracy;
* :class:`PanopticQuality` — PQ / SQ / RQ with the COCO / Cityscapes panoptic rules;
* :class:`TrimapIoU` — IoU restricted to bands around ground-truth class boundaries (the trimap
  experiment of the GUN paper, section 5).

Every accumulator has ``update(pred, gt)`` (one frame), ``merge(other)`` (add another
accumulator of the same configuration, e.g. from a worker), ``reset()`` and ``compute() -> dict``
with plain Python floats (``nan`` where a value is undefined), ready for JSON or a table.
Semantic maps hold trainIds (``ignore_index`` = void); panoptic maps hold
``trainId * 1000 + instance`` (void = ``ignore_index * 1000``).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from seg_perception.labels import CITYSCAPES, IGNORE_ID, PANOPTIC_DIVISOR, LabelTable


def _num_classes(num_classes: int | None, labels: LabelTable | None, who: str) -> int:
    if num_classes is None:
        if labels is None:
            raise ValueError(f"{who}: give num_classes or a label table")
        return labels.num_classes
    if labels is not None and labels.num_classes != num_classes:
        raise ValueError(
            f"{who}: num_classes={num_classes} but label table {labels.name!r} has "
            f"{labels.num_classes} classes"
        )
    return int(num_classes)


def _pair(pred: np.ndarray, gt: np.ndarray, who: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"{who}.update: pred shape {pred.shape} != gt shape {gt.shape}")
    return pred, gt


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    union = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries; ``nan`` when there are none."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def _class_keys(pred: np.ndarray, gt: np.ndarray, c: int, ignore_index: int) -> np.ndarray:
    """Per pixel ``g * (c+1) + p`` as ``(H, W)`` uint16, where ``g`` is the gt class (``c`` for
    void / ``ignore_index`` / out of range) and ``p`` the predicted class (``c`` when out of
    range). Uses OpenCV LUTs on uint8 maps (other dtypes are converted first)."""
    if c > 255:
        raise ValueError(f"at most 255 classes are supported, got {c}")
    pred, gt = (_as_u8(x) for x in (pred, gt))
    g_lut = np.full(256, c * (c + 1), np.uint16)
    g_lut[:c] = np.arange(c) * (c + 1)
    if 0 <= ignore_index < 256:
        g_lut[ignore_index] = c * (c + 1)
    p_lut = np.full(256, c, np.uint16)
    p_lut[:c] = np.arange(c)
    return cv2.add(cv2.LUT(gt, g_lut), cv2.LUT(pred, p_lut))


def _as_u8(x: np.ndarray) -> np.ndarray:
    """A class map as contiguous uint8 (values outside 0..255 become 255)."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        x = np.where((x >= 0) & (x < 256), x, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def _hist(keys: np.ndarray, nbins: int) -> np.ndarray:
    """int64 counts of the values ``0..nbins-1`` of a uint16 array."""
    if keys.size < 1 << 24:  # calcHist counts in float32: exact below 2**24 per call
        h = cv2.calcHist([keys], [0], None, [nbins], [0, nbins])
        return h.ravel().astype(np.int64)
    return np.bincount(keys.ravel(), minlength=nbins)[:nbins]


def _confusion_iou(conf: np.ndarray) -> np.ndarray:
    """IoU per class of a ``(C, C+1)`` confusion (rows gt, last column = invalid prediction)."""
    c = conf.shape[0]
    tp = np.diag(conf[:, :c]).astype(np.float64)
    return _iou(tp, conf[:, :c].sum(0) - tp, conf.sum(1) - tp)


class SemanticMetrics:
    """Confusion-matrix IoU over frames. ``confusion`` is ``(C, C+1)``: rows ground truth, columns
    prediction, the last column counting predictions outside ``0..C-1`` (e.g. void) as misses."""

    def __init__(
        self,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_ID,
        labels: LabelTable | None = CITYSCAPES,
    ) -> None:
        self.num_classes = _num_classes(num_classes, labels, "SemanticMetrics")
        self.ignore_index = ignore_index
        self.labels = labels
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes + 1), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one frame: ``pred`` and ``gt`` are ``(H, W)`` trainId maps."""
        pred, gt = _pair(pred, gt, "SemanticMetrics")
        c = self.num_classes
        keys = _class_keys(pred, gt, c, self.ignore_index)
        self.confusion += _hist(keys, (c + 1) ** 2).reshape(c + 1, c + 1)[:c]

    def merge(self, other: SemanticMetrics) -> SemanticMetrics:
        if other.num_classes != self.num_classes:
            raise ValueError("SemanticMetrics.merge: different num_classes")
        self.confusion += other.confusion
        return self

    def compute(self) -> dict[str, Any]:
        """``miou`` (mean over classes with a non-empty union), ``iou`` per class name,
        ``pixel_accuracy``, ``mean_accuracy``, ``category_iou`` / ``mean_category_iou`` (with a
        label table) and ``num_pixels``."""
        conf, c = self.confusion, self.num_classes
        iou = _confusion_iou(conf)
        tp = np.diag(conf[:, :c]).astype(np.float64)
        total = conf.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            acc = np.where(conf.sum(1) > 0, tp / np.maximum(conf.sum(1), 1), np.nan)
        names = self.labels.train_names if self.labels else [str(i) for i in range(c)]
        out: dict[str, Any] = {
            "miou": _nanmean(iou),
            "iou": {n: float(v) for n, v in zip(names, iou, strict=True)},
            "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
            "mean_accuracy": _nanmean(acc),
            "num_pixels": int(total),
        }
        if self.labels is not None:
            # Category IoU: the same confusion with classes pooled into their categories.
            cats = list(dict.fromkeys(self.labels.train_category))
            of = np.array([cats.index(x) for x in self.labels.train_category] + [len(cats)])
            pooled = np.zeros((len(cats), len(cats) + 1), np.int64)
            np.add.at(pooled, (of[:c, None], of[None, :]), conf)
            cat_iou = _confusion_iou(pooled)
            out["category_iou"] = {n: float(v) for n, v in zip(cats, cat_iou, strict=True)}
            out["mean_category_iou"] = _nanmean(cat_iou)
        return out


def _compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat non-negative int ids -> (unique ids, index of each pixel's id, pixels per id)."""
    top = int(ids.max()) if ids.size else 0
    if top < 1 << 22:  # counting is much faster than sorting for panoptic-sized ids
        counts = np.bincount(ids, minlength=top + 1)
        uniq = np.flatnonzero(counts)
        lut = np.zeros(top + 1, np.intp)
        lut[uniq] = np.arange(len(uniq))
        return uniq, lut[ids], counts[uniq]
    uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return uniq, inv.ravel(), counts


class PanopticQuality:
    """PQ / SQ / RQ with the COCO / Cityscapes panoptic rules (as panopticapi).

    Ground-truth pixels of class ``ignore_index`` (or any class outside ``0..C-1``) are void;
    a ground-truth thing class with instance 0 is a crowd region (Cityscapes encodes a group of
    objects without instance ids so). A predicted and a ground-truth segment of one class match
    when IoU > 0.5, where void pixels are left out of the union; unmatched ground-truth segments
    (not crowd) are false negatives; unmatched predicted segments are false positives unless more
    than half of them lies on void or on a crowd region of their class. Predicted pixels of a
    class outside ``0..C-1``, and predicted thing pixels with instance 0 (a thing class with no
    object: the fusion itself writes such pixels as void), form no segment: they claim no
    object, so they are no false positive, and they are not part of any matched segment.
    """

    def __init__(self, labels: LabelTable = CITYSCAPES, ignore_index: int = IGNORE_ID) -> None:
        self.labels = labels
        self.ignore_index = ignore_index
        self.is_thing = np.array([labels.is_thing(c) for c in range(labels.num_classes)])
        self.reset()

    def reset(self) -> None:
        c = self.labels.num_classes
        self.iou_sum = np.zeros(c)
        self.tp, self.fp, self.fn = (np.zeros(c, np.int64) for _ in range(3))

    def update(self, pred_panoptic: np.ndarray, gt_panoptic: np.ndarray) -> None:
        """Add one frame of ``(H, W)`` panoptic ids (``trainId * 1000 + instance``)."""
        pred, gt = _pair(pred_panoptic, gt_panoptic, "PanopticQuality")
        if pred.size and (pred.min() < 0 or gt.min() < 0):
            raise ValueError("PanopticQuality.update: panoptic ids must be >= 0")
        c, div = self.labels.num_classes, PANOPTIC_DIVISOR
        g_ids, g_idx, g_area = _compact(gt.ravel().astype(np.int64))
        p_ids, p_idx, p_area = _compact(pred.ravel().astype(np.int64))
        inter = np.bincount(g_idx * len(p_ids) + p_idx, minlength=len(g_ids) * len(p_ids))
        inter = inter.reshape(len(g_ids), len(p_ids))

        g_cls, g_inst = g_ids // div, g_ids % div
        p_cls, p_inst = p_ids // div, p_ids % div
        g_void = g_cls >= c  # includes ignore_index * 1000
        g_crowd = ~g_void & self.is_thing[np.minimum(g_cls, c - 1)] & (g_inst == 0)
        p_seg = (p_cls < c) & ~(self.is_thing[np.minimum(p_cls, c - 1)] & (p_inst == 0))
        void_inter = inter[g_void].sum(0)
        crowd_inter = (inter * (g_crowd[:, None] & (g_cls[:, None] == p_cls[None, :]))).sum(0)

        # Matching: same class, IoU > 0.5 with void pixels left out (unique by construction).
        cand = (~g_void & ~g_crowd)[:, None] & p_seg[None, :] & (g_cls[:, None] == p_cls[None, :])
        union = g_area[:, None] + p_area[None, :] - inter - void_inter[None, :]
        iou = np.where(cand & (inter > 0), inter / np.maximum(union, 1), 0.0)
        gi, pj = np.nonzero(iou > 0.5)
        np.add.at(self.tp, g_cls[gi], 1)
        np.add.at(self.iou_sum, g_cls[gi], iou[gi, pj])

        fn = ~g_void & ~g_crowd
        fn[gi] = False
        np.add.at(self.fn, g_cls[fn], 1)
        fp = p_seg.copy()
        fp[pj] = False
        fp &= (void_inter + crowd_inter) / p_area <= 0.5  # mostly void / crowd: not counted
        np.add.at(self.fp, p_cls[fp], 1)

    def merge(self, other: PanopticQuality) -> PanopticQuality:
        if other.labels.num_classes != self.labels.num_classes:
            raise ValueError("PanopticQuality.merge: different label tables")
        self.iou_sum += other.iou_sum
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def compute(self) -> dict[str, Any]:
        """``all`` / ``things`` / ``stuff``: ``{pq, sq, rq, n}`` (means over classes with at least
        one segment, ``n`` of them) and ``per_class``: ``{name: {pq, sq, rq, tp, fp, fn}}``."""
        tp, fp, fn = self.tp, self.fp, self.fn
        denom = tp + 0.5 * fp + 0.5 * fn
        with np.errstate(divide="ignore", invalid="ignore"):
            pq = np.where(denom > 0, self.iou_sum / denom, np.nan)
            rq = np.where(denom > 0, tp / denom, np.nan)
            sq = np.where(tp > 0, self.iou_sum / np.maximum(tp, 1), 0.0)
        sq = np.where(denom > 0, sq, np.nan)
        out: dict[str, Any] = {}
        groups = {"all": np.ones_like(self.is_thing), "things": self.is_thing}
        groups["stuff"] = ~self.is_thing
        for name, sel in groups.items():
            valid = sel & (denom > 0)
            out[name] = {
                "pq": _nanmean(pq[valid]),
                "sq": _nanmean(sq[valid]),
                "rq": _nanmean(rq[valid]),
                "n": int(valid.sum()),
            }
        out["per_class"] = {
            n: {
                "pq": float(pq[i]),
                "sq": float(sq[i]),
                "rq": float(rq[i]),
                "tp": int(tp[i]),
                "fp": int(fp[i]),
                "fn": int(fn[i]),
            }
            for i, n in enumerate(self.labels.train_names)
        }
        return out


class TrimapIoU:
    """IoU in bands around ground-truth class boundaries (GUN paper, section 5).

    Following the paper ("for each object class independently we computed the distance transform
    on ground-truth maps. Then we performed the trimap experiment by gradually increasing the
    threshold on our computed distance transform map"), each ground-truth pixel of class c gets
    the Euclidean distance to the nearest pixel whose ground-truth label is not c (a pixel next to
    a boundary has distance 1; the image border is no boundary; void counts as another label).
    Band ``b`` holds the non-void pixels with distance <= ``b``; per band a confusion matrix gives
    IoU per class and mIoU, as in :class:`SemanticMetrics`.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        bands: tuple[int, ...] = (2, 4, 8, 16, 32),
        ignore_index: int = IGNORE_ID,
        labels: LabelTable | None = CITYSCAPES,
    ) -> None:
        self.num_classes = _num_classes(num_classes, labels, "TrimapIoU")
        if not bands or list(bands) != sorted(set(bands)) or bands[0] <= 0:
            raise ValueError(f"TrimapIoU: bands must be increasing positive widths, got {bands}")
        self.bands = tuple(bands)
        self.ignore_index = ignore_index
        self.labels = labels
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        # confusion[b] counts the pixels whose distance falls in (bands[b-1], bands[b]].
        self.confusion = np.zeros((len(self.bands), c, c + 1), np.int64)

    def band_index(self, gt: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8: index of the narrowest band holding each pixel (``len(bands)`` for
        pixels farther than the widest band and for void)."""
        gt = np.asarray(gt)
        nb = len(self.bands)
        out = np.full(gt.shape, nb, np.uint8)
        h, w = gt.shape
        for c in range(self.num_classes):
            if c == self.ignore_index:
                continue
            inside = gt == c
            if not inside.any():
                continue
            rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
            y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, h)
            x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, w)
            crop = inside[y0:y1, x0:x1]
            # Distance of every class pixel to the nearest other-label pixel; a one-pixel margin
            # of the bounding box is enough, since it holds no pixel of c.
            dist = cv2.distanceTransform(crop.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            band = np.zeros(dist.shape, np.uint8)  # number of bands narrower than the distance
            for width in self.bands:
                band += dist > width
            np.copyto(out[y0:y1, x0:x1], band, where=crop)
        return out

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one frame: ``pred`` and ``gt`` are ``(H, W)`` trainId maps."""
        pred, gt = _pair(pred, gt, "TrimapIoU")
        c, nb = self.num_classes, len(self.bands)
        keys = _class_keys(pred, gt, c, self.ignore_index).astype(np.int64)
        keys += self.band_index(gt).astype(np.int64) * (c + 1) ** 2  # void: band nb, dropped
        counts = np.bincount(keys.ravel(), minlength=(nb + 1) * (c + 1) ** 2)
        self.confusion += counts.reshape(nb + 1, c + 1, c + 1)[:nb, :c]

    def merge(self, other: TrimapIoU) -> TrimapIoU:
        if other.bands != self.bands or other.num_classes != self.num_classes:
            raise ValueError("TrimapIoU.merge: different bands or num_classes")
        self.confusion += other.confusion
        return self

    def compute(self) -> dict[str, Any]:
        """``bands``, ``miou`` per band and ``iou``: class name -> IoU per band."""
        cum = np.cumsum(self.confusion, axis=0)  # band b = all pixels with distance <= bands[b]
        ious = np.stack([_confusion_iou(conf) for conf in cum])
        names = (
            self.labels.train_names if self.labels else [str(i) for i in range(self.num_classes)]
        )
        return {
            "bands": list(self.bands),
            "miou": [_nanmean(v) for v in ious],
            "iou": {n: [float(v) for v in ious[:, i]] for i, n in enumerate(names)},
        }
