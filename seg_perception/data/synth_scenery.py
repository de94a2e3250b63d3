"""Stuff of the synthetic street scenes: street layout, ground, roadside blocks, street furniture.

The street runs along ``+Z``: lanes of road between two curbs, sidewalks, optional grass strips,
then a line of roadside blocks on each side (buildings with windows, walls, fences, hedges, open
ground), a far skyline, and sky. Poles carry street lamps, traffic signs and traffic lights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .synth_canvas import Canvas, circle2, rect2

Ids = dict[str, int]

BUILDING_COLORS = (
    (190, 170, 140),
    (150, 140, 130),
    (165, 90, 70),
    (220, 215, 200),
    (120, 110, 100),
    (200, 190, 160),
    (175, 180, 185),
)
SIDEWALK_COLORS = ((150, 148, 145), (160, 122, 112), (178, 168, 148), (128, 128, 132))
VEG_COLORS = ((60, 95, 40), (45, 80, 35), (80, 110, 45), (55, 90, 60))
TERRAIN_COLORS = ((130, 145, 80), (145, 125, 90), (115, 135, 70), (160, 150, 100))


@dataclass
class Street:
    """Layout of one frame's street, in metres relative to the camera."""

    cam_h: float
    f_rel: float  # focal length / image width
    horizon_rel: float  # horizon row / image height
    bend: float
    lanes: int
    lane_w: float
    ego: int
    oncoming: int  # lanes 0..oncoming-1 carry oncoming traffic
    sw: tuple[float, float]  # sidewalk widths (left, right)
    grass: tuple[float, float]  # grass strip between sidewalk and facade line (left, right)
    z_end: float  # distance of the skyline; the ground ends there

    @property
    def x_left(self) -> float:
        return -(self.ego + 0.5) * self.lane_w

    @property
    def x_right(self) -> float:
        return (self.lanes - self.ego - 0.5) * self.lane_w

    def lane_x(self, i: int) -> float:
        return self.x_left + (i + 0.5) * self.lane_w

    def curb(self, side: int) -> float:
        return self.x_right if side > 0 else self.x_left

    def facade(self, side: int) -> float:
        i = 1 if side > 0 else 0
        return self.curb(side) + side * (self.sw[i] + self.grass[i])


def _grass(rng: np.random.Generator) -> float:
    return float(rng.uniform(1.0, 5.0)) if rng.random() < 0.5 else 0.0


def sample_street(rng: np.random.Generator) -> Street:
    """Draw one street layout (size independent: metres and ratios only)."""
    lanes = int(rng.integers(2, 5))
    two_way = rng.random() < 0.7
    oncoming = lanes // 2 if two_way else 0
    return Street(
        cam_h=float(rng.uniform(1.25, 1.6)),
        f_rel=float(rng.uniform(0.95, 1.2)),
        horizon_rel=float(rng.uniform(0.4, 0.48)),
        bend=float(rng.uniform(-1.2e-3, 1.2e-3)) if rng.random() < 0.4 else 0.0,
        lanes=lanes,
        lane_w=float(rng.uniform(3.0, 3.6)),
        ego=int(rng.integers(oncoming, lanes)),
        oncoming=oncoming,
        sw=(float(rng.uniform(2.0, 5.0)), float(rng.uniform(2.0, 5.0))),
        grass=(_grass(rng), _grass(rng)),
        z_end=float(rng.uniform(220.0, 320.0)),
    )


def jitter(rng: np.random.Generator, palette, amount: float = 12.0) -> np.ndarray:
    c = np.asarray(palette[int(rng.integers(len(palette)))], dtype=np.float64)
    return np.clip(c + rng.normal(0.0, amount, 3), 0, 255)


def _strip(xa: float, xb: float, z0: float, z1: float, y: float = 0.0, n: int = 24) -> np.ndarray:
    """Ground (or constant-height) strip ``xa..xb`` x ``z0..z1``, sampled along Z for the bend."""
    zs = np.geomspace(z0, z1, n)
    left = np.stack([np.full(n, xa), np.full(n, y), zs], 1)
    right = np.stack([np.full(n, xb), np.full(n, y), zs[::-1]], 1)
    return np.concatenate([left, right])


def _wall(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """Vertical quad in the plane ``X = x`` (sampled along Z so it follows the bend)."""
    zs = np.linspace(z0, z1, 8)
    bottom = np.stack([np.full(8, x), np.full(8, y0), zs], 1)
    top = np.stack([np.full(8, x), np.full(8, y1), zs[::-1]], 1)
    return np.concatenate([bottom, top])


def _pts(x, y, z) -> np.ndarray:
    """Stack broadcast coordinate arrays into points ``(..., 3)``."""
    return np.stack(np.broadcast_arrays(x, y, z), -1).astype(np.float64)


def _quads(x: float, za: np.ndarray, zb: np.ndarray, ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
    """Batch ``(K, 4, 3)`` of small quads in the plane ``X = x``."""
    return np.stack([_pts(x, ya, za), _pts(x, yb, za), _pts(x, yb, zb), _pts(x, ya, zb)], 1)


def paint_sky_and_skyline(
    cv: Canvas, rng: np.random.Generator, st: Street, ids: Ids, overcast: bool
):
    sky = (200, 205, 212) if overcast else (110, 160, 220)
    seg = cv.segment(
        ids["sky"], jitter(rng, (sky,), 8), (0.0, 0.01, 0.05 if overcast else 0.07), grad=0.6
    )
    cv.fill(seg, np.array([(0, 0), (cv.width, 0), (cv.width, cv.height), (0, cv.height)], float))
    z = st.z_end
    half = z * 0.7 / st.f_rel + 50
    x = -half
    haze = np.asarray(sky, float)
    while x < half:
        w = float(rng.uniform(8, 40))
        if rng.random() < 0.65:
            col = 0.55 * jitter(rng, BUILDING_COLORS) + 0.45 * haze
            h = float(rng.uniform(6, 40))
            cv.fill(
                cv.segment(ids["building"], col, (0.02, 0.04, 0.02)), _wall_front(x, x + w, z, 0, h)
            )
        else:
            col = 0.6 * jitter(rng, VEG_COLORS) + 0.4 * haze
            cv.fill(
                cv.segment(ids["vegetation"], col, (0.1, 0.1, 0.02)),
                _blob(rng, x + w / 2, z, w / 2, w / 3, 0),
            )
        x += w


def _wall_front(x0: float, x1: float, z: float, y0: float, y1: float) -> np.ndarray:
    """Quad in the plane ``Z = z`` facing the camera."""
    return np.array([(x0, y0, z), (x0, y1, z), (x1, y1, z), (x1, y0, z)])


def _blob(
    rng: np.random.Generator, x: float, z: float, rx: float, ry: float, y0: float
) -> np.ndarray:
    """Irregular crown/bush outline facing the camera, bottom at ``y0``."""
    t = np.linspace(0, 2 * np.pi, 22, endpoint=False)
    r = 1.0 + 0.18 * rng.standard_normal(22).cumsum() / 3
    r = np.clip(r - (r.mean() - 1.0), 0.7, 1.25)
    return np.stack([x + rx * r * np.cos(t), y0 + ry + ry * r * np.sin(t), np.full(22, z)], 1)


def paint_ground(cv: Canvas, rng: np.random.Generator, st: Street, ids: Ids, rails: list[float]):
    z0, z1 = 0.5, st.z_end
    ter = cv.segment(ids["terrain"], jitter(rng, TERRAIN_COLORS), (0.1, 0.1, 0.08), ground=True)
    cv.fill(ter, _strip(-2000, 2000, z0, z1))
    road_c = jitter(rng, ((82, 82, 86), (95, 92, 90), (70, 72, 76)), 6)
    road = cv.segment(ids["road"], road_c, (0.07, 0.05, 0.05), ground=True)
    cv.fill(road, _strip(st.x_left, st.x_right, z0, z1))
    sw_c = jitter(rng, SIDEWALK_COLORS, 8)
    for side, i in ((-1, 0), (1, 1)):
        c = st.curb(side)
        cv.fill(
            cv.segment(ids["sidewalk"], sw_c, (0.05, 0.07, 0.03), ground=True),
            _strip(c, c + side * st.sw[i], z0, z1),
        )
        seams = cv.segment(ids["sidewalk"], sw_c * 0.78, (0.03, 0.03, 0.0), ground=True)
        tile = float(rng.uniform(0.5, 1.2))
        zs = np.arange(2.0, 60.0, tile)
        x2 = c + side * st.sw[i]
        q = np.stack(
            [_pts(c, 0, zs), _pts(x2, 0, zs), _pts(x2, 0, zs + 0.05), _pts(c, 0, zs + 0.05)], 1
        )
        cv.fill(seams, q)
        curb = cv.segment(ids["sidewalk"], (175, 175, 170), (0.03, 0.03, 0.0), ground=True)
        cv.fill(curb, _wall(c, z0, z1, 0.0, 0.13))
    paint = cv.segment(
        ids["road"], jitter(rng, ((230, 230, 225),), 6), (0.05, 0.1, 0.05), ground=True
    )
    dash, gap, ph = float(rng.uniform(2.5, 4)), float(rng.uniform(4, 9)), float(rng.uniform(0, 6))
    zs = np.arange(2.0 + ph, 150.0, dash + gap)
    w = float(rng.uniform(0.1, 0.16))
    for i in range(1, st.lanes):
        x = st.x_left + i * st.lane_w
        if i == st.oncoming and st.oncoming > 0:  # solid centre line
            cv.fill(paint, _strip(x - w, x + w, 2.0, z1))
        else:
            cv.fill(paint, np.stack([_strip(x - w / 2, x + w / 2, a, a + dash, n=2) for a in zs]))
    for side in (-1, 1):
        x = st.curb(side) - side * 0.3
        cv.fill(paint, _strip(x - w / 2, x + w / 2, 2.0, z1))
    metal = cv.segment(ids["road"], (150, 150, 155), (0.03, 0.03, 0.0), ground=True)
    for x in rails:
        cv.fill(
            metal, [_strip(x + s * 0.7175 - 0.04, x + s * 0.7175 + 0.04, 1.0, z1) for s in (-1, 1)]
        )
    if rng.random() < 0.45:  # zebra crossing
        zc, n = float(rng.uniform(10, 35)), int((st.x_right - st.x_left) / 1.0)
        xs = st.x_left + 0.3 + np.arange(n) * 1.0
        cv.fill(paint, np.stack([_strip(x, x + 0.5, zc, zc + 3.5, n=2) for x in xs]))


def paint_building(
    cv: Canvas,
    rng: np.random.Generator,
    ids: Ids,
    x: float,
    z0: float,
    z1: float,
    side: int,
    h: float,
    deep: bool = False,
):
    col = jitter(rng, BUILDING_COLORS, 10)
    b = ids["building"]
    cv.fill(cv.segment(b, col * 0.75, (0.03, 0.06, 0.04)), _end_cap(x, side, z0, h))
    cv.fill(cv.segment(b, col, (0.03, 0.05, 0.04)), _wall(x, z0, z1, 0.0, h))
    floor_h, win_w = float(rng.uniform(3.0, 3.6)), float(rng.uniform(1.0, 1.6))
    pitch, win_h = win_w + float(rng.uniform(0.9, 2.4)), float(rng.uniform(1.3, 1.8))
    za = np.arange(z0 + 0.6, z1 - win_w, pitch)
    ya = np.arange(floor_h + 0.8, h - win_h - 0.3, floor_h)
    if len(za) and len(ya):
        ZA, YA = np.meshgrid(za, ya)
        glass = jitter(rng, ((50, 60, 75), (95, 115, 140), (70, 70, 70)), 10)
        q = _quads(x, ZA.ravel(), ZA.ravel() + win_w, YA.ravel(), YA.ravel() + win_h)
        cv.fill(cv.segment(b, glass, (0.04, 0.1, 0.08)), q)
    if not deep and z1 - z0 > 4:  # ground floor: shop windows or doors
        dark = cv.segment(b, jitter(rng, ((45, 50, 58), (80, 70, 60)), 8), (0.04, 0.08, 0.03))
        if rng.random() < 0.5:
            cv.fill(dark, _wall(x, z0 + 1.0, z1 - 1.0, 0.5, min(2.8, h - 0.5)))
        else:
            zd = np.arange(z0 + 1.5, z1 - 2.0, float(rng.uniform(5, 9)))
            cv.fill(dark, _quads(x, zd, zd + 1.1, np.zeros_like(zd), np.full_like(zd, 2.2)))


def _end_cap(x: float, side: int, z: float, h: float) -> np.ndarray:
    return np.array([(x, 0, z), (x, h, z), (x + side * 15, h, z), (x + side * 15, 0, z)])


def paint_tree(
    cv: Canvas, rng: np.random.Generator, ids: Ids, x: float, z: float, scale: float = 1.0
):
    v = ids["vegetation"]
    trunk = cv.segment(v, jitter(rng, ((85, 65, 45), (70, 60, 50)), 8), (0.05, 0.05, 0.0))
    h, r = float(rng.uniform(2.0, 3.5)) * scale, float(rng.uniform(1.5, 3.2)) * scale
    cv.fill(trunk, _wall_front(x - 0.13 * scale, x + 0.13 * scale, z, 0.0, h + r * 0.5))
    green = jitter(rng, VEG_COLORS, 10)
    cv.fill(cv.segment(v, green, (0.18, 0.18, 0.04)), _blob(rng, x, z, r, r * 1.1, h))
    cv.fill(
        cv.segment(v, green * 1.25, (0.2, 0.15, 0.0)),
        _blob(rng, x - r * 0.2, z, r * 0.5, r * 0.45, h + r * 0.9),
    )


def paint_block(
    cv: Canvas,
    rng: np.random.Generator,
    st: Street,
    ids: Ids,
    side: int,
    kind: str,
    z0: float,
    z1: float,
):
    """A low roadside block (``wall``, ``fence``, ``hedge``, ``open``) and what shows behind it."""
    x = st.facade(side)
    # what shows behind a low block: trees or buildings set back from the facade line
    back = x + side * float(rng.uniform(6, 20))
    if rng.random() < 0.5:
        paint_building(cv, rng, ids, back, z0, z1, side, float(rng.uniform(8, 22)), deep=True)
    for zt in np.arange(z0 + rng.uniform(1, 5), z1, rng.uniform(5, 10)):
        paint_tree(cv, rng, ids, back - side * float(rng.uniform(0, 4)), float(zt), 1.2)
    if kind == "wall":
        h = float(rng.uniform(1.0, 3.2))
        col = jitter(rng, ((160, 155, 145), (140, 120, 100), (120, 125, 130)), 10)
        cv.fill(cv.segment(ids["wall"], col, (0.06, 0.08, 0.04)), _wall(x, z0, z1, 0.0, h))
        cv.fill(
            cv.segment(ids["wall"], col * 1.15, (0.03, 0.03, 0.0)), _wall(x, z0, z1, h - 0.12, h)
        )
    elif kind == "fence":
        h = float(rng.uniform(1.0, 2.2))
        col = jitter(rng, ((95, 100, 95), (140, 100, 60), (50, 90, 60)), 10)
        seg = cv.segment(ids["fence"], col, (0.04, 0.05, 0.0))
        pitch, bw = float(rng.uniform(0.12, 0.35)), float(rng.uniform(0.04, 0.09))
        za = np.arange(z0, z1 - bw, pitch)
        if len(za):
            top = h - 0.12
            cv.fill(seg, _quads(x, za, za + bw, np.full_like(za, 0.05), np.full_like(za, top)))
        for y in (0.15, h - 0.12):
            cv.fill(seg, _wall(x, z0, z1, y, y + 0.1))
    elif kind == "hedge":
        h = float(rng.uniform(1.0, 2.4))
        col = jitter(rng, VEG_COLORS, 10)
        zs = np.linspace(z0, z1, 16)
        tops = h + 0.15 * rng.standard_normal(16)
        pts = (
            [(x, 0.0, z0)]
            + [(x, float(t), float(z)) for z, t in zip(zs, tops, strict=True)]
            + [(x, 0.0, z1)]
        )
        cv.fill(cv.segment(ids["vegetation"], col, (0.2, 0.18, 0.04)), np.array(pts))


def paint_pole(
    cv: Canvas, rng: np.random.Generator, ids: Ids, x: float, z: float, side: int, kind: str
):
    """Pole at ``(x, z)`` carrying a ``lamp``, ``sign``, ``light`` or ``overhead`` light."""
    n = math.hypot(x, z) or 1.0
    ax, az = z / n, -x / n  # billboard axis facing the camera

    def bb(pts):  # billboard points (e, y) -> world
        return np.array([(x + e * ax, y, z + e * az) for e, y in pts])

    def rect(e0, e1, y0, y1):
        return bb(rect2(e0, e1, y0, y1))

    metal = cv.segment(
        ids["pole"],
        jitter(rng, ((125, 125, 130), (70, 72, 75), (95, 100, 90)), 8),
        (0.03, 0.03, 0.0),
    )
    w = float(rng.uniform(0.1, 0.2))
    if kind == "lamp":
        h = float(rng.uniform(6, 9))
        cv.fill(metal, rect(-w / 2, w / 2, 0, h))
        cv.fill(metal, rect(-side * 1.6 if side > 0 else 0, 0 if side > 0 else 1.6, h - 0.08, h))
        cv.fill(metal, rect(-side * 1.8 - 0.25, -side * 1.8 + 0.25, h - 0.3, h))
        return
    if kind == "sign":
        h = float(rng.uniform(2.6, 3.4))
        cv.fill(metal, rect(-w / 2, w / 2, 0, h))
        y = h - 0.4
        for _ in range(int(rng.integers(1, 3))):
            _paint_sign(cv, rng, ids, bb, y)
            y -= 0.85
        return
    h = float(rng.uniform(3.2, 4.5)) if kind == "light" else float(rng.uniform(5.5, 6.5))
    cv.fill(metal, rect(-w / 2, w / 2, 0, h))
    ex = 0.0
    if kind == "overhead":
        ex = -side * float(rng.uniform(3, 6))
        cv.fill(metal, rect(min(ex, 0), max(ex, 0), h - 0.15, h))
    housing = jitter(rng, ((30, 30, 32), (40, 42, 38), (200, 165, 40)), 6)
    tl = ids["traffic light"]
    yb = h - 1.1 if kind == "light" else h - 1.15
    cv.fill(cv.segment(tl, housing, (0.03, 0.03, 0.0)), rect(ex - 0.18, ex + 0.18, yb, yb + 0.95))
    if rng.random() < 0.8:  # lamps face the camera
        lit = int(rng.integers(3))
        for k, col in enumerate(((220, 40, 30), (240, 170, 30), (40, 210, 100))):
            c = np.asarray(col, dtype=float) * (1.0 if k == lit else 0.25)
            cv.fill(
                cv.segment(tl, c, (0.02, 0.02, 0.0)),
                bb(circle2((ex, yb + 0.78 - k * 0.3), 0.1, 12)),
            )


def _paint_sign(cv: Canvas, rng: np.random.Generator, ids: Ids, bb, y: float) -> None:
    ts = ids["traffic sign"]
    shape = int(rng.integers(5))
    back = rng.random() < 0.2
    red, white, blue, yellow = (200, 30, 30), (235, 235, 235), (30, 70, 170), (240, 200, 20)
    pairs = ((red, white), (blue, white), (red, white), (blue, white), (white, yellow))
    outer: tuple[int, int, int] = pairs[shape][0]
    inner: tuple[int, int, int] | None = pairs[shape][1]
    if back:
        outer, inner = (140, 140, 140), None
    r = float(rng.uniform(0.3, 0.4))
    if shape in (0, 1):
        outer_p, inner_p = circle2((0, y), r, 16), circle2((0, y), r * 0.75, 16)
    elif shape == 2:
        outer_p = [(-r * 1.1, y + r * 0.7), (r * 1.1, y + r * 0.7), (0, y - r * 1.1)]
        inner_p = [(-r * 0.7, y + r * 0.45), (r * 0.7, y + r * 0.45), (0, y - r * 0.65)]
    elif shape == 3:
        outer_p, inner_p = (
            rect2(-r, r, y - r, y + r),
            rect2(-r * 0.8, r * 0.8, y - r * 0.8, y + r * 0.8),
        )
    else:
        outer_p = [(0, y - r), (-r, y), (0, y + r), (r, y)]
        inner_p = [(0, y - r * 0.7), (-r * 0.7, y), (0, y + r * 0.7), (r * 0.7, y)]
    cv.fill(cv.segment(ts, jitter(rng, (outer,), 8), (0.02, 0.02, 0.0)), bb(outer_p))
    if inner is not None:
        cv.fill(cv.segment(ts, jitter(rng, (inner,), 8), (0.02, 0.02, 0.0)), bb(inner_p))


def paint_ego_hood(cv: Canvas, rng: np.random.Generator, label_id: int) -> None:
    """Ego-vehicle bonnet along the bottom edge (a void label, as in Cityscapes)."""
    H, W = cv.height, cv.width
    top = H * (1 - float(rng.uniform(0.04, 0.08)))
    us = np.linspace(-0.05 * W, 1.05 * W, 24)
    vs = top + (H - top) * 0.6 * ((us - W / 2) / (0.55 * W)) ** 2
    pts = np.concatenate([np.stack([us, vs], 1), [[1.05 * W, H + 2], [-0.05 * W, H + 2]]])
    cv.fill(
        cv.segment(label_id, jitter(rng, ((30, 32, 36), (180, 180, 185), (90, 20, 25)), 6)), pts
    )


__all__ = [
    "Street",
    "paint_block",
    "paint_ego_hood",
    "paint_ground",
    "paint_pole",
    "paint_sky_and_skyline",
    "paint_tree",
    "sample_street",
]
