"""People and two-wheelers of the synthetic street scenes (articulated flat figures).

A person is a billboard facing the camera: a front/back view when walking along the view ray, a
profile when crossing it. A bicycle or motorcycle is drawn in its plane of travel (wheels become
perspective ellipses) unless that plane is seen nearly edge-on, where an end view is drawn instead.
A rider is a separate object (its own instance) seated on the two-wheeler; its legs are painted on
both sides of the frame so the occlusion between rider and vehicle is the painted one.
"""

from __future__ import annotations

import math

import numpy as np

from .synth_canvas import Canvas, Pts, bar2, circle2, rect2
from .synth_things import TYRE, Thing


def _knee(hip: tuple[float, float], foot: tuple[float, float], l1: float, l2: float, fwd: float):
    """Two-bone joint between ``hip`` and ``foot`` bending towards ``fwd`` (+1 / -1 along e)."""
    dx, dy = foot[0] - hip[0], foot[1] - hip[1]
    d = min(math.hypot(dx, dy), l1 + l2 - 1e-6) or 1e-6
    a = (l1 * l1 - l2 * l2 + d * d) / (2 * d)
    h = math.sqrt(max(l1 * l1 - a * a, 0.0))
    mx, my = hip[0] + a * dx / d, hip[1] + a * dy / d
    k1 = (mx - h * dy / d, my + h * dx / d)
    k2 = (mx + h * dy / d, my - h * dx / d)
    return k1 if (k1[0] - k2[0]) * fwd > 0 else k2


class _Plane:
    """Maps 2-D figure coordinates ``(e, y)`` to world points in a vertical plane."""

    def __init__(self, x: float, z: float, axis: tuple[float, float]) -> None:
        self.x, self.z, self.ax, self.az = x, z, axis[0], axis[1]

    def __call__(self, pts: Pts) -> np.ndarray:
        return np.array([(self.x + e * self.ax, y, self.z + e * self.az) for e, y in pts])


def _facing_axis(x: float, z: float) -> tuple[float, float]:
    """Horizontal in-plane axis of a billboard at ``(x, z)`` facing the camera (points right)."""
    n = math.hypot(x, z) or 1.0
    return (z / n, -x / n)


def _person_segs(cv: Canvas, t: Thing, label: int) -> dict[str, int]:
    obj = cv.new_object(label)
    c = t.colors
    return {
        "skin": cv.segment(label, c["skin"], (0.02, 0.02, 0.0), obj=obj),
        "shirt": cv.segment(label, c["shirt"], (0.04, 0.06, 0.02), obj=obj),
        "arm": cv.segment(label, np.multiply(c["shirt"], 0.85), (0.04, 0.06, 0.0), obj=obj),
        "legs": cv.segment(label, c["legs"], (0.04, 0.05, 0.0), obj=obj),
        "hair": cv.segment(label, c["hair"], (0.05, 0.02, 0.0), obj=obj),
        "shoe": cv.segment(label, (35, 30, 28), obj=obj),
        "bag": cv.segment(label, (50, 45, 60), (0.04, 0.04, 0.0), obj=obj),
    }


def draw_person(cv: Canvas, t: Thing, label: int) -> None:
    """Paint a pedestrian standing on the ground at ``(t.x, t.z)``."""
    s = _person_segs(cv, t, label)
    axis = _facing_axis(t.x, t.z)
    P = _Plane(t.x, t.z, axis)
    Hp = t.height
    walk = (math.sin(t.heading), math.cos(t.heading))
    n = math.hypot(t.x, t.z) or 1.0
    along = (walk[0] * t.x + walk[1] * t.z) / n  # +1 walking away, -1 towards the camera
    hw, sw, yh, ysh = 0.09 * Hp, 0.125 * Hp, 0.5 * Hp, 0.81 * Hp
    head, r = 0.905 * Hp, 0.065 * Hp
    if abs(along) > 0.7:  # front or back view
        for sg in (-1, 1):
            cv.fill(
                s["legs"],
                P([(sg * hw, yh), (sg * 0.01, yh), (sg * 0.03, 0.05), (sg * (hw - 0.005), 0.05)]),
            )
            cv.fill(s["shoe"], P(rect2(sg * hw, sg * 0.03, 0.0, 0.06)))
        if along > 0 and t.params["bag"]:
            cv.fill(s["bag"], P(rect2(-0.8 * sw, 0.8 * sw, yh + 0.05 * Hp, ysh)))
        torso = [
            (-hw - 0.01, yh - 0.02),
            (-sw, ysh),
            (-0.5 * sw, 0.84 * Hp),
            (0.5 * sw, 0.84 * Hp),
            (sw, ysh),
            (hw + 0.01, yh - 0.02),
        ]
        cv.fill(s["shirt"], P(torso))
        if along > 0 and t.params["bag"]:
            cv.fill(s["bag"], P(rect2(-0.7 * sw, 0.7 * sw, yh + 0.08 * Hp, ysh - 0.03 * Hp)))
        for sg in (-1, 1):
            hand = (sg * (sw + 0.03), 0.47 * Hp)
            cv.fill(s["arm"], P(bar2((sg * (sw - 0.02), ysh - 0.02), hand, 0.07 * Hp, 0.055 * Hp)))
            cv.fill(s["skin"], P(circle2(hand, 0.03 * Hp, 8)))
        cv.fill(s["skin"], P(rect2(-0.025 * Hp, 0.025 * Hp, 0.83 * Hp, head)))
        if along > 0:  # seen from behind: hair covers the head
            cv.fill(s["hair"], P(circle2((0, head), r, 14)))
        else:
            cv.fill(s["hair"], P(circle2((0, head + 0.02 * Hp), 0.06 * Hp, 14)))
            cv.fill(s["skin"], P(circle2((0, head - 0.005 * Hp), 0.058 * Hp, 14)))
        return
    d = 1.0 if walk[0] * axis[0] + walk[1] * axis[1] > 0 else -1.0  # facing along +e or -e
    st = t.params["stride"] * Hp * 0.5
    if t.params["bag"]:
        cv.fill(s["bag"], P(rect2(-d * 0.16 * Hp, -d * 0.06 * Hp, yh + 0.06 * Hp, ysh)))
    for sg in (-1, 1):  # far leg then near leg
        foot = (sg * d * st, 0.04)
        cv.fill(s["legs"], P(bar2((0.0, yh), foot, 0.11 * Hp, 0.06 * Hp)))
        cv.fill(s["shoe"], P(bar2((foot[0] - d * 0.03, 0.03), (foot[0] + d * 0.1, 0.03), 0.06)))
        if sg == -1:
            cv.fill(s["arm"], P(bar2((0.0, ysh - 0.02), (-d * st * 0.6, 0.47 * Hp), 0.06 * Hp)))
    torso = [
        (-d * 0.07 * Hp, yh - 0.02),
        (-d * 0.07 * Hp, ysh),
        (d * 0.06 * Hp, ysh + 0.01),
        (d * 0.08 * Hp, yh),
    ]
    cv.fill(s["shirt"], P(torso))
    cv.fill(s["arm"], P(bar2((0.0, ysh - 0.02), (d * st * 0.6, 0.47 * Hp), 0.06 * Hp)))
    cv.fill(s["skin"], P(rect2(-0.02 * Hp, 0.02 * Hp, 0.83 * Hp, head)))
    cv.fill(s["skin"], P(circle2((d * 0.01 * Hp, head), r, 14)))
    cv.fill(s["hair"], P(circle2((-d * 0.02 * Hp, head + 0.02 * Hp), 0.055 * Hp, 12)))


def draw_two_wheeler(cv: Canvas, t: Thing, label: int, rider_label: int) -> None:
    """Paint a bicycle or motorcycle at ``(t.x, t.z)`` and its rider (``t.rider``) if any."""
    moto = t.kind == "motorcycle"
    obj = cv.new_object(label)
    seg_frame = cv.segment(label, t.colors["frame"], (0.02, 0.03, 0.0), obj=obj)
    seg_tyre = cv.segment(label, TYRE, obj=obj)
    seg_dark = cv.segment(label, (50, 50, 52), obj=obj)
    seg_metal = cv.segment(label, (160, 160, 165), obj=obj)
    rs = _person_segs(cv, t.rider, rider_label) if t.rider is not None else None
    Hr = t.rider.height if t.rider is not None else 1.75
    d = (math.sin(t.heading), math.cos(t.heading))
    n = math.hypot(t.x, t.z) or 1.0
    along = (d[0] * t.x + d[1] * t.z) / n
    if abs(along) > 0.85:  # end view: billboard facing the camera
        P = _Plane(t.x, t.z, _facing_axis(t.x, t.z))
        away = along > 0
        seat_y, bar_y = (0.8, 1.05) if moto else (0.95, 1.03)
        if rs is not None:
            for sg in (-1, 1):
                knee = (sg * (0.24 if moto else 0.13), 0.55)
                cv.fill(rs["legs"], P(bar2((sg * 0.09, seat_y), knee, 0.07 * Hr, 0.055 * Hr)))
                cv.fill(rs["legs"], P(bar2(knee, (sg * 0.14, 0.3), 0.055 * Hr, 0.045 * Hr)))
        cv.fill(
            seg_tyre, P(rect2(-0.07, 0.07, 0.0, 0.62) if moto else rect2(-0.025, 0.025, 0.0, 0.68))
        )
        if moto:
            cv.fill(seg_frame, P([(-0.2, 0.35), (-0.25, 0.85), (0.25, 0.85), (0.2, 0.35)]))
            light = (200, 20, 20) if away else (240, 240, 220)
            cv.fill(cv.segment(label, light, obj=obj), P(circle2((0.0, 0.75), 0.06, 10)))
        else:
            cv.fill(seg_frame, P(rect2(-0.02, 0.02, 0.3, seat_y)))
        cv.fill(seg_dark, P(rect2(-0.07, 0.07, seat_y - 0.02, seat_y + 0.03)))
        half = 0.38 if moto else 0.28
        cv.fill(seg_dark, P(rect2(-half, half, bar_y - 0.02, bar_y + 0.02)))
        if rs is not None:
            lean = 0.8 if moto else 0.6
            ysh = seat_y + 0.3 * Hr * lean
            sw = 0.12 * Hr
            torso = [(-0.1 * Hr, seat_y), (-sw, ysh), (sw, ysh), (0.1 * Hr, seat_y)]
            cv.fill(rs["shirt"], P(torso))
            for sg in (-1, 1):
                cv.fill(
                    rs["arm"],
                    P(bar2((sg * (sw - 0.02), ysh - 0.02), (sg * half * 0.9, bar_y), 0.055 * Hr)),
                )
            hc = (0.0, ysh + 0.08 * Hr)
            cv.fill(rs["hair"] if away else rs["skin"], P(circle2(hc, 0.065 * Hr)))
            if moto:  # helmet
                cv.fill(rs["bag"], P(circle2(hc, 0.075 * Hr)))
        return
    P = _Plane(t.x, t.z, d)
    k = t.length / (2.1 if moto else 1.8)
    if moto:
        r, hubs, bar = 0.31, (-0.7 * k, 0.7 * k), (0.45 * k, 1.05)
        seat, peg = (-0.25 * k, 0.82), (-0.05 * k, 0.35)
    else:
        r, hubs, bar = 0.34, (-0.52 * k, 0.52 * k), (0.36 * k, 1.05)
        seat, peg = (-0.22 * k, 0.95), (-0.05 * k, 0.3)
    hip = (seat[0] - 0.02, seat[1] + 0.05)
    lean = math.radians(20 if moto else 38)
    sh = (hip[0] + 0.3 * Hr * math.sin(lean), hip[1] + 0.3 * Hr * math.cos(lean))

    def leg(phase: float) -> None:
        if rs is None:
            return
        foot = peg if moto else (peg[0] + 0.17 * math.cos(phase), peg[1] + 0.17 * math.sin(phase))
        kn = _knee(hip, foot, 0.25 * Hr, 0.26 * Hr, 1.0)
        cv.fill(rs["legs"], P(bar2(hip, kn, 0.08 * Hr, 0.06 * Hr)))
        cv.fill(rs["legs"], P(bar2(kn, foot, 0.06 * Hr, 0.045 * Hr)))

    leg(0.6)  # far leg
    for hx in hubs:
        if moto:
            cv.fill(seg_tyre, P(circle2((hx, r), r, 18)))
            cv.fill(seg_metal, P(circle2((hx, r), 0.55 * r, 14)))
        else:  # ring tyre: even-odd filling leaves the spokes' area see-through
            cv.fill(seg_tyre, [P(circle2((hx, r), r, 18)), P(circle2((hx, r), r - 0.05, 18))])
            cv.fill(seg_metal, P(circle2((hx, r), 0.04, 6)))
    if moto:
        cv.fill(seg_dark, P([(-0.25 * k, 0.3), (-0.3 * k, 0.6), (0.25 * k, 0.65), (0.3 * k, 0.3)]))
        cv.fill(
            seg_frame, P([(-0.15 * k, 0.62), (0.3 * k, 0.95), (0.48 * k, 0.9), (0.35 * k, 0.55)])
        )
        cv.fill(seg_metal, P(bar2((-0.1 * k, 0.32), (-0.75 * k, 0.45), 0.08)))  # exhaust
        cv.fill(
            seg_frame, P([(-0.88 * k, 0.76), (-0.5 * k, 0.9), (-0.4 * k, 0.72), (-0.8 * k, 0.68)])
        )
        cv.fill(
            seg_dark, P([(-0.55 * k, 0.74), (-0.55 * k, 0.84), (-0.1 * k, 0.88), (-0.1 * k, 0.76)])
        )
        cv.fill(seg_metal, P(bar2((0.5 * k, 1.0), (hubs[1], r), 0.07)))
        cv.fill(cv.segment(label, (240, 240, 220), obj=obj), P(circle2((0.6 * k, 0.9), 0.07, 10)))
    else:
        head_b, head_t = (0.42 * k, 0.75), (0.4 * k, 0.98)
        # fmt: off
        hub_r, hub_f = (hubs[0], r), (hubs[1], r)
        tubes = [(peg, seat), (peg, head_b), (seat, head_t), (hub_r, peg), (hub_r, seat)]
        tubes += [(head_b, head_t), (head_b, hub_f)]
        for p0, p1 in tubes:
            cv.fill(seg_frame, P(bar2(p0, p1, 0.045)))
        cv.fill(seg_dark, P(rect2(seat[0] - 0.1, seat[0] + 0.08, seat[1], seat[1] + 0.05)))
    cv.fill(seg_dark, P(bar2((bar[0] - 0.05, bar[1]), (bar[0] + 0.08, bar[1] + 0.02), 0.05)))
    if rs is None:
        return
    cv.fill(rs["shirt"], P(bar2(hip, sh, 0.16 * Hr, 0.2 * Hr)))
    leg(0.6 + math.pi)  # near leg
    cv.fill(rs["arm"], P(bar2(sh, bar, 0.06 * Hr, 0.05 * Hr)))
    hc = (sh[0] + 0.05 * Hr, sh[1] + 0.09 * Hr)
    cv.fill(rs["skin"], P(circle2(hc, 0.065 * Hr)))
    cv.fill(
        rs["bag"] if moto else rs["hair"],
        P(circle2((hc[0] - 0.01, hc[1] + 0.025 * Hr), 0.06 * Hr, 12)),
    )
