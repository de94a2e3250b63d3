"""``seg-perception bench fusion``: the fusion heuristic against the simple baseline.

Inputs are made from the synthetic generator's exact ground truth at 1024x2048 by seeded
corruptions that mimic the failure modes of the fusion paper's Fig. 2:

* semantic map: sub-category confusion inside objects (car <-> truck <-> bus, person <-> rider)
  over a part of the object, ragged boundaries, spurious small thing segments on the background;
* instances: masks shifted, cropped to their box and coarsened to 28x28 before being pasted back
  (what Mask R-CNN's mask head does), missed detections, and the detection's class right (the
  detector classifies an object as a whole, as the paper says) with a score in [0.6, 1].

For each instance count it reports the time per frame of both fusions (they take turns at
running first on a fresh frame, which pays for bringing it into the caches) and mIoU / PQ of the
raw semantic input, the baseline and the heuristic, all against the ground truth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from seg_perception.fusion import fuse_baseline, fuse_heuristic
from seg_perception.labels import CITYSCAPES, PANOPTIC_DIVISOR, LabelTable
from seg_perception.machine import machine_header, machine_record
from seg_perception.metrics import PanopticQuality, SemanticMetrics
from seg_perception.panoptic import (
    Instances,
    encode_panoptic,
    gt_panoptic,
    mask_bounds,
    paste_masks,
)

# sub-category confusions of the paper's Fig. 2 (pixel classifiers mix these up inside objects)
CONFUSIONS = {
    "car": ("truck", "bus"),
    "truck": ("car", "bus"),
    "bus": ("truck", "train"),
    "train": ("bus",),
    "person": ("rider",),
    "rider": ("person",),
    "motorcycle": ("bicycle",),
    "bicycle": ("motorcycle",),
}


@dataclass
class Corrupted:
    semantic: np.ndarray  # (H, W) uint8 corrupted semantic map
    instances: Instances  # corrupted detections
    gt_panoptic: np.ndarray  # (H, W) int32, void = 255 * 1000


def corrupt(
    semantic: np.ndarray,
    instance_ids: np.ndarray,
    *,
    seed: int,
    labels: LabelTable = CITYSCAPES,
    miss_rate: float = 0.15,
) -> Corrupted:
    """Seeded Fig.-2-style corruption of a ground-truth frame (see the module docstring)."""
    rng = np.random.default_rng(seed)
    h, w = semantic.shape
    gt = gt_panoptic(semantic, instance_ids, labels)
    ids = np.unique(gt[gt % PANOPTIC_DIVISOR > 0])
    ids = ids[np.argsort(ids % PANOPTIC_DIVISOR, kind="stable")]  # k: instanceId order
    things = [(gt == i, int(i) // PANOPTIC_DIVISOR) for i in ids]
    sem = semantic.copy()
    masks, cls, scores, windows = [], [], [], []
    for mask, train_id in things:
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        name = labels.train_names[train_id]
        # semantic: part of the object (a random side of a random split) gets a sibling class
        if name in CONFUSIONS and rng.random() < 0.6:
            wrong = labels.train_id(str(rng.choice(CONFUSIONS[name])))
            frac = rng.uniform(0.25, 0.75)
            if rng.random() < 0.5:
                cut = x0 + int((x1 - x0) * frac)
                part = mask & (np.arange(w)[None, :] < cut)
            else:
                cut = y0 + int((y1 - y0) * frac)
                part = mask & (np.arange(h)[:, None] >= cut)
            sem[part] = wrong
        if rng.random() < miss_rate or mask.sum() < 16:
            continue  # missed detection
        # instance: the mask head's view: box crop, 28x28, shifted by a few pixels, pasted back
        crop = mask[y0:y1, x0:x1].astype(np.float32)
        low = cv2.resize(crop, (28, 28), interpolation=cv2.INTER_AREA)
        dx, dy = rng.integers(-3, 4, size=2)
        box = np.array([[x0 + dx, y0 + dy, x1 + dx, y1 + dy]], dtype=np.float64)
        masks.append(paste_masks(low[None], box, h, w)[0])
        windows.append(mask_bounds(box, h, w)[0])
        cls.append(train_id)
        scores.append(rng.uniform(0.6, 1.0))
    # ragged boundaries: flip a thin band of pixels to the neighbouring label
    edges = cv2.morphologyEx(sem, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    band = edges & (rng.random(sem.shape) < 0.5)
    dilated = cv2.dilate(sem, np.ones((3, 3), np.uint8))
    sem[band] = dilated[band]
    # spurious small thing segments on the background
    for _ in range(int(rng.integers(5, 15))):
        cy, cx, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(3, 10))
        if semantic[cy, cx] not in labels.thing_train_ids:
            cv2.circle(sem, (cx, cy), r, int(rng.choice(labels.thing_train_ids)), -1)
    if masks:
        inst = Instances(
            np.stack(masks),
            np.array(cls),
            np.array(scores, dtype=np.float32),
            boxes=np.stack(windows),
        )
    else:
        inst = Instances.empty(h, w)
    return Corrupted(sem, inst, gt)


def raw_panoptic(semantic: np.ndarray, labels: LabelTable = CITYSCAPES) -> np.ndarray:
    """Panoptic reading of a semantic map alone: each connected thing segment is an instance."""
    instance = np.zeros(semantic.shape, np.uint16)
    next_id = 1
    for t in labels.thing_train_ids:
        n, comp = cv2.connectedComponents((semantic == t).astype(np.uint8), connectivity=4)
        if n > 1:
            instance[comp > 0] = comp[comp > 0] + next_id - 1
            next_id += n - 1
    return encode_panoptic(semantic, instance)


def frames_with_instances(
    target: int, count: int, *, height: int, width: int, seed: int = 0, tolerance: float = 0.25
):
    """Synthetic frames whose ground truth has ``target`` +- ``tolerance`` visible instances."""
    from seg_perception.data.synth import generate_frame

    found, index = 0, 0
    objects = max(1, int(target * 2.4)) if target > 10 else target
    while found < count and index < 400:
        f = generate_frame(
            seed=seed + target,
            index=index,
            height=height,
            width=width,
            num_objects=(objects, objects),
        )
        index += 1
        n = len(np.unique(f.instance[f.instance >= 1000]))
        if abs(n - target) <= max(1, tolerance * target):
            found += 1
            yield f


def _timed(fuse, c: Corrupted):
    """(result, ms) of one fusion of the corrupted frame ``c``."""
    t0 = time.perf_counter()
    out = fuse(c.semantic, c.instances)
    return out, (time.perf_counter() - t0) * 1e3


def run_fusion_bench(
    counts=(5, 20, 50),
    frames: int = 10,
    height: int = 1024,
    width: int = 2048,
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    result: dict = {
        "fusion_ms": {},
        "baseline_ms": {},
        "miou": {},
        "pq": {},
        "instances": {},
        "frames": frames,
        "size": [height, width],
        "machine": machine_record(),
    }
    for n in counts:
        sem_m = {k: SemanticMetrics(labels=CITYSCAPES) for k in ("raw", "baseline", "fusion")}
        pq_m = {k: PanopticQuality(labels=CITYSCAPES) for k in ("raw", "baseline", "fusion")}
        t_fusion, t_base, n_inst = [], [], []
        gen = frames_with_instances(n, frames, height=height, width=width)
        for i, f in enumerate(
            tqdm(gen, total=frames, desc=f"fusion bench {n} inst", disable=not progress)
        ):
            c = corrupt(f.semantic, f.instance, seed=1000 * n + i)
            n_inst.append(len(np.unique(f.instance[f.instance >= 1000])))
            # The method that touches a fresh frame first pays for bringing it into the
            # caches: the two take turns at going first.
            if i % 2 == 0:
                (fused, tf), (base, tb) = _timed(fuse_heuristic, c), _timed(fuse_baseline, c)
            else:
                (base, tb), (fused, tf) = _timed(fuse_baseline, c), _timed(fuse_heuristic, c)
            t_fusion.append(tf)
            t_base.append(tb)
            outs = {
                "raw": (c.semantic, raw_panoptic(c.semantic)),
                "baseline": (base.semantic, base.panoptic),
                "fusion": (fused.semantic, fused.panoptic),
            }
            for k, (s, p) in outs.items():
                sem_m[k].update(s, f.semantic)
                pq_m[k].update(p, c.gt_panoptic)
        key = str(n)
        result["fusion_ms"][key] = float(np.median(t_fusion))
        result["baseline_ms"][key] = float(np.median(t_base))
        result["instances"][key] = float(np.mean(n_inst))
        result["miou"][key] = {k: float(m.compute()["miou"]) for k, m in sem_m.items()}
        result["pq"][key] = {k: float(m.compute()["all"]["pq"]) for k, m in pq_m.items()}
    return result


def print_fusion_table(r: dict) -> None:
    print(machine_header())
    print(
        f"fusion at {r['size'][0]}x{r['size'][1]}, {r['frames']} frames per count "
        "(median time per frame; mIoU / PQ in %)"
    )
    print(
        "| instances (mean) | fusion ms | baseline ms | mIoU raw | mIoU base | mIoU fusion "
        "| PQ raw | PQ base | PQ fusion |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key in r["fusion_ms"]:
        m, p = r["miou"][key], r["pq"][key]
        print(
            f"| {key} ({r['instances'][key]:.1f}) | {r['fusion_ms'][key]:.1f} | "
            f"{r['baseline_ms'][key]:.1f} | {100 * m['raw']:.1f} | {100 * m['baseline']:.1f} | "
            f"{100 * m['fusion']:.1f} | {100 * p['raw']:.1f} | {100 * p['baseline']:.1f} | "
            f"{100 * p['fusion']:.1f} |"
        )
