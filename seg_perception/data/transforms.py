"""Training-time augmentation on NumPy samples, and the conversion to tensors.

A *sample* is a dict ``{"image": (H, W, 3) uint8 RGB, "semantic": (H, W) uint8 trainIds (255 =
void), "instance": (H, W) int32 Cityscapes instanceIds or None, "name": str}``. Every random
transform takes an explicit ``np.random.Generator`` so that a sample's augmentation is a pure
function of the generator's seed (the trainer seeds it per sample from the run seed, stage,
iteration and position, which makes ``--resume`` exact and independent of data-loader workers).

Transforms, in the order :func:`augment` applies them:

- random scale, factor uniform in the recipe's range (GUN: "rescaling image with a scale factor
  between 0.5 and 2"; ShelfNet "scaled between 0.5 to 2"; ASP model "from 0.8 to 1");
- rotation, angle uniform in ``[-deg, deg]`` (ShelfNet: "randomly rotated between -10 and 10
  degrees"); pixels rotated in from outside are void;
- horizontal flip with probability 1/2;
- crop of a fixed size at a uniform position; an image smaller than the crop is padded first
  (image with zeros, labels with the ignore label);
- colour jitter: "modifying image brightness, saturation and contrast in random-order" (GUN
  Table 3), each factor uniform in ``[1 - s, 1 + s]``;
- PCA lighting jitter "from [13]" (AlexNet) with "sigma = 0.1": add ``V @ (a * lambda)`` with
  ``a ~ N(0, sigma)`` and the ImageNet RGB eigen-decomposition below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from seg_perception.labels import IGNORE_ID

__all__ = [
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "AugmentConfig",
    "Sample",
    "augment",
    "color_jitter",
    "crop",
    "hflip",
    "image_to_tensor",
    "lighting_jitter",
    "pad_to",
    "resize",
    "rotate",
]

Sample = dict[str, Any]

# Eigenvalues / eigenvectors (columns) of the RGB covariance of ImageNet pixels in 0..1, as
# published with AlexNet's PCA colour augmentation and reused by most lighting-noise ports.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
IMAGENET_EIGVEC = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of one recipe; the defaults do nothing.

    ``scale``: ``(min, max)`` factor range; ``rotate``: max degrees; ``flip``: horizontal flip
    with p = 0.5; ``crop``: ``(height, width)`` or None; ``color_jitter``: strength ``s`` of the
    brightness / contrast / saturation factors; ``lighting``: sigma of the PCA lighting noise;
    ``resize``: ``(height, width)`` every sample is resized to before the random transforms
    (None keeps the source size).
    """

    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0
    flip: bool = False
    crop: tuple[int, int] | None = None
    color_jitter: float = 0.0
    lighting: float = 0.0
    resize: tuple[int, int] | None = None


# --------------------------------------------------------------------------------- geometry
def _labels(sample: Sample) -> list[str]:
    return [k for k in ("semantic", "instance") if sample.get(k) is not None]


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize to ``(height, width)``: image bilinear (area when shrinking), labels nearest."""
    h, w = size
    img = sample["image"]
    if img.shape[:2] == (h, w):
        return sample
    shrink = h * w < img.shape[0] * img.shape[1]
    out = dict(sample)
    out["image"] = cv2.resize(
        img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    for k in _labels(sample):
        out[k] = cv2.resize(sample[k], (w, h), interpolation=cv2.INTER_NEAREST)
    return out


def rotate(sample: Sample, degrees: float) -> Sample:
    """Rotate about the image centre by ``degrees`` (counter-clockwise), keeping the size.

    Image bilinear with black borders, labels nearest with the ignore label (semantic) and
    instanceId 0 (= labelId "unlabeled") where the rotated frame has no source pixel.
    """
    if degrees == 0.0:
        return sample
    h, w = sample["image"].shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    out = dict(sample)
    out["image"] = cv2.warpAffine(
        sample["image"], m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
    )
    if sample.get("semantic") is not None:
        out["semantic"] = cv2.warpAffine(
            sample["semantic"], m, (w, h), flags=cv2.INTER_NEAREST, borderValue=IGNORE_ID
        )
    if sample.get("instance") is not None:
        # cv2 has no int32 warp with nearest for all builds; int32 is supported by remap-based
        # warpAffine with INTER_NEAREST, which is exact for label values.
        out["instance"] = cv2.warpAffine(
            sample["instance"], m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0
        )
    return out


def hflip(sample: Sample) -> Sample:
    """Mirror left-right (image and labels)."""
    out = dict(sample)
    out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
    for k in _labels(sample):
        out[k] = np.ascontiguousarray(sample[k][:, ::-1])
    return out


def pad_to(sample: Sample, size: tuple[int, int]) -> Sample:
    """Pad bottom/right to at least ``(height, width)``: image 0, semantic 255, instance 0."""
    h, w = sample["image"].shape[:2]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if not (ph or pw):
        return sample
    out = dict(sample)
    out["image"] = np.pad(sample["image"], ((0, ph), (0, pw), (0, 0)))
    if sample.get("semantic") is not None:
        out["semantic"] = np.pad(sample["semantic"], ((0, ph), (0, pw)), constant_values=IGNORE_ID)
    if sample.get("instance") is not None:
        out["instance"] = np.pad(sample["instance"], ((0, ph), (0, pw)))
    return out


def crop(sample: Sample, size: tuple[int, int], rng: np.random.Generator) -> Sample:
    """Random ``(height, width)`` crop at a uniform position; pads with ignore first if needed."""
    sample = pad_to(sample, size)
    h, w = sample["image"].shape[:2]
    y = int(rng.integers(0, h - size[0] + 1))
    x = int(rng.integers(0, w - size[1] + 1))
    out = dict(sample)
    out["image"] = np.ascontiguousarray(sample["image"][y : y + size[0], x : x + size[1]])
    for k in _labels(sample):
        out[k] = np.ascontiguousarray(sample[k][y : y + size[0], x : x + size[1]])
    return out


# --------------------------------------------------------------------------------- photometric
def _gray(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation, each by a factor in ``[1-s, 1+s]``, random order.

    ``image`` ``(H, W, 3)`` uint8 -> uint8. Brightness scales the pixels; contrast blends with the
    mean grey level; saturation blends with the per-pixel grey image.
    """
    if strength <= 0.0:
        return image
    img = image.astype(np.float32)
    for op in rng.permutation(3):
        f = float(rng.uniform(1.0 - strength, 1.0 + strength))
        if op == 0:
            img = img * f
        elif op == 1:
            img = (img - _gray(img).mean()) * f + _gray(img).mean()
        else:
            g = _gray(img)[..., None]
            img = (img - g) * f + g
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def lighting_jitter(
    image: np.ndarray,
    sigma: float,
    rng: np.random.Generator,
    *,
    eigval: np.ndarray = IMAGENET_EIGVAL,
    eigvec: np.ndarray = IMAGENET_EIGVEC,
) -> np.ndarray:
    """AlexNet PCA lighting noise: ``image/255 + eigvec @ (alpha * eigval)``, ``alpha ~ N(0, s)``.

    The same RGB offset is added to every pixel. ``(H, W, 3)`` uint8 -> uint8.
    """
    if sigma <= 0.0:
        return image
    alpha = rng.normal(0.0, sigma, size=3).astype(np.float32)
    rgb = (eigvec @ (alpha * eigval)).astype(np.float32) * 255.0
    return np.clip(image.astype(np.float32) + rgb + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------- pipeline
def augment(sample: Sample, cfg: AugmentConfig, rng: np.random.Generator) -> Sample:
    """Apply the recipe's augmentation in the documented order; returns a new sample dict."""
    if cfg.resize is not None:
        sample = resize(sample, cfg.resize)
    lo, hi = cfg.scale
    if (lo, hi) != (1.0, 1.0):
        f = float(rng.uniform(lo, hi))
        h, w = sample["image"].shape[:2]
        sample = resize(sample, (max(1, round(h * f)), max(1, round(w * f))))
    if cfg.rotate > 0.0:
        sample = rotate(sample, float(rng.uniform(-cfg.rotate, cfg.rotate)))
    if cfg.flip and rng.random() < 0.5:
        sample = hflip(sample)
    if cfg.crop is not None:
        sample = crop(sample, cfg.crop, rng)
    if cfg.color_jitter > 0.0:
        sample = {**sample, "image": color_jitter(sample["image"], cfg.color_jitter, rng)}
    if cfg.lighting > 0.0:
        sample = {**sample, "image": lighting_jitter(sample["image"], cfg.lighting, rng)}
    return sample


def image_to_tensor(
    image: np.ndarray,
    *,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32 in 0..1; ``(x - mean) / std`` if given."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        t = (t - m) / s
    return t


def scale_range_ok(scale: tuple[float, float]) -> bool:
    """``0 < min <= max`` and both finite."""
    lo, hi = scale
    return math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo <= hi
