"""Painting surface of the synthetic street-scene generator (see :mod:`seg_perception.data.synth`).

Everything is painted into ONE map of segment ids (``uint16``): a segment is a surface with a
labelId, an optional object (instance) and a look (RGB colour, texture amplitudes, a vertical
gradient, whether ground shadows darken it). Semantic, instance and labelId maps are look-ups of the
final segment map and the camera image is rendered from the same map, so the ground truth follows
the painted occlusion exactly, pixel for pixel. Blur and noise touch the image only.

Geometry: a pinhole camera over a flat ground plane. World axes: ``X`` right, ``Y`` up, ``Z``
forward (metres), camera at ``(0, height, 0)`` looking along ``+Z``. An optional road bend shifts
every point sideways by ``bend * Z**2`` so the whole street curves consistently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import cv2
import numpy as np
from numpy.typing import ArrayLike

_SHIFT = 4  # sub-pixel bits for cv2 polygon filling (far objects stay well-shaped)
_MAX_PX = 1 << 20  # clamp projected coordinates (keeps cv2's fixed-point maths in range)
_NORMAL = NormalDist()
_Z_MIN = 0.2  # metres; points nearer than this are pushed back (callers keep geometry beyond it)


@dataclass(frozen=True)
class Camera:
    """Pinhole camera over the ground plane.

    Attributes:
        f: focal length in pixels.
        cx: principal point column in pixels.
        horizon: image row of the horizon in pixels.
        height: camera height above the ground in metres.
        bend: road curvature; world ``X`` is shifted by ``bend * Z**2``.
    """

    f: float
    cx: float
    horizon: float
    height: float
    bend: float = 0.0

    def project(self, pts: np.ndarray) -> np.ndarray:
        """World points ``(..., 3)`` ``(X, Y, Z)`` -> pixel coordinates ``(..., 2)`` ``(u, v)``."""
        p = np.asarray(pts, dtype=np.float64)
        z = np.maximum(p[..., 2], _Z_MIN)
        inv = self.f / z
        out = np.empty((*p.shape[:-1], 2))
        out[..., 0] = (p[..., 0] + self.bend * z * z) * inv + self.cx
        out[..., 1] = (self.height - p[..., 1]) * inv + self.horizon
        return out

    def scale(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.f / max(z, _Z_MIN)


def disc(
    center: ArrayLike, radius: float, axis_a: ArrayLike, axis_b: ArrayLike, n: int = 16
) -> np.ndarray:
    """Polygon ``(n, 3)`` approximating a circle of ``radius`` in the plane spanned by two axes."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return (
        np.asarray(center, dtype=np.float64)
        + radius * np.cos(t)[:, None] * np.asarray(axis_a, dtype=np.float64)
        + radius * np.sin(t)[:, None] * np.asarray(axis_b, dtype=np.float64)
    )


Pts = list[tuple[float, float]]


def rect2(e0: float, e1: float, y0: float, y1: float) -> Pts:
    """Axis-aligned rectangle in 2-D figure coordinates ``(e, y)``."""
    return [(e0, y0), (e0, y1), (e1, y1), (e1, y0)]


def bar2(
    p0: tuple[float, float], p1: tuple[float, float], w0: float, w1: float | None = None
) -> Pts:
    """Quad of a limb / tube from ``p0`` to ``p1`` with widths ``w0`` and ``w1`` at its ends."""
    w1 = w0 if w1 is None else w1
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    n = math.hypot(dx, dy) or 1e-6
    nx, ny = -dy / n, dx / n
    return [
        (p0[0] + nx * w0 / 2, p0[1] + ny * w0 / 2),
        (p1[0] + nx * w1 / 2, p1[1] + ny * w1 / 2),
        (p1[0] - nx * w1 / 2, p1[1] - ny * w1 / 2),
        (p0[0] - nx * w0 / 2, p0[1] - ny * w0 / 2),
    ]


def circle2(c: tuple[float, float], r: float, n: int = 14) -> Pts:
    """Polygon of ``n`` points approximating a circle in 2-D figure coordinates."""
    return [
        (c[0] + r * math.cos(a), c[1] + r * math.sin(a))
        for a in np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    ]


class Canvas:
    """Segment map plus segment table; paints world polygons and renders the final frame.

    Args:
        height, width: image size in pixels.
        camera: the projection used by every ``fill`` call.

    Segment ``0`` is reserved (never painted); every frame starts by painting the sky over all.
    """

    def __init__(self, height: int, width: int, camera: Camera) -> None:
        self.height = height
        self.width = width
        self.camera = camera
        self.seg = np.zeros((height, width), dtype=np.uint16)
        self.shade = np.full((height, width), 255, dtype=np.uint8)
        self._label: list[int] = [0]
        self._obj: list[int] = [-1]
        self._color: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
        self._tex: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
        self._grad: list[float] = [0.0]
        self._ground: list[bool] = [False]
        self.object_labels: list[int] = []
        self._idx: np.ndarray | None = None

    def _index(self) -> np.ndarray:
        """The segment map as ``intp`` (``np.take`` is several times faster with it), cached."""
        if self._idx is None:
            self._idx = self.seg.astype(np.intp)
        return self._idx

    # -- registration -------------------------------------------------------------------------
    def new_object(self, label_id: int) -> int:
        """Register one thing instance of ``label_id``; returns its object index."""
        self.object_labels.append(int(label_id))
        return len(self.object_labels) - 1

    def segment(
        self,
        label_id: int,
        color: ArrayLike,
        tex: tuple[float, float, float] = (0.03, 0.03, 0.03),
        *,
        obj: int = -1,
        ground: bool = False,
        grad: float = 0.0,
    ) -> int:
        """Register a surface; returns its segment id.

        Args:
            label_id: Cityscapes-style labelId of the surface.
            color: RGB in 0..255 (floats allowed, lighting is applied at render time).
            tex: relative amplitudes of the fine / medium / coarse texture fields.
            obj: object index from :meth:`new_object` for thing parts, ``-1`` otherwise.
            ground: ground-plane surface (ground shadows darken it).
            grad: relative brightness change per image height below the horizon (sky haze).
        """
        if len(self._label) >= 65535:
            raise RuntimeError("synthetic frame uses more than 65534 segments")
        c = np.clip(np.asarray(color, dtype=np.float64), 0.0, 255.0)
        self._label.append(int(label_id))
        self._obj.append(int(obj))
        self._color.append((float(c[0]), float(c[1]), float(c[2])))
        self._tex.append((float(tex[0]), float(tex[1]), float(tex[2])))
        self._grad.append(float(grad))
        self._ground.append(bool(ground))
        return len(self._label) - 1

    # -- painting -----------------------------------------------------------------------------
    def _px(self, polys: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if isinstance(polys, np.ndarray):  # (N, 3) one polygon or (K, N, 3) a batch
            batch = polys[None] if polys.ndim == 2 else polys
            uv = self.camera.project(batch) if batch.shape[-1] == 3 else batch
            return list(self._fixed(uv))
        return [self._fixed(self.camera.project(p) if p.shape[-1] == 3 else p) for p in polys]

    @staticmethod
    def _fixed(uv: np.ndarray) -> np.ndarray:
        lim = float(_MAX_PX * (1 << _SHIFT))
        fixed = np.rint(uv * (1 << _SHIFT))
        np.clip(fixed, -lim, lim, out=fixed)
        return fixed.astype(np.int32)

    def fill(self, seg: int, polys: list[np.ndarray] | np.ndarray) -> None:
        """Paint polygons with segment ``seg``.

        ``polys`` is one polygon ``(N, 3)``, a batch ``(K, N, 3)`` or a list of polygons; points
        are world ``(X, Y, Z)`` or, with 2 coordinates, pixels ``(u, v)``. Polygons given in ONE
        call must not overlap (cv2 fills them even-odd; a polygon inside another cuts a hole).
        """
        if len(polys):
            self._idx = None
            cv2.fillPoly(self.seg, self._px(polys), int(seg), lineType=cv2.LINE_8, shift=_SHIFT)

    def fill_each(self, seg: int, polys: list[np.ndarray]) -> None:
        """Like :meth:`fill` but one call per polygon, so overlapping polygons are fine."""
        for p in polys:
            self.fill(seg, p)

    def shadow(self, polys: list[np.ndarray], factor: float) -> None:
        """Darken ground surfaces under world polygons by ``factor`` (0..1, 1 = no shadow)."""
        value = round(255 * float(np.clip(factor, 0.0, 1.0)))
        for p in polys:
            cv2.fillPoly(self.shade, self._px(p), value, lineType=cv2.LINE_8, shift=_SHIFT)

    # -- outputs ------------------------------------------------------------------------------
    def ground_truth(
        self, label_to_train: np.ndarray, thing_label_ids: set[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Semantic trainIds ``(H, W)`` uint8, instanceIds ``(H, W)`` int32, labelIds uint8.

        Instance ids follow Cityscapes ``*_instanceIds.png``: thing pixels
        ``labelId * 1000 + k`` with ``k = 0, 1, ...`` over the VISIBLE instances of that class in
        creation order; every other pixel carries its labelId.
        """
        n = len(self._label)
        counts = np.bincount(self.seg.ravel(), minlength=n)
        labels = np.asarray(self._label, dtype=np.int64)
        objs = np.asarray(self._obj, dtype=np.int64)
        visible_obj = np.zeros(len(self.object_labels), dtype=bool)
        has_obj = (objs >= 0) & (counts > 0)
        visible_obj[objs[has_obj]] = True
        next_k: dict[int, int] = {}
        obj_inst = np.zeros(len(self.object_labels), dtype=np.int64)
        for o, lab in enumerate(self.object_labels):
            if visible_obj[o]:
                k = next_k.get(lab, 0)
                if k >= 1000:
                    raise RuntimeError(f"more than 1000 visible instances of labelId {lab}")
                next_k[lab] = k + 1
                obj_inst[o] = lab * 1000 + k
        inst_lut = labels.copy()
        for s in range(n):
            if objs[s] >= 0 and labels[s] in thing_label_ids:
                inst_lut[s] = obj_inst[objs[s]]
        label_lut = labels.astype(np.uint8)
        train_lut = label_to_train[label_lut]
        idx = self._index()
        return (
            np.take(train_lut, idx),
            np.take(inst_lut.astype(np.int32), idx),
            np.take(label_lut, idx),
        )

    def render(
        self,
        rng: np.random.Generator,
        *,
        gain: np.ndarray,
        blur_sigma: float,
        noise: float,
    ) -> np.ndarray:
        """The camera image ``(H, W, 3)`` uint8 RGB.

        Args:
            rng: pixel-level randomness (textures, noise).
            gain: per-channel multiplier ``(3,)`` (global brightness and colour cast).
            blur_sigma: Gaussian blur sigma in pixels (``< 0.3`` = none).
            noise: amplitude of the additive sensor noise in grey levels.
        """
        H, W = self.height, self.width
        color = np.asarray(self._color, dtype=np.float32) * np.asarray(gain, dtype=np.float32)
        idx = self._index()
        base = np.take(np.clip(color, 0, 255).astype(np.uint8), idx, axis=0)
        tex = np.asarray(self._tex, dtype=np.float32)
        mod = np.ones((H, W), dtype=np.float32)
        tmp = np.empty((H, W), dtype=np.float32)
        for j, div in enumerate((2, 6, 40)):  # fine / medium / coarse texture fields
            if not tex[:, j].any():
                continue
            h, w = max(2, H // div), max(2, W // div)
            small = rng.standard_normal((h, w), dtype=np.float32) * 1.5  # interpolation shrinks it
            field = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
            np.multiply(np.take(tex[:, j], idx), field, out=tmp)
            mod += tmp
        grad = np.asarray(self._grad, dtype=np.float32)
        if grad.any():
            ramp = (np.arange(H, dtype=np.float32) - self.camera.horizon) / H
            np.multiply(np.take(grad, idx), ramp[:, None], out=tmp)
            mod += tmp
        ground = np.asarray(self._ground, dtype=np.float32)
        if ground.any() and (self.shade < 255).any():
            dark = (255.0 - self.shade.astype(np.float32)) * (1.0 / 255.0)
            np.multiply(np.take(ground, idx), dark, out=tmp)
            mod *= 1.0 - tmp
        np.clip(mod, 0.0, 4.0, out=mod)
        img = cv2.multiply(base, cv2.merge([mod, mod, mod]), dtype=cv2.CV_8U)
        if blur_sigma >= 0.3:
            img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
        if noise > 0:  # Gaussian sensor noise from random bytes through a quantile table
            amp = int(np.ceil(3 * noise))
            gauss = np.array([_NORMAL.inv_cdf((k + 0.5) / 256.0) for k in range(256)])
            lut = np.clip(np.round(amp + noise * gauss), 0, 2 * amp).astype(np.uint8)
            raw = np.frombuffer(rng.bytes(H * W * 3), dtype=np.uint8).reshape(H, W, 3)
            noisy = cv2.add(img, cv2.LUT(raw, lut))
            img = cv2.subtract(noisy, (amp, amp, amp, 0))  # type: ignore[call-overload]
        return img
