"""Rendered synthetic frames kept on disk, so that training renders each frame once.

A ``kind: synth`` dataset renders frame ``index`` of sequence ``seed`` on first use and writes it
here; later epochs, later runs, resumed runs and other DataLoader workers read it back instead of
rendering again (reading the three PNGs of a frame takes a third (512x1024) to a fifth (256x512)
of the CPU time of rendering it). The frames read back are the rendered arrays exactly: PNG is
lossless and instance ids fit 16 bits.

Layout: ``<root>/<key>/<index>_image.png`` (RGB), ``_semantic.png`` (uint8 trainIds) and
``_instance.png`` (uint16 instanceIds), where ``<key>`` names the seed, the size and a digest of
everything the pixels depend on: the generator's source files, the numpy and OpenCV versions and
the label table. A change to any of them starts a new folder (old ones can be deleted freely).

Every file is written atomically (:mod:`seg_perception.atomic`), the image last: a reader that
finds the image finds the whole frame, and two workers writing the same frame, or a run killed
mid-write, never leave a half-written file behind. An unreadable frame is rendered again.

Root: ``$SEG_PERCEPTION_SYNTH_CACHE`` (``off`` switches the cache off everywhere), else
``$XDG_CACHE_HOME/seg_perception/synth``, else ``~/.cache/seg_perception/synth``. Only frames with
an index below the dataset's ``cache_frames`` are kept, which bounds the disk used (about 1 MB per
512x1024 frame) when a recipe draws from a million-frame sequence.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from seg_perception.atomic import write_bytes_atomic
from seg_perception.labels import LabelTable

__all__ = [
    "DEFAULT_CACHE_FRAMES",
    "SYNTH_CACHE_ENV",
    "CachedFrame",
    "FrameCache",
    "default_synth_cache_dir",
    "generator_digest",
]

SYNTH_CACHE_ENV = "SEG_PERCEPTION_SYNTH_CACHE"
#: frames ``0 .. DEFAULT_CACHE_FRAMES - 1`` of a sequence are cached (~8 GB at 512x1024)
DEFAULT_CACHE_FRAMES = 8000
_OFF = ("off", "0", "false", "no", "none")
_PARTS = ("instance", "semantic", "image")  # write order: the image last


class CachedFrame(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8 RGB
    semantic: np.ndarray  # (H, W) uint8 trainIds
    instance: np.ndarray  # (H, W) int32 instanceIds


def default_synth_cache_dir() -> Path | None:
    """The cache root, or None when ``$SEG_PERCEPTION_SYNTH_CACHE`` is ``off``."""
    env = os.environ.get(SYNTH_CACHE_ENV, "").strip()
    if env.lower() in _OFF:
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seg_perception" / "synth"


@functools.cache
def generator_digest() -> str:
    """Digest of what a rendered frame depends on besides seed, index and size: the source of
    the generator modules and the numpy / OpenCV versions."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for path in sorted(here.glob("synth*.py")):
        if path.name != "synth_cache.py":
            h.update(path.name.encode())
            h.update(path.read_bytes())
    h.update(f"numpy {np.__version__} opencv {cv2.__version__}".encode())
    return h.hexdigest()


def _labels_digest(labels: LabelTable) -> str:
    return hashlib.sha256(repr(tuple(labels.labels)).encode()).hexdigest()


def _encode_png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


class FrameCache:
    """The cached frames of one synthetic sequence at one size (see the module docstring)."""

    def __init__(
        self, root: str | Path, *, seed: int, height: int, width: int, labels: LabelTable
    ) -> None:
        digest = hashlib.sha256(
            f"{generator_digest()} {_labels_digest(labels)}".encode()
        ).hexdigest()[:16]
        self.dir = Path(root) / f"seed{seed}_{height}x{width}_{digest}"
        self.shape = (height, width)

    def path(self, index: int, part: str) -> Path:
        return self.dir / f"{index:07d}_{part}.png"

    def load(self, index: int) -> CachedFrame | None:
        """Frame ``index`` as written by :meth:`store`, or None (absent or unreadable)."""
        if not self.path(index, "image").is_file():
            return None
        arrays = {p: cv2.imread(str(self.path(index, p)), cv2.IMREAD_UNCHANGED) for p in _PARTS}
        image, semantic, instance = arrays["image"], arrays["semantic"], arrays["instance"]
        ok = (
            image is not None
            and semantic is not None
            and instance is not None
            and image.shape == (*self.shape, 3)
            and semantic.shape == self.shape
            and instance.shape == self.shape
            and semantic.dtype == np.uint8
            and instance.dtype == np.uint16
        )
        if not ok:
            return None
        return CachedFrame(
            cv2.cvtColor(image, cv2.COLOR_BGR2RGB), semantic, instance.astype(np.int32)
        )

    def store(self, index: int, frame: CachedFrame) -> bool:
        """Write frame ``index``; False (nothing written) when it cannot be kept exactly."""
        inst = frame.instance
        if inst.size and (int(inst.min()) < 0 or int(inst.max()) > 65535):
            return False
        data = {
            "instance": _encode_png(inst.astype(np.uint16)),
            "semantic": _encode_png(np.ascontiguousarray(frame.semantic, dtype=np.uint8)),
            "image": _encode_png(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)),
        }
        for part in _PARTS:
            write_bytes_atomic(self.path(index, part), data[part])
        return True
