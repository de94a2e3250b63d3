"""Thing classes of the synthetic street scenes: shapes, sizes and colour palettes.

Vehicles (car, truck, bus, train) are boxes whose visible faces carry a class-specific profile
and details (windows, lights, wheels). People are billboards facing the camera (front/back view when
walking along the view ray, profile when crossing it). Two-wheelers are drawn in their plane of
travel, or as an end view when that plane is seen nearly edge-on; a rider is a separate object
seated on its two-wheeler. All sizes are metres, headings radians (0 = driving along +Z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .synth_canvas import Canvas, bar2, disc, rect2

RGB = tuple[float, float, float]

CAR_COLORS: tuple[RGB, ...] = (
    (225, 225, 228),
    (160, 162, 168),
    (30, 30, 34),
    (70, 72, 78),
    (150, 25, 30),
    (30, 50, 120),
    (70, 110, 170),
    (40, 80, 60),
    (190, 175, 140),
    (110, 40, 60),
)
TRUCK_COLORS: tuple[RGB, ...] = (
    (235, 235, 235),
    (200, 40, 35),
    (235, 190, 40),
    (230, 120, 30),
    (40, 80, 160),
    (60, 120, 60),
)
BUS_COLORS: tuple[RGB, ...] = (
    (235, 200, 40),
    (200, 40, 40),
    (40, 90, 170),
    (230, 230, 230),
    (60, 150, 80),
    (230, 120, 40),
)
TRAIN_COLORS: tuple[RGB, ...] = (
    (235, 235, 235),
    (220, 200, 40),
    (200, 40, 40),
    (60, 120, 190),
    (120, 170, 60),
)
SKIN: tuple[RGB, ...] = ((240, 200, 170), (215, 170, 130), (170, 120, 85), (110, 75, 50))
CLOTHES: tuple[RGB, ...] = (
    (200, 40, 40),
    (40, 60, 140),
    (30, 30, 30),
    (230, 230, 230),
    (60, 120, 60),
    (230, 180, 40),
    (120, 80, 150),
    (120, 120, 120),
    (180, 110, 70),
    (40, 150, 170),
)
TROUSERS: tuple[RGB, ...] = (
    (30, 40, 80),
    (25, 25, 28),
    (80, 80, 85),
    (170, 150, 110),
    (60, 45, 35),
)
BIKE_COLORS: tuple[RGB, ...] = (
    (30, 30, 30),
    (200, 30, 30),
    (30, 80, 170),
    (220, 220, 220),
    (40, 140, 60),
    (230, 150, 30),
)
GLASS: RGB = (40, 55, 70)
TYRE: RGB = (22, 22, 24)

SIZES: dict[str, tuple[float, float, float, float, float, float]] = {
    # kind: length range, width range, height range (min, max each)
    "car": (3.9, 4.9, 1.7, 1.9, 1.4, 1.6),
    "truck": (6.0, 10.0, 2.3, 2.5, 3.0, 3.8),
    "bus": (10.5, 13.0, 2.5, 2.55, 3.0, 3.3),
    "train": (20.0, 36.0, 2.3, 2.65, 3.3, 3.7),
    "person": (0.5, 0.6, 0.5, 0.6, 1.5, 1.95),
    "bicycle": (1.75, 1.85, 0.6, 0.6, 1.05, 1.1),
    "motorcycle": (2.0, 2.2, 0.8, 0.8, 1.15, 1.25),
}


@dataclass
class Thing:
    """One sampled thing: pose, size, look; ``rider`` rides on a two-wheeler."""

    kind: str
    length: float
    width: float
    height: float
    colors: dict[str, RGB]
    variant: str = ""
    x: float = 0.0
    z: float = 0.0
    heading: float = 0.0
    rider: Thing | None = None
    params: dict[str, float] = field(default_factory=dict)

    def footprint(self) -> np.ndarray:
        """Ground corners ``(4, 2)`` as ``(X, Z)``."""
        s, c = math.sin(self.heading), math.cos(self.heading)
        pts = []
        for a, b in ((-1, -1), (-1, 1), (1, 1), (1, -1)):
            a_, b_ = a * self.length / 2, b * self.width / 2
            pts.append((self.x + a_ * s + b_ * c, self.z + a_ * c - b_ * s))
        return np.asarray(pts)

    def depth(self) -> float:
        """Distance from the camera to the nearest point of the footprint (painter's order)."""
        s, c = math.sin(self.heading), math.cos(self.heading)
        a = -(self.x * s + self.z * c)  # camera in local coordinates
        b = -(self.x * c - self.z * s)
        da = max(abs(a) - self.length / 2, 0.0)
        db = max(abs(b) - self.width / 2, 0.0)
        return math.hypot(da, db)


def _pick(rng: np.random.Generator, palette: tuple[RGB, ...], jitter: float = 12.0) -> RGB:
    c = np.asarray(palette[int(rng.integers(len(palette)))], dtype=np.float64)
    c = np.clip(c + rng.normal(0.0, jitter, 3), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _scaled(c: RGB, k: float) -> RGB:
    return (c[0] * k, c[1] * k, c[2] * k)


def sample_thing(rng: np.random.Generator, kind: str) -> Thing:
    """Draw size, variant and colours of a thing of ``kind`` (pose is set by the caller)."""
    lo_l, hi_l, lo_w, hi_w, lo_h, hi_h = SIZES[kind]
    t = Thing(
        kind,
        float(rng.uniform(lo_l, hi_l)),
        float(rng.uniform(lo_w, hi_w)),
        float(rng.uniform(lo_h, hi_h)),
        {},
    )
    if kind == "car":
        t.variant = str(rng.choice(["sedan", "hatch", "van"], p=[0.45, 0.35, 0.2]))
        if t.variant == "van":
            t.height = float(rng.uniform(1.75, 2.0))
        t.colors["body"] = _pick(rng, CAR_COLORS)
    elif kind == "truck":
        t.colors["body"] = _pick(rng, TRUCK_COLORS)
        t.colors["box"] = _pick(rng, TRUCK_COLORS if rng.random() < 0.5 else ((225, 225, 220),))
        t.params["cab_h"] = float(rng.uniform(2.7, min(3.0, t.height)))
    elif kind == "bus":
        t.colors["body"] = _pick(rng, BUS_COLORS)
        t.colors["accent"] = _pick(rng, BUS_COLORS)
    elif kind == "train":
        t.colors["body"] = _pick(rng, TRAIN_COLORS)
        t.colors["accent"] = _pick(rng, TRAIN_COLORS)
        t.params["segment"] = float(rng.uniform(7.0, 10.0))
    elif kind == "person":
        t.colors["skin"] = _pick(rng, SKIN, 8.0)
        t.colors["shirt"] = _pick(rng, CLOTHES)
        t.colors["legs"] = _pick(rng, TROUSERS)
        t.colors["hair"] = _pick(
            rng, ((25, 20, 15), (90, 60, 30), (200, 170, 110), (120, 120, 120))
        )
        t.params["stride"] = float(rng.uniform(0.1, 0.45))
        t.params["bag"] = float(rng.random() < 0.3)
    else:  # bicycle / motorcycle
        t.colors["frame"] = _pick(rng, BIKE_COLORS)
    return t


# -- box vehicles --------------------------------------------------------------------------------
def _pt(t: Thing, a: float, b: float, y: float) -> tuple[float, float, float]:
    s, c = math.sin(t.heading), math.cos(t.heading)
    return (t.x + a * s + b * c, y, t.z + a * c - b * s)


def _side_profile(t: Thing) -> tuple[list, list, list]:
    """Body outline, windows, wheel (a, radius) list in side coordinates (a forward, y up)."""
    L, H = t.length, t.height
    if t.kind == "car":
        yb = 0.55 * H if t.variant != "van" else 0.5 * H
        # fmt: off
        k = {
            "sedan": [(-.5, .28), (-.5, yb), (-.4, yb + .03), (-.27, H), (.12, H), (.3, yb + .04),
                      (.5, yb - .06), (.5, .28)],
            "hatch": [(-.5, .28), (-.5, yb + .1), (-.45, H - .05), (-.4, H), (.12, H),
                      (.3, yb + .04), (.5, yb - .06), (.5, .28)],
            "van": [(-.5, .3), (-.5, H - .05), (-.45, H), (.25, H), (.42, yb + .1), (.5, yb),
                    (.5, .3)],
        }[t.variant]
        # fmt: on
        outline = [(a * L, y) for a, y in k]
        a_back = {"sedan": -0.36, "hatch": -0.44, "van": -0.46}[t.variant] * L
        a_front = {"sedan": 0.26, "hatch": 0.26, "van": 0.38}[t.variant] * L
        y0, y1 = yb + 0.07, H - 0.07
        wins = [
            [(a_back, y0), (a_back + 0.06 * L, y1), (-0.08 * L, y1), (-0.08 * L, y0)],
            [(-0.05 * L, y0), (-0.05 * L, y1), (0.11 * L, y1), (a_front, y0)],
        ]
        r = 0.32
        return [outline], wins, [(-0.33 * L, r), (0.33 * L, r)]
    if t.kind == "truck":
        hc, hb = t.params["cab_h"], H
        cab = [(L / 2 - 2.3, 0.5), (L / 2 - 2.3, hc), (L / 2 - 0.3, hc), (L / 2, hc - 0.8)]
        body = [rect2(-L / 2, L / 2, 0.5, 0.9), rect2(-L / 2, L / 2 - 2.4, 0.9, hb)]
        body.append([*cab, (L / 2, 0.5)])
        a0, a1 = L / 2 - 1.3, L / 2 - 0.35
        wins = [[(a0, hc - 1.1), (a0, hc - 0.2), (a1, hc - 0.2), (a1 + 0.25, hc - 1.1)]]
        wheels = [(L / 2 - 1.3, 0.5), (-L / 2 + 1.5, 0.5)]
        if L > 7.5:
            wheels.append((-L / 2 + 2.6, 0.5))
        return body, wins, wheels
    if t.kind == "bus":
        body = [rect2(-L / 2, L / 2, 0.3, H)]
        wins, a = [], -L / 2 + 0.4
        while a < L / 2 - 1.6:
            wins.append(rect2(a, a + 1.2, 1.15, H - 0.35))
            a += 1.35
        wins.append(rect2(L / 2 - 1.5, L / 2 - 0.3, 0.4, H - 0.35))  # front door
        return body, wins, [(L / 2 - 2.5, 0.5), (-L / 2 + 3.0, 0.5)]
    # train
    body = [rect2(-L / 2, L / 2, 0.25, H)]
    wins, a = [], -L / 2 + 0.6
    while a < L / 2 - 2.0:
        wins.append(rect2(a, a + 1.7, 1.1, H - 0.5))
        a += 2.1
    return body, wins, []


def _end_profile(t: Thing, front: bool) -> tuple[list, list, list, list]:
    """Body outlines, glass, lights (polygon, colour), tyres for the front or rear face."""
    W, H = t.width, t.height
    w = W / 2
    if t.kind == "car":
        yb = 0.55 * H if t.variant != "van" else 0.5 * H
        body = [[(-w, 0.28), (-w, yb), (-0.8 * w, H), (0.8 * w, H), (w, yb), (w, 0.28)]]
        g = (0.8, 0.7, 0.05, 0.05) if front else (0.76, 0.66, 0.08, 0.06)
        glass = [[(-g[0] * w, yb + g[2]), (-g[1] * w, H - g[3]), (g[1] * w, H - g[3]),
                  (g[0] * w, yb + g[2])]]  # fmt: skip
        lc = (235, 235, 215) if front else (200, 20, 20)
        ly = (yb - 0.2, yb - 0.08) if front else (yb - 0.17, yb - 0.04)
        lights = [(rect2(s * 0.6 * w, s * 0.93 * w, *ly), lc) for s in (-1, 1)]
        lights.append((rect2(-0.26 * w, 0.26 * w, 0.36, 0.48), (225, 225, 215)))  # plate
        if front:
            lights.append((rect2(-0.44 * w, 0.44 * w, yb - 0.22, yb - 0.1), (35, 35, 38)))  # grille
        tyres = [rect2(s * 0.6 * w, s * 0.9 * w, 0.0, 0.3) for s in (-1, 1)]
        return body, glass, lights, tyres
    if t.kind == "truck":
        hc = t.params["cab_h"]
        if front:
            body = [rect2(-w, w, 0.5, hc)] + ([rect2(-w, w, hc, H)] if hc + 0.05 < H else [])
            glass = [rect2(-0.9 * w, 0.9 * w, hc - 1.1, hc - 0.15)]
            lights = [
                (rect2(s * 0.65 * w, s * 0.92 * w, 0.7, 0.9), (235, 235, 215)) for s in (-1, 1)
            ]
            lights.append((rect2(-0.5 * w, 0.5 * w, 0.65, 1.2), (40, 40, 42)))
        else:
            body = [rect2(-w, w, 0.9, H), rect2(-w, w, 0.45, 0.9)]
            glass = [rect2(-0.02, 0.02, 1.0, H - 0.1)]  # door split line
            lights = [(rect2(s * 0.7 * w, s * 0.95 * w, 0.6, 0.8), (200, 20, 20)) for s in (-1, 1)]
        tyres = [rect2(s * 0.45 * w, s * 0.95 * w, 0.0, 0.5) for s in (-1, 1)]
        return body, glass, lights, tyres
    if t.kind == "bus":
        body = [rect2(-w, w, 0.3, H)]
        if front:
            glass = [rect2(-0.92 * w, 0.92 * w, 1.0, H - 0.45)]
            lights = [(rect2(-0.8 * w, 0.8 * w, H - 0.4, H - 0.1), (30, 30, 30))]  # display
            lights.append((rect2(-0.6 * w, 0.6 * w, H - 0.32, H - 0.18), (240, 150, 30)))
            lights += [
                (rect2(s * 0.65 * w, s * 0.92 * w, 0.5, 0.7), (235, 235, 215)) for s in (-1, 1)
            ]
        else:
            glass = [rect2(-0.8 * w, 0.8 * w, 2.0, H - 0.35)]
            lights = [(rect2(s * 0.7 * w, s * 0.92 * w, 0.6, 1.0), (200, 20, 20)) for s in (-1, 1)]
            lights.append((rect2(-0.5 * w, 0.5 * w, 0.5, 1.2), (60, 60, 62)))  # engine grille
        return body, glass, lights, [rect2(s * 0.5 * w, s * 0.9 * w, 0.0, 0.35) for s in (-1, 1)]
    body = [[(-w, 0.25), (-w, H - 0.3), (-0.8 * w, H), (0.8 * w, H), (w, H - 0.3), (w, 0.25)]]
    glass = [[(-0.9 * w, 1.2), (-0.84 * w, H - 0.25), (0.84 * w, H - 0.25), (0.9 * w, 1.2)]]
    lc = (235, 235, 215) if front else (200, 20, 20)
    lights = [(rect2(s * 0.6 * w, s * 0.85 * w, 0.6, 0.8), lc) for s in (-1, 1)]
    return body, glass, lights, []


def draw_vehicle(cv: Canvas, t: Thing, label: int) -> None:
    """Paint a car, truck, bus or train: its visible faces, far to near."""
    obj = cv.new_object(label)
    body_c = t.colors["body"]
    seg_body = {
        k: cv.segment(label, _scaled(body_c, k), (0.02, 0.04, 0.02), obj=obj)
        for k in (0.8, 1.0, 1.1)
    }
    seg_box = cv.segment(label, _scaled(t.colors.get("box", body_c), 0.9), obj=obj)
    seg_glass = cv.segment(label, GLASS, (0.05, 0.1, 0.05), obj=obj)
    seg_tyre = cv.segment(label, TYRE, obj=obj)
    seg_rim = cv.segment(label, (150, 150, 155), obj=obj)
    seg_dark = cv.segment(label, (45, 45, 48), obj=obj)
    seg_accent = cv.segment(label, t.colors.get("accent", body_c), obj=obj)
    L, W, H = t.length, t.width, t.height
    fx, fz = _pt(t, 0, 0, 0)[0], _pt(t, 0, 0, 0)[2]
    faces = []  # (distance, kind, a_or_b sign)
    for sign in (-1, 1):
        cx_, _, cz_ = _pt(t, 0, sign * W / 2, 0)
        nx, nz = cx_ - fx, cz_ - fz
        if nx * (0 - cx_) + nz * (0 - cz_) > 0:
            faces.append((math.hypot(cx_, cz_), "side", sign))
        ex, _, ez = _pt(t, sign * L / 2, 0, 0)
        nx, nz = ex - fx, ez - fz
        if nx * (0 - ex) + nz * (0 - ez) > 0:
            faces.append((math.hypot(ex, ez), "end", sign))
    if t.kind == "car" and cv.camera.height > H + 0.05:  # roof seen from above
        roof = rect2(-0.25 * L, 0.1 * L, -0.4 * W, 0.4 * W)
        cv.fill(seg_body[1.1], np.array([_pt(t, a, b, H) for a, b in roof]))
    for _, kind, sign in sorted(faces, reverse=True):
        if kind == "side":
            b = sign * W / 2

            def side(poly, b=b):
                return np.array([_pt(t, a, b, y) for a, y in poly])

            body, wins, wheels = _side_profile(t)
            for i, poly in enumerate(body):
                box_part = t.kind == "truck" and i == 1
                cv.fill(seg_box if box_part else seg_body[0.8], side(poly))
            if t.kind in ("bus", "train"):
                cv.fill(seg_accent, side(rect2(-L / 2, L / 2, 0.6, 0.85)))
            if t.kind == "train":
                cv.fill(seg_dark, side(rect2(-L / 2, L / 2, 0.25, 0.55)))
                a = -L / 2 + t.params["segment"]
                while a < L / 2 - 2:
                    cv.fill(seg_dark, side(rect2(a - 0.15, a + 0.15, 0.25, H)))
                    a += t.params["segment"]
            cv.fill(seg_glass, [side(w) for w in wins])
            for a, r in wheels:
                c = _pt(t, a, b, r)
                ax = np.subtract(_pt(t, 1, b, 0), _pt(t, 0, b, 0))
                cv.fill(seg_tyre, disc(c, r, ax, (0, 1, 0), 20))
                cv.fill(seg_rim, disc(c, 0.55 * r, ax, (0, 1, 0), 16))
        else:
            a = sign * L / 2

            def end(poly, a=a):
                return np.array([_pt(t, a, b, y) for b, y in poly])

            body, glass, lights, tyres = _end_profile(t, front=sign > 0)
            cv.fill(seg_tyre, [end(p) for p in tyres])
            for i, poly in enumerate(body):
                box_part = t.kind == "truck" and ((sign < 0 and i == 0) or (sign > 0 and i == 1))
                cv.fill(seg_box if box_part else seg_body[1.0], end(poly))
            cv.fill(seg_glass, [end(p) for p in glass])
            for poly, col in lights:
                cv.fill(cv.segment(label, col, (0.02, 0.02, 0.0), obj=obj), end(poly))
    if t.kind == "train":  # pantograph on the roof, in the vehicle's mid plane
        a, top = L / 4, H + 0.9
        for p0, p1 in (
            ((a - 0.6, H), (a, top)),
            ((a + 0.6, H), (a, top)),
            ((a - 0.5, top), (a + 0.5, top)),
        ):
            cv.fill(seg_dark, np.array([_pt(t, u, 0.0, y) for u, y in bar2(p0, p1, 0.06)]))
