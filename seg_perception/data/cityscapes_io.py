"""Write frames as a Cityscapes-format folder (the official layout and file naming).

::

    root/leftImg8bit/{split}/{city}/{name}_leftImg8bit.png     RGB image
    root/gtFine/{split}/{city}/{name}_gtFine_labelIds.png       uint8 labelIds
    root/gtFine/{split}/{city}/{name}_gtFine_instanceIds.png    uint16 instanceIds
    root/gtFine/{split}/{city}/{name}_gtFine_color.png          label colours

with ``name = {city}_{seq:06d}_{frame:06d}``.

``labelIds`` hold Cityscapes labelIds (not trainIds); ``instanceIds`` is a 16-bit PNG as in the
dataset (thing pixels ``labelId * 1000 + k``, other pixels their labelId); the colour image is RGB
(the brief asks for RGB; the official files carry an extra opaque alpha channel). Every file is
written to a temporary name in its folder and renamed, so a reader never sees half a PNG.
The reader (a ``Dataset``) is a separate module; :func:`list_cityscapes_frames` and
:func:`cityscapes_paths` are the seam it builds on.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from ..labels import CITYSCAPES, LabelTable

if TYPE_CHECKING:
    from .synth import SynthFrame

_NAME = re.compile(r"^([A-Za-z0-9-]+)_(\d{6})_(\d{6})$")


class CityscapesPaths(NamedTuple):
    """Files of one frame (ground-truth files may be absent, e.g. in a test split)."""

    image: Path
    label_ids: Path
    instance_ids: Path
    color: Path


def frame_name(city: str, seq: int, frame: int) -> str:
    """``{city}_{seq:06d}_{frame:06d}``, the Cityscapes frame stem."""
    if not re.fullmatch(r"[A-Za-z0-9-]+", city):
        raise ValueError(f"city name must be letters, digits or '-', got {city!r}")
    if not (0 <= seq <= 999_999 and 0 <= frame <= 999_999):
        raise ValueError(f"sequence and frame numbers must be in 0..999999, got {seq}, {frame}")
    return f"{city}_{seq:06d}_{frame:06d}"


def cityscapes_paths(root: str | Path, split: str, name: str) -> CityscapesPaths:
    """Paths of frame ``name`` (``city_seq_frame``) of ``split`` under ``root``."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"not a Cityscapes frame name (city_NNNNNN_NNNNNN): {name!r}")
    city = m.group(1)
    gt = Path(root) / "gtFine" / split / city
    return CityscapesPaths(
        Path(root) / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
        gt / f"{name}_gtFine_labelIds.png",
        gt / f"{name}_gtFine_instanceIds.png",
        gt / f"{name}_gtFine_color.png",
    )


def list_cityscapes_frames(root: str | Path, split: str) -> list[str]:
    """Sorted frame names (``city_seq_frame``) with an image in ``leftImg8bit/{split}``."""
    base = Path(root) / "leftImg8bit" / split
    if not base.is_dir():
        raise FileNotFoundError(f"no Cityscapes split folder: {base}")
    names = []
    for p in base.glob("*/*_leftImg8bit.png"):
        stem = p.name[: -len("_leftImg8bit.png")]
        m = _NAME.match(stem)
        if m is not None and p.parent.name == m.group(1):
            names.append(stem)
    return sorted(names)


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def label_color_lut(labels: LabelTable = CITYSCAPES) -> np.ndarray:
    """``(256, 3)`` uint8 RGB colour per labelId (unknown ids black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for lab in labels.labels:
        lut[lab.id] = lab.color
    return lut


def write_cityscapes_frame(
    root: str | Path,
    frame: SynthFrame,
    *,
    split: str = "train",
    city: str = "synth",
    sequence: int = 0,
    labels: LabelTable = CITYSCAPES,
) -> CityscapesPaths:
    """Write the four files of one frame; returns their paths."""
    if frame.instance.size and int(frame.instance.max()) > 65535:
        raise ValueError(
            f"frame {frame.index}: instanceIds exceed 16 bits (max {frame.instance.max()})"
        )
    if frame.instance.size and int(frame.instance.min()) < 0:
        raise ValueError(f"frame {frame.index}: negative instanceIds")
    paths = cityscapes_paths(root, split, frame_name(city, sequence, frame.index))
    paths.image.parent.mkdir(parents=True, exist_ok=True)
    paths.label_ids.parent.mkdir(parents=True, exist_ok=True)
    _write_png(paths.image, cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    _write_png(paths.label_ids, frame.label_ids.astype(np.uint8))
    _write_png(paths.instance_ids, frame.instance.astype(np.uint16))
    color = np.take(label_color_lut(labels), frame.label_ids.astype(np.intp), axis=0)
    _write_png(paths.color, cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
    return paths


def write_cityscapes_folder(
    root: str | Path,
    frames: Iterable[SynthFrame],
    *,
    split: str = "train",
    city: str = "synth",
    sequence: int = 0,
    labels: LabelTable = CITYSCAPES,
    progress: bool = False,
    total: int | None = None,
) -> list[str]:
    """Write frames in the Cityscapes layout under ``root``; returns the frame names written.

    A frame's number in its name is its ``index``; ``sequence`` is the middle number.
    """
    frame_name(city, sequence, 0)  # a bad city or sequence fails before the first frame
    names = []
    for f in tqdm(frames, desc="cityscapes", unit="frame", total=total, disable=not progress):
        p = write_cityscapes_frame(
            root, f, split=split, city=city, sequence=sequence, labels=labels
        )
        names.append(p.image.name[: -len("_leftImg8bit.png")])
    return names
