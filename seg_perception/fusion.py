"""Panoptic fusion of a semantic map and instance masks (pure numpy / OpenCV).

Two methods, chosen by name through :func:`fuse` (``fusion.method`` in the config):

* ``"heuristic"`` — the output fusion of Costea, Petrovai & Nedevschi, *Fusion Scheme for Semantic
  and Instance-level Segmentation*, section IV (:func:`fuse_heuristic`);
* ``"baseline"`` — the simple heuristic of Kirillov et al. as implemented by panopticapi /
  detectron2 (:func:`fuse_baseline`), kept for comparison.

Types and encodings (:class:`Instances`, :class:`PanopticResult`, ``encode_panoptic`` ...) live in
:mod:`seg_perception.panoptic` and are re-exported here.

Cost: a few whole-frame passes (the category map, the list of unlabelled foreground pixels,
the output encodings); matching runs on the windows of the instances, region growing and new
instances on the sparse list of unlabelled foreground pixels
(:mod:`seg_perception.region_growing`), with frame-sized scratch kept between calls.

Thing pixels that end without an instance (foreground segments below the new-instance size
threshold) keep their class in the semantic map but are void in the panoptic map and have no
entry in ``segments``: a panoptic segment of a thing class is an instance, and the paper uses
the threshold "to avoid the instance labeling of small foreground noise segments". PQ
(:class:`~seg_perception.metrics.PanopticQuality`) scores them as void too.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from seg_perception import region_growing
from seg_perception.labels import CITYSCAPES, IGNORE_ID, PANOPTIC_DIVISOR, LabelTable
from seg_perception.panoptic import (  # noqa: F401 - re-exported: fusion's public types
    MAX_INSTANCES,
    Instances,
    PanopticResult,
    colorize_panoptic,
    decode_panoptic,
    encode_panoptic,
)

_Box = tuple[slice, slice]


# ----------------------------------------------------------------------------- shared helpers


def _check_semantic(semantic: np.ndarray) -> np.ndarray:
    sem = np.asarray(semantic)
    if sem.ndim != 2:
        raise ValueError(f"fusion: semantic must be (H, W), got shape {sem.shape}")
    if sem.dtype != np.uint8:
        if not np.issubdtype(sem.dtype, np.integer) or (
            sem.size and (sem.min() < 0 or sem.max() > 255)
        ):
            raise ValueError(f"fusion: semantic must hold trainIds 0..255, got dtype {sem.dtype}")
        sem = sem.astype(np.uint8)
    return np.ascontiguousarray(sem)


def _check_instances(instances: Instances, shape: tuple[int, ...], labels: LabelTable) -> None:
    if instances.masks.shape[1:] != shape:
        raise ValueError(
            f"fusion: instance masks are {instances.masks.shape[1:]}, semantic map is {shape}"
        )
    bad = sorted({int(c) for c in instances.labels if int(c) not in labels.thing_train_ids})
    if bad:
        raise ValueError(
            f"fusion: instance labels {bad} are not thing trainIds of table {labels.name!r} "
            f"(valid: {list(labels.thing_train_ids)})"
        )


def _ranked(instances: Instances, score_threshold: float) -> list[int]:
    """Indices of instances with score >= threshold, strongest first, ties by input order."""
    order = np.argsort(-instances.scores, kind="stable")
    return [int(k) for k in order if instances.scores[k] >= score_threshold]


def _mask_box(mask: np.ndarray, within: _Box | None = None) -> _Box | None:
    """Bounding box of the true pixels of a 2-D bool mask inside the box ``within`` (default:
    the whole mask), as image slices; ``None`` when there are none."""
    ys, xs = within if within is not None else (slice(0, mask.shape[0]), slice(0, mask.shape[1]))
    rows = np.flatnonzero(mask[ys, xs].any(axis=1))
    if rows.size == 0:
        return None
    y0, y1 = ys.start + int(rows[0]), ys.start + int(rows[-1]) + 1
    cols = np.flatnonzero(mask[y0:y1, xs].any(axis=0))
    return slice(y0, y1), slice(xs.start + int(cols[0]), xs.start + int(cols[-1]) + 1)


def _instance_box(instances: Instances, k: int, within: _Box | None) -> _Box | None:
    """Bounding box of instance ``k``'s mask inside ``within``, scanning only the window its
    ``boxes`` hint gives (when the producer supplied one)."""
    mask = instances.masks[k]
    if instances.boxes is not None:
        x0, y0, x1, y1 = (int(v) for v in instances.boxes[k])
        if within is not None:
            y0, y1 = max(y0, within[0].start), min(y1, within[0].stop)
            x0, x1 = max(x0, within[1].start), min(x1, within[1].stop)
        if y1 <= y0 or x1 <= x0:
            return None
        within = (slice(y0, y1), slice(x0, x1))
    return _mask_box(mask, within=within)


def _instance_window(instances: Instances, k: int) -> _Box | None:
    """The window instance ``k``'s ``boxes`` hint gives (clipped to the image), else the
    bounding box of its mask; ``None`` when empty."""
    if instances.boxes is None:
        return _mask_box(instances.masks[k])
    h, w = instances.masks.shape[1:]
    x0, y0, x1, y1 = (int(v) for v in instances.boxes[k])
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    return (slice(y0, y1), slice(x0, x1)) if y1 > y0 and x1 > x0 else None


def _segment(train_id: int, inst: int, area: int, score: float | None, labels: LabelTable) -> dict:
    return {
        "id": train_id * PANOPTIC_DIVISOR + inst,
        "train_id": train_id,
        "instance": inst,
        "is_thing": labels.is_thing(train_id),
        "area": area,
        "score": score,
        "source": "detection" if score is not None else "semantic",
    }


def _finish(
    sem: np.ndarray,
    inst: np.ndarray,
    inst_class: list[int],
    inst_score: list[float | None],
    labels: LabelTable,
    void: np.ndarray | None = None,
) -> PanopticResult:
    """Areas, segments info and the panoptic map from the refined semantic and instance maps.
    ``void``: flat indices of the thing pixels without instance (void in the panoptic map)."""
    n = len(inst_class)
    inst_area = cv2.calcHist([inst], [0], None, [n + 1], [0, n + 1]).ravel().astype(np.int64)
    class_area = cv2.calcHist([sem], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    segments = []
    for i in range(1, n + 1):
        c = inst_class[i - 1]
        class_area[c] -= inst_area[i]
        segments.append(_segment(c, i, int(inst_area[i]), inst_score[i - 1], labels))
    # Pixels of a stuff class form one instance-0 segment per class; thing pixels outside every
    # instance form none (void, see the module docstring).
    for t in np.flatnonzero(class_area[: labels.num_classes] > 0):
        if not labels.is_thing(int(t)):
            segments.append(_segment(int(t), 0, int(class_area[t]), None, labels))
    pan = encode_panoptic(sem, inst)
    if void is not None and len(void):
        pan.ravel()[void] = IGNORE_ID * PANOPTIC_DIVISOR
    return PanopticResult(sem, inst, pan, segments)


# ----------------------------------------------------------------------------- the heuristic


def fuse_heuristic(
    semantic: np.ndarray,
    instances: Instances,
    *,
    labels: LabelTable = CITYSCAPES,
    score_threshold: float = 0.5,
    min_new_instance_area: int = 2048,
    connectivity: int = 4,
) -> PanopticResult:
    """The output fusion of the ASP paper (section IV), step by step.

    Args:
        semantic: ``(H, W)`` uint8 trainIds from the semantic head.
        instances: detections; masks ``(K, H, W)``.
        labels: label table giving each trainId its category and thing flag.
        score_threshold: detections with a lower score are ignored.
        min_new_instance_area: a connected segment of one thing class that no detection reaches
            becomes a new instance when it has at least this many pixels; smaller ones keep
            their class in the semantic map, have no instance and are void in the panoptic map
            and segments (paper: "A threshold has to be employed for the segment size in order
            to avoid the instance labeling of small foreground noise segments"; it gives no
            value, 2048 px is 0.1 % of a 1024x2048 frame).
        connectivity: 4 or 8, the pixel neighbourhood of region growing.

    Returns:
        :class:`PanopticResult`; detection instances are numbered 1..D by descending score,
        new instances D+1..N in raster order of their first pixel.
    """
    sem_in = _check_semantic(semantic)
    _check_instances(instances, sem_in.shape, labels)
    if connectivity not in (4, 8):
        raise ValueError(f"fuse_heuristic: connectivity must be 4 or 8, got {connectivity}")
    h, w = sem_in.shape
    things = list(labels.thing_train_ids)
    cats = sorted({labels.train_category[t] for t in things})
    cat_lut = np.zeros(256, np.uint8)  # trainId -> thing category 1.. (0: background)
    for t in things:
        cat_lut[t] = cats.index(labels.train_category[t]) + 1

    # Step 1, "we divide the pixels into foreground and background based on the results from
    # semantic segmentation": the foreground pixels not yet in an instance (matching clears
    # the pixels it labels).
    unl = _in_classes(sem_in, things)
    # With several categories, matching compares them inside each window: by a range test
    # when each category's classes are consecutive trainIds, else by table.
    span: dict[int, tuple[np.uint8, np.uint8, bool]] = {}  # category -> (first, extent, dense)
    if len(cats) > 1:
        for k in range(1, len(cats) + 1):
            ids = np.flatnonzero(cat_lut == k)
            extent = int(ids[-1] - ids[0])
            span[k] = (np.uint8(ids[0]), np.uint8(extent), len(ids) == extent + 1)
    # Step 2, background pixels keep their semantic class: start from a copy of the input.
    sem = sem_in.copy()
    inst = np.zeros((h, w), np.uint16)

    # Step 3, matching: a mask pixel keeps the detection's class and id only where the class's
    # category is the pixel's semantic category. The paper says both "retained only if it is
    # consistent with the semantic category of that pixel" and "pixels that correspond to
    # background pixels or to a different semantic subcategory are deleted"; we follow the
    # first (and Fig. 2: "matched ... only if the object class is compatible with the semantic
    # category"), so a car mask keeps the pixels the semantic map called truck and makes them
    # car. Where masks overlap (the paper does not say who wins) we follow the second sentence
    # as far as it goes without deleting: a detection of the pixel's own subcategory takes it
    # first (pass 1), then one of its category (pass 2); within a pass the stronger detection
    # does. So a coarse train mask spilling onto a detected car leaves the car its pixels.
    ranked = _ranked(instances, score_threshold)
    windows = {i: _instance_window(instances, i) for i in ranked}
    # A detection whose window meets no other's competes for no pixel: one pass of the
    # category test gives it what the two passes would.
    alone = _alone(windows)
    order: dict[int, int] = {}  # detection -> instance id, in the order of first kept pixel
    for same_class in (True, False):
        for i in ranked:
            box = windows[i]
            if box is None or (alone[i] and not same_class):
                continue  # an alone detection took all it could in pass 1
            if i not in order and len(order) >= MAX_INSTANCES:
                continue
            c = int(instances.labels[i])
            free = unl[box]
            keep = instances.masks[i][box] & free
            if same_class and not alone[i]:
                keep &= sem_in[box] == c
            elif span:
                first, extent, dense = span[cat_lut[c]]
                if dense:
                    keep &= np.subtract(sem_in[box], first) <= extent
                else:
                    keep &= cv2.LUT(sem_in[box], cat_lut) == cat_lut[c]
            if not keep.any():
                continue  # no pixel (left) for it: no instance from this pass
            k = order.setdefault(i, len(order) + 1)
            # Masked writes by arithmetic (several times faster than masked copies): the kept
            # pixels are free and hold instance 0 until now.
            np.add(inst[box], keep.view(np.uint8) * np.uint16(k), out=inst[box])
            np.not_equal(free, keep, out=free)
            np.putmask(sem[box], keep, c)
    # Instances numbered by descending score (region growing breaks ties by that order).
    rank = {i: r for r, i in enumerate(ranked)}
    by_score = sorted(order, key=rank.__getitem__)
    if by_score != list(order):
        renumber = np.zeros(len(order) + 1, np.uint16)
        renumber[[order[i] for i in by_score]] = np.arange(1, len(order) + 1)
        inst = renumber[inst]
    inst_class = [int(instances.labels[i]) for i in by_score]
    inst_score: list[float | None] = [float(instances.scores[i]) for i in by_score]

    # Steps 4 and 5 on the sparse list of unlabelled foreground pixels (see
    # seg_perception.region_growing for the sentences followed).
    idx = np.flatnonzero(unl)
    group = cat_lut.take(sem_in.ravel().take(idx))
    inst_f, sem_f = inst.ravel(), sem.ravel()
    inst_cat = cat_lut.take(np.array([0, *inst_class], np.int64))
    owner = region_growing.grow(idx, group, inst_f, inst_cat, (h, w), connectivity)
    g = np.flatnonzero(owner)
    inst_f[idx.take(g)] = owner.take(g)
    # "all pixels of an object receive a unique class label": the instance's (refined map).
    sem_f[idx.take(g)] = np.array([0, *inst_class], np.uint8).take(owner.take(g))
    isolated = idx[owner == 0]
    new = np.zeros(len(isolated), bool)
    for seg in region_growing.isolated_segments(
        isolated, sem_f, w, min_new_instance_area, connectivity
    ):
        if len(inst_class) >= MAX_INSTANCES:
            break
        inst_class.append(int(sem_f[isolated[seg[0]]]))
        inst_score.append(None)
        inst_f[isolated.take(seg)] = len(inst_class)
        new[seg] = True
    # Thing pixels left without instance are void in the panoptic map.
    return _finish(sem, inst, inst_class, inst_score, labels, void=isolated[~new])


def _alone(windows: dict[int, _Box | None]) -> dict[int, bool]:
    """For each detection, whether its window meets no other detection's window."""
    ids = [i for i, w in windows.items() if w is not None]
    alone = dict.fromkeys(windows, True)
    if len(ids) > 1:
        y0, y1, x0, x1 = np.array(
            [(w[0].start, w[0].stop, w[1].start, w[1].stop) for w in map(windows.get, ids)]
        ).T
        meets = (y0[:, None] < y1) & (y0 < y1[:, None]) & (x0[:, None] < x1) & (x0 < x1[:, None])
        np.fill_diagonal(meets, False)
        alone.update(zip(ids, (~meets.any(axis=1)).tolist(), strict=True))
    return alone


def _in_classes(sem: np.ndarray, ids: list[int]) -> np.ndarray:
    """``(H, W)`` bool work buffer: pixels whose trainId is one of ``ids`` (one range test when
    they are consecutive, as the thing classes of Cityscapes are)."""
    out = region_growing.work_buffer("fusion_unl", sem.shape, np.bool_)
    if not ids:
        out.fill(False)
        return out
    lo, hi = min(ids), max(ids)
    if hi - lo + 1 == len(ids):
        tmp = region_growing.work_buffer("fusion_u8", sem.shape, np.uint8)
        np.subtract(sem, np.uint8(lo), out=tmp)
        return np.less_equal(tmp, np.uint8(hi - lo), out=out)
    lut = np.zeros(256, np.uint8)
    lut[ids] = 1
    return cv2.LUT(sem, lut, dst=out.view(np.uint8)).view(np.bool_)


# ----------------------------------------------------------------------------- the baseline


def fuse_baseline(
    semantic: np.ndarray,
    instances: Instances,
    *,
    labels: LabelTable = CITYSCAPES,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
    stuff_area_threshold: int = 4096,
) -> PanopticResult:
    """Kirillov et al.'s baseline, as in panopticapi / detectron2.

    Detections by descending score; one whose mask overlaps already placed instances by more than
    ``overlap_threshold`` of its area is skipped, otherwise it takes its free pixels. Remaining
    pixels take their semantic class if it is a stuff class whose remaining area is at least
    ``stuff_area_threshold``; everything else (uncovered thing pixels, small stuff) is void (255).
    """
    sem_in = _check_semantic(semantic)
    _check_instances(instances, sem_in.shape, labels)
    inst = np.zeros(sem_in.shape, np.uint16)
    thing_sem = np.full(sem_in.shape, IGNORE_ID, np.uint8)
    inst_class: list[int] = []
    inst_score: list[float | None] = []
    for k in _ranked(instances, score_threshold):
        if len(inst_class) >= MAX_INSTANCES:
            break
        mask = instances.masks[k]
        box = _instance_box(instances, k, None)
        if box is None:
            continue
        m = mask[box]
        free = inst[box] == 0
        area = int(np.count_nonzero(m))
        keep = m & free
        kept = int(np.count_nonzero(keep))
        if kept == 0 or (area - kept) / area > overlap_threshold:
            continue
        inst_class.append(int(instances.labels[k]))
        inst_score.append(float(instances.scores[k]))
        np.copyto(inst[box], len(inst_class), where=keep)
        np.copyto(thing_sem[box], inst_class[-1], where=keep)

    free = inst == 0
    hist = cv2.calcHist([sem_in], [0], free.view(np.uint8), [256], [0, 256]).ravel()
    keep_lut = np.full(256, IGNORE_ID, np.uint8)
    for c in range(labels.num_classes):
        if not labels.is_thing(c) and hist[c] >= stuff_area_threshold:
            keep_lut[c] = c
    sem = np.where(free, cv2.LUT(sem_in, keep_lut), thing_sem)
    return _finish(sem, inst, inst_class, inst_score, labels)


# ----------------------------------------------------------------------------- dispatch

FUSION_METHODS: dict[str, Callable[..., PanopticResult]] = {
    "heuristic": fuse_heuristic,
    "baseline": fuse_baseline,
}


def fusion_method(method: str, **options: Any) -> Callable[..., PanopticResult]:
    """The fusion method named ``method`` (``"heuristic"`` or ``"baseline"``) with its keyword
    ``options`` bound, checked once: call it per frame as ``f(semantic, instances)``. An unknown
    method or option is a ``ValueError`` listing the valid ones."""
    try:
        fn = FUSION_METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown fusion method {method!r}; valid: {', '.join(sorted(FUSION_METHODS))}"
        ) from None
    params = list(inspect.signature(fn).parameters)[2:]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"fusion method {method!r}: unknown option(s) {unknown}; valid: {', '.join(params)}"
        )
    return functools.partial(fn, **options)


def fuse(method: str, semantic: np.ndarray, instances: Instances, **kwargs: Any) -> PanopticResult:
    """Run the fusion method named ``method`` once (see :func:`fusion_method`)."""
    return fusion_method(method, **kwargs)(semantic, instances)
