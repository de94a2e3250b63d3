"""Panoptic data types and encodings shared by fusion, the pipeline, the node and the metrics.

Encodings (see :mod:`seg_perception.labels`): semantic ``(H, W)`` uint8 trainIds (255 = void),
instance ``(H, W)`` uint16 (0 = none, 1..N), panoptic ``(H, W)`` int32
``trainId * 1000 + instance`` (instance 0 = stuff / no instance). Pure numpy / OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from seg_perception.labels import CITYSCAPES, PANOPTIC_DIVISOR, LabelTable

MAX_INSTANCES = PANOPTIC_DIVISOR - 1  # instance indices must stay below the panoptic divisor


@dataclass
class Instances:
    """Instance-segmentation output of one frame.

    Attributes:
        masks: ``(K, H, W)`` bool, full-resolution masks (other dtypes are converted, a copy).
        labels: ``(K,)`` int, trainIds of thing classes.
        scores: ``(K,)`` float, detection confidences.
        boxes: optional ``(K, 4)`` int ``(x0, y0, x1, y1)`` pixel bounds (exclusive end) that
            contain every true pixel of each mask; consumers then scan only that window.
    """

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks)
        if self.masks.dtype != np.bool_:
            self.masks = self.masks != 0
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        k = len(self.labels)
        if self.masks.ndim != 3 or self.masks.shape[0] != k or len(self.scores) != k:
            raise ValueError(
                "Instances: expected masks (K, H, W), labels (K,), scores (K,) with one K; got "
                f"masks {self.masks.shape}, labels {self.labels.shape}, scores {self.scores.shape}"
            )
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 4)
            if len(self.boxes) != k:
                raise ValueError(f"Instances: boxes {self.boxes.shape} for {k} masks")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        """No detections for a ``height x width`` frame."""
        return cls(np.zeros((0, height, width), bool), np.zeros(0, np.int64), np.zeros(0))


@dataclass
class PanopticResult:
    """Fused output of one frame.

    Attributes:
        semantic: ``(H, W)`` uint8 refined trainIds (255 = void).
        instance: ``(H, W)`` uint16, 0 = no instance, 1..N.
        panoptic: ``(H, W)`` int32, ``trainId * 1000 + instance``; a thing pixel without an
            instance (a foreground segment too small to be an object) is void,
            ``IGNORE_ID * 1000``, while ``semantic`` keeps its class.
        segments: one dict per segment, i.e. per id of ``panoptic`` except void: ``id``
            (panoptic value), ``train_id``, ``instance``, ``is_thing``, ``area`` (pixels),
            ``score`` (detection score, ``None`` for segments taken from the semantic map) and
            ``source`` (``"detection"`` or ``"semantic"``).
    """

    semantic: np.ndarray
    instance: np.ndarray
    panoptic: np.ndarray
    segments: list[dict[str, Any]]


# ----------------------------------------------------------------------------- encodings


def encode_panoptic(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """``(H, W)`` trainIds + ``(H, W)`` instance indices -> ``(H, W)`` int32 panoptic ids."""
    if semantic.shape != instance.shape:
        raise ValueError(f"encode_panoptic: shapes differ, {semantic.shape} vs {instance.shape}")
    if instance.size and int(instance.max()) >= PANOPTIC_DIVISOR:
        raise ValueError(
            f"encode_panoptic: instance index {int(instance.max())} >= {PANOPTIC_DIVISOR}"
        )
    pan = np.multiply(semantic, PANOPTIC_DIVISOR, dtype=np.int32)
    np.add(pan, instance, out=pan, casting="unsafe")
    return pan


def decode_panoptic(panoptic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` panoptic ids -> (trainIds ``(H, W)`` uint8, instances ``(H, W)`` uint16)."""
    pan = np.asarray(panoptic)
    if pan.size and (int(pan.min()) < 0 or int(pan.max()) >= 256 * PANOPTIC_DIVISOR):
        raise ValueError(
            f"decode_panoptic: ids must be in [0, {256 * PANOPTIC_DIVISOR}), "
            f"got [{int(pan.min())}, {int(pan.max())}]"
        )
    train = pan // PANOPTIC_DIVISOR  # (np.divmod is several times slower)
    inst = pan - train * PANOPTIC_DIVISOR
    return train.astype(np.uint8), inst.astype(np.uint16)


def gt_panoptic(
    semantic: np.ndarray, instance_ids: np.ndarray | None, labels: LabelTable = CITYSCAPES
) -> np.ndarray:
    """Ground-truth panoptic ids ``trainId * 1000 + k`` from ``(H, W)`` trainIds and Cityscapes
    instanceIds (``labelId * 1000 + j`` on thing pixels with an instance, ``labelId`` elsewhere),
    in the form :class:`~seg_perception.metrics.PanopticQuality` scores against:

    * void (``IGNORE_ID``, or any trainId outside the table): ``trainId * 1000``, which PQ
      leaves out (e.g. ``255000``);
    * stuff: ``trainId * 1000``; an instanceId on a stuff pixel is ignored;
    * thing pixels with an instanceId >= 1000: ``k`` = 1..N, numbered through the frame in the
      order of the instanceIds (one ``k`` per instanceId, as the node numbers its instances);
    * thing pixels without one (instanceId < 1000, Cityscapes' groups of objects): ``k = 0``,
      which PQ treats as a crowd region of the class.

    ``instance_ids`` None gives the stuff/void encoding of every pixel (``k = 0``). Raises
    ``ValueError`` for more than 999 instances in one frame (``k`` must stay below 1000).
    """
    sem = np.asarray(semantic)
    pan = np.multiply(sem, PANOPTIC_DIVISOR, dtype=np.int32)
    if instance_ids is None:
        return pan
    inst = np.asarray(instance_ids)
    if inst.shape != sem.shape:
        raise ValueError(f"gt_panoptic: shapes differ, {sem.shape} vs {inst.shape}")
    sel = (inst >= 1000) & np.isin(sem, labels.thing_train_ids)  # Cityscapes: labelId * 1000 + j
    ids, k = np.unique(inst[sel], return_inverse=True)
    if len(ids) > MAX_INSTANCES:
        raise ValueError(
            f"gt_panoptic: {len(ids)} instances in one frame, at most {MAX_INSTANCES} fit"
        )
    pan[sel] += k.reshape(-1).astype(np.int32) + 1
    return pan


def _shade_luts() -> tuple[np.ndarray, np.ndarray]:
    """Per-channel colour offsets for instance indices 1..255 as two ``(3, 256)`` uint8 LUTs
    (positive part, negative part); entry 0 (stuff) is no offset. A low-discrepancy (R2)
    sequence per channel keeps consecutive indices far apart."""
    i = np.arange(256, dtype=np.float64)[None, :]
    alpha = np.array([0.7548776662, 0.5698402910, 0.6180339887])[:, None]
    off = np.round((np.mod(0.5 + i * alpha, 1.0) - 0.5) * 110.0)
    off[:, 0] = 0
    return np.clip(off, 0, 255).astype(np.uint8), np.clip(-off, 0, 255).astype(np.uint8)


_SHADE_POS, _SHADE_NEG = _shade_luts()


def colorize_panoptic(panoptic: np.ndarray, labels: LabelTable = CITYSCAPES) -> np.ndarray:
    """``(H, W)`` panoptic ids -> ``(H, W, 3)`` uint8 RGB.

    Stuff (instance 0) is drawn in its label colour, each instance in a shade of its class colour
    that depends only on its instance index (deterministic across runs and frames; indices
    repeat their shade every 255).
    """
    sem, inst = decode_panoptic(panoptic)
    lut = labels.color_lut
    rgb = [cv2.LUT(sem, np.ascontiguousarray(lut[:, ch])) for ch in range(3)]
    if inst.size and inst.max() > 0:
        if inst.max() > 255:
            inst = np.where(inst > 0, (inst.astype(np.int32) - 1) % 255 + 1, 0)
        i8 = inst.astype(np.uint8)
        for ch in range(3):  # single-channel LUTs and saturating add / subtract
            rgb[ch] = cv2.add(rgb[ch], cv2.LUT(i8, _SHADE_POS[ch]))
            rgb[ch] = cv2.subtract(rgb[ch], cv2.LUT(i8, _SHADE_NEG[ch]))
    return cv2.merge(rgb)


def mask_bounds(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Continuous ``(K, 4)`` boxes -> the integer pixel windows ``(x0, y0, x1, y1)`` (clipped to
    the image, exclusive end) that :func:`paste_masks` writes into."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lo = np.floor(b[:, :2]).clip(0, None)
    hi = np.ceil(b[:, 2:]).clip(None, [width, height])
    return np.concatenate([lo, hi], axis=1).astype(np.int64)


def paste_masks(
    masks_lowres: np.ndarray,
    boxes: np.ndarray,
    height: int,
    width: int,
    threshold: float = 0.5,
) -> np.ndarray:
    """Paste low-resolution mask probabilities into the image: ``(K, [1,] M, M) -> (K, H, W)`` bool.

    Each mask covers its box ``(x0, y0, x1, y1)`` (continuous pixel coordinates, pixel ``j`` spans
    ``[j, j + 1)``). Pixel centres inside the box are sampled bilinearly from the mask, with zeros
    beyond its border (so the mask fades out over half a mask cell at the box edge, like
    torchvision's one-cell zero padding), then thresholded with ``>= threshold``. Pure numpy;
    only the region of each box is touched.
    """
    masks = np.asarray(masks_lowres, dtype=np.float32)
    if masks.ndim == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"paste_masks: masks must be (K, 1, M, M), got {masks.shape}")
        masks = masks[:, 0]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if masks.ndim != 3 or len(masks) != len(boxes):
        raise ValueError(
            f"paste_masks: masks {masks_lowres.shape} and boxes {boxes.shape} do not match"
        )
    out = np.zeros((len(boxes), height, width), dtype=bool)
    windows = mask_bounds(boxes, height, width)
    for k, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes, strict=True)):
        bw, bh = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
        c0, r0, c1, r1 = (int(v) for v in windows[k])
        if c1 <= c0 or r1 <= r0:
            continue
        mh, mw = mask.shape
        # mask coordinates of the pixel centres (mask cell i is centred at i)
        u = (np.arange(c0, c1) + 0.5 - x0) / bw * mw - 0.5
        v = (np.arange(r0, r1) + 0.5 - y0) / bh * mh - 0.5
        padded = np.pad(mask, 1)  # zero border: padded index = mask index + 1
        u = np.clip(u + 1.0, 0.0, mw + 1.0)
        v = np.clip(v + 1.0, 0.0, mh + 1.0)
        u0 = np.minimum(np.floor(u).astype(np.intp), mw)
        v0 = np.minimum(np.floor(v).astype(np.intp), mh)
        fu, fv = (u - u0)[None, :], (v - v0)[:, None]
        top = padded[v0][:, u0] * (1 - fu) + padded[v0][:, u0 + 1] * fu
        bottom = padded[v0 + 1][:, u0] * (1 - fu) + padded[v0 + 1][:, u0 + 1] * fu
        out[k, r0:r1, c0:c1] = (top * (1 - fv) + bottom * fv) >= threshold
    return out
