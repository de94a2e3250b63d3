"""Seeded synthetic driving-camera frames with exact semantic and instance ground truth.

Frame ``index`` of sequence ``seed`` is a pure function of ``(seed, index, height, width)``: the
scene (street layout, objects, colours) is drawn from a generator seeded with ``(seed, index)`` only
and described in metres, so the same scene appears at every resolution; only the pixel-level
texture and noise depend on the size too.

Scene content: a perspective street (lanes, markings, curbs, sidewalks with tiles, grass), roadside
blocks (buildings with windows, walls, fences, hedges, trees), a far skyline under the sky, poles
with street lamps, traffic signs and traffic lights, and instances of every Cityscapes thing class
placed on the ground plane from about 5 m to 110 m away, painted far to near so near objects
occlude far ones. Lighting (brightness, colour cast, cast shadows), blur and noise touch the image
only. Thing classes follow a schedule: frame ``i`` always shows ``THING_CLASSES[i % 8]`` and
``THING_CLASSES[(i + 4) % 8]`` with a clear view, so any 8 consecutive frames show all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..labels import CITYSCAPES, LabelTable
from .synth_canvas import Camera, Canvas
from .synth_people import draw_person, draw_two_wheeler
from .synth_scenery import (
    Street,
    paint_block,
    paint_building,
    paint_ego_hood,
    paint_ground,
    paint_pole,
    paint_sky_and_skyline,
    paint_tree,
    sample_street,
)
from .synth_things import Thing, draw_vehicle, sample_thing

THING_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
STUFF_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
)
_EXTRA_WEIGHTS = (0.26, 0.1, 0.34, 0.07, 0.05, 0.03, 0.06, 0.09)  # per THING_CLASSES entry
_REF_W = 2048.0  # reference width for size-independent visibility decisions


@dataclass
class SynthFrame:
    """One synthetic frame.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB camera image.
        semantic: ``(H, W)`` uint8 trainIds (255 = void: only an optional ego-vehicle bonnet).
        instance: ``(H, W)`` int32 Cityscapes instanceIds (thing pixels ``labelId * 1000 + k``,
            ``k = 0, 1, ...`` per class; other pixels their labelId).
        label_ids: ``(H, W)`` uint8 Cityscapes labelIds.
        index: frame index within its sequence.
    """

    image: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    label_ids: np.ndarray
    index: int


def _label_ids(labels: LabelTable) -> dict[str, int]:
    ids, missing = {}, []
    for name in STUFF_CLASSES + THING_CLASSES:
        try:
            ids[name] = labels.label(name).id
        except KeyError:
            missing.append(name)
    if missing:
        raise ValueError(
            f"label table {labels.name!r} lacks classes the synthetic scenes draw: {missing}"
        )
    try:
        ids["ego vehicle"] = labels.label("ego vehicle").id
    except KeyError:
        ids["ego vehicle"] = -1  # no bonnet without a void label for it
    return ids


# -- layout -------------------------------------------------------------------------------------
def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _pose(rng: np.random.Generator, st: Street, t: Thing, near: bool) -> None:
    """Set position and heading of ``t`` on the ground plane (a lane, a curb or a sidewalk)."""
    side = 1 if rng.random() < 0.5 else -1
    small = t.kind in ("person", "bicycle", "motorcycle")
    z_lo, z_hi = (
        ((6.0, 28.0) if small else (9.0, 40.0))
        if near
        else ((5.0, 70.0) if small else (7.0, 110.0))
    )
    z = _loguniform(rng, z_lo, z_hi)
    lane = int(rng.integers(st.lanes))
    lane_dir = math.pi if lane < st.oncoming else 0.0
    side_dir = math.pi if side < 0 and st.oncoming > 0 else 0.0
    u = rng.random()
    if t.kind == "person":
        if u < 0.7:  # on a sidewalk
            i = 1 if side > 0 else 0
            x = st.curb(side) + side * float(rng.uniform(0.4, st.sw[i] - 0.4))
            heading = (0.0 if rng.random() < 0.5 else math.pi) + float(rng.normal(0, 0.15))
        else:  # crossing the road
            x = float(rng.uniform(st.x_left + 0.5, st.x_right - 0.5))
            heading = side * math.pi / 2 + float(rng.normal(0, 0.15))
    elif t.kind in ("bicycle", "motorcycle") and t.rider is None:  # parked on the sidewalk
        x = st.curb(side) + side * float(rng.uniform(0.6, 1.2))
        heading = (side * math.pi / 2 if rng.random() < 0.6 else 0.0) + float(rng.normal(0, 0.25))
    elif t.kind in ("bicycle", "motorcycle"):  # ridden
        if u < 0.6:
            x, heading = st.curb(side) - side * 0.9, side_dir
        elif u < 0.85:
            x, heading = st.lane_x(lane) + float(rng.normal(0, 0.4)), lane_dir
        else:
            x, heading = float(rng.uniform(st.x_left + 1, st.x_right - 1)), side * math.pi / 2
        heading += float(rng.normal(0, 0.08))
    elif t.kind in ("car", "bus") and u < 0.3:  # parked / at a stop by the curb
        x, heading = st.curb(side) - side * (t.width / 2 + 0.25), side_dir
    else:
        x, heading = (
            st.lane_x(lane) + float(rng.normal(0, 0.2)),
            lane_dir + float(rng.normal(0, 0.03)),
        )
    if t.kind == "train":
        x, heading = st.lane_x(lane), lane_dir
    t.x, t.heading = float(x), float(heading)
    t.z = float(z + (t.length / 2 if t.kind in ("train", "bus", "truck") else 0.0))


def _bbox(t: Thing, cam: Camera) -> tuple[float, float, float, float]:
    h = t.height + (t.rider.height * 0.75 if t.rider is not None else 0.0)
    corners = [(x, y, z) for x, z in t.footprint() for y in (0.0, h)]
    uv = cam.project(np.array(corners))
    u0, v0 = uv.min(0)
    u1, v1 = uv.max(0)
    return float(u0), float(v0), float(u1), float(v1)


def _visible_fraction(b: tuple[float, float, float, float], size: tuple[float, float]) -> float:
    w, h = size
    iw = max(0.0, min(b[2], w) - max(b[0], 0.0))
    ih = max(0.0, min(b[3], h) - max(b[1], 0.0))
    return iw * ih / max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)


def _overlap(a, b) -> float:
    """Area of ``a`` inside ``b`` over the area of ``b``."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)


def _collides(t: Thing, others: list[Thing]) -> bool:
    a = t.footprint()
    for o in others:
        b = o.footprint()
        if (
            a[:, 0].min() < b[:, 0].max() + 0.3
            and b[:, 0].min() < a[:, 0].max() + 0.3
            and a[:, 1].min() < b[:, 1].max() + 0.5
            and b[:, 1].min() < a[:, 1].max() + 0.5
        ):
            return True
    return False


def _place_things(
    rng: np.random.Generator, st: Street, index: int, n: int, aspect: float
) -> list[Thing]:
    size = (_REF_W, _REF_W * aspect)
    cam = Camera(st.f_rel * size[0], size[0] / 2, st.horizon_rel * size[1], st.cam_h, st.bend)
    guaranteed = [THING_CLASSES[index % 8], THING_CLASSES[(index + 4) % 8]][: max(n, 0)]
    extra = rng.choice(len(THING_CLASSES), size=max(n - len(guaranteed), 0), p=_EXTRA_WEIGHTS)
    kinds = guaranteed + [THING_CLASSES[int(k)] for k in extra]
    placed: list[Thing] = []
    boxes: list[tuple[float, float, float, float]] = []
    for j, kind in enumerate(kinds):
        near = j < len(guaranteed)
        for _ in range(12):
            if kind == "rider":
                t = sample_thing(rng, "bicycle" if rng.random() < 0.6 else "motorcycle")
                t.rider = sample_thing(rng, "person")
            else:
                t = sample_thing(rng, kind)
                if kind in ("bicycle", "motorcycle") and rng.random() < 0.35:
                    t.rider = sample_thing(rng, "person")
            _pose(rng, st, t, near)
            b = _bbox(t, cam)
            if _collides(t, placed) or _visible_fraction(b, size) < (0.6 if near else 0.15):
                continue
            placed.append(t)
            boxes.append(b)
            break
        else:
            if near:  # keep the schedule: drop the constraint on collisions, keep the view
                placed.append(t)
                boxes.append(_bbox(t, cam))
    n_g = min(len(guaranteed), len(placed))
    keep = [True] * len(placed)
    for g in range(n_g):  # nothing nearer may hide much of a scheduled thing
        for o in range(g + 1, len(placed)):  # the first scheduled class has priority
            nearer = placed[o].depth() < placed[g].depth()
            if keep[o] and nearer and _overlap(boxes[o], boxes[g]) > 0.3:
                keep[o] = False
    return [t for t, k in zip(placed, keep, strict=True) if k]


def _roadside(rng: np.random.Generator, st: Street) -> list[tuple[int, str, float, float, float]]:
    """Blocks ``(side, kind, z0, z1, height)`` along both facade lines; a wall and a fence always
    start soon after their facade line enters the view."""
    forced = {}  # (side, kind) -> start distance where that facade line is inside the view
    for kind in ("wall", "fence"):
        side = 1 if rng.random() < 0.5 else -1
        forced[(side, kind)] = 2.2 * abs(st.facade(side)) * st.f_rel + float(rng.uniform(0, 15))
    kinds = ("building", "wall", "fence", "hedge", "open")
    blocks = []
    for side in (-1, 1):
        z = float(rng.uniform(0.5, 4.0))
        while z < st.z_end * 0.85:
            kind = str(rng.choice(kinds, p=(0.5, 0.12, 0.12, 0.14, 0.12)))
            length = float(rng.uniform(10, 40) if kind == "building" else rng.uniform(6, 22))
            for key, zf in list(forced.items()):
                if key[0] == side and z >= zf:
                    kind, length = key[1], float(rng.uniform(10, 20))
                    del forced[key]
                    break
            h = float(rng.uniform(6, 24))
            blocks.append((side, kind, z, z + length, h))
            z += length + (float(rng.uniform(0.5, 6)) if rng.random() < 0.3 else 0.0)
    return blocks


def _furniture(rng: np.random.Generator, st: Street) -> list[tuple[int, str, float, float]]:
    """Poles ``(side, kind, x, z)`` along both curbs; a sign and a light always within 10-40 m."""
    out = []
    for side in (-1, 1):
        z = float(rng.uniform(3, 15))
        while z < 150:
            kind = str(rng.choice(("lamp", "sign", "light", "overhead"), p=(0.35, 0.35, 0.2, 0.1)))
            out.append((side, kind, st.curb(side) + side * 0.45, z))
            z += float(rng.uniform(12, 30))
    for kind, lo in (("sign", 10.0), ("light", 15.0)):
        side = 1 if rng.random() < 0.6 else -1
        out.append((side, kind, st.curb(side) + side * 0.45, float(rng.uniform(lo, 40.0))))
    return out


def _draw_thing(cv: Canvas, rng: np.random.Generator, ids: dict[str, int], t: Thing) -> None:
    footprint = np.array([(x, 0.0, z) for x, z in t.footprint()])
    cv.shadow([footprint], float(rng.uniform(0.45, 0.7)))  # contact shadow on the ground
    if t.kind == "person":
        draw_person(cv, t, ids["person"])
    elif t.kind in ("bicycle", "motorcycle"):
        draw_two_wheeler(cv, t, ids[t.kind], ids["rider"])
    else:
        draw_vehicle(cv, t, ids[t.kind])


# -- public API -----------------------------------------------------------------------------------
def generate_frame(
    *,
    seed: int,
    index: int,
    height: int = 1024,
    width: int = 2048,
    labels: LabelTable = CITYSCAPES,
    num_objects: tuple[int, int] = (4, 14),
) -> SynthFrame:
    """Frame ``index`` of the synthetic sequence ``seed`` (see the module docstring).

    Args:
        seed, index: non-negative integers; the frame is a pure function of them and the size.
        height, width: image size in pixels (at least 16 each; any aspect ratio).
        labels: label table providing the labelIds/trainIds of the drawn Cityscapes classes.
        num_objects: inclusive range of the number of things (a rider and its two-wheeler count
            once); the two scheduled thing classes are part of it.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    if height < 16 or width < 16:
        raise ValueError(f"frame size must be at least 16x16, got {height}x{width}")
    lo, hi = num_objects
    if not 0 <= lo <= hi:
        raise ValueError(f"num_objects must be (lo, hi) with 0 <= lo <= hi, got {num_objects}")
    ids = _label_ids(labels)
    rng = np.random.default_rng([int(seed), int(index), 0x5C3E])
    st = sample_street(rng)
    things = _place_things(rng, st, index, int(rng.integers(lo, hi + 1)), height / width)
    blocks = _roadside(rng, st)
    poles = _furniture(rng, st)
    trees: list[tuple[float, float]] = []
    for side, i in ((-1, 0), (1, 1)):
        if st.grass[i] > 1.5:
            zs = np.arange(float(rng.uniform(4, 12)), 120.0, float(rng.uniform(8, 16)))
            trees += [(st.curb(side) + side * (st.sw[i] + st.grass[i] / 2), float(z)) for z in zs]
    overcast = rng.random() < 0.35
    sun_side = 0 if overcast or rng.random() < 0.25 else (1 if rng.random() < 0.5 else -1)
    gain = float(rng.uniform(0.65, 1.25)) * (1.0 + rng.normal(0.0, 0.05, 3))
    blur = float(rng.uniform(0.0, 1.3)) if rng.random() < 0.6 else 0.0
    noise = float(rng.uniform(1.0, 6.0))
    hood = ids["ego vehicle"] >= 0 and rng.random() < 0.25

    cam = Camera(st.f_rel * width, width / 2, st.horizon_rel * height, st.cam_h, st.bend)
    cv = Canvas(height, width, cam)
    paint_sky_and_skyline(cv, rng, st, ids, overcast)
    paint_ground(cv, rng, st, ids, [t.x for t in things if t.kind == "train"])
    if sun_side:
        for side, kind, z0, z1, h in blocks:
            if side == sun_side and kind == "building":
                xf, d = st.facade(side), min(0.6 * h, 14.0)
                shadow = [
                    (xf, 0, z0),
                    (xf, 0, z1),
                    (xf - side * d, 0, z1 + 0.3 * d),
                    (xf - side * d, 0, z0 + 0.3 * d),
                ]
                cv.shadow([np.array(shadow, dtype=float)], float(rng.uniform(0.5, 0.7)))
    for side, kind, z0, z1, h in sorted(blocks, key=lambda b: -b[2]):
        if kind == "building":
            paint_building(cv, rng, ids, st.facade(side), z0, z1, side, h)
        else:
            paint_block(cv, rng, st, ids, side, kind, z0, z1)
    items: list[tuple[float, int, Callable[[], None]]] = []  # painter's order: far to near
    for k, t in enumerate(things):
        items.append((t.depth(), k, partial(_draw_thing, cv, rng, ids, t)))
    for k, (side, kind, x, z) in enumerate(poles):
        items.append(
            (math.hypot(x, z), 1000 + k, partial(paint_pole, cv, rng, ids, x, z, side, kind))
        )
    for k, (x, z) in enumerate(trees):
        items.append((math.hypot(x, z), 2000 + k, partial(paint_tree, cv, rng, ids, x, z)))
    for _, _, draw in sorted(items, key=lambda e: (-e[0], e[1])):
        draw()
    if hood:
        paint_ego_hood(cv, rng, ids["ego vehicle"])

    things_ids = {lab.id for lab in labels.labels if lab.has_instances}
    semantic, instance, label_ids = cv.ground_truth(labels.label_to_train, things_ids)
    pix_rng = np.random.default_rng([int(seed), int(index), height, width, 0x1A6E])
    image = cv.render(pix_rng, gain=gain, blur_sigma=blur * width / 2048.0, noise=noise)
    return SynthFrame(image, semantic, instance, label_ids, int(index))


def generate_frames(
    n: int,
    *,
    seed: int,
    height: int = 1024,
    width: int = 2048,
    start: int = 0,
    labels: LabelTable = CITYSCAPES,
    num_objects: tuple[int, int] = (4, 14),
) -> Iterator[SynthFrame]:
    """Frames ``start .. start + n - 1`` of sequence ``seed``, lazily."""
    if n < 0:
        raise ValueError(f"number of frames must be >= 0, got {n}")
    for i in range(start, start + n):
        yield generate_frame(
            seed=seed, index=i, height=height, width=width, labels=labels, num_objects=num_objects
        )
