"""Reader of the Cityscapes folder format (the official layout and naming).

::

    root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/{gtFine|gtCoarse}/{split}/{city}/{city}_{seq}_{frame}_{gtFine|gtCoarse}_labelIds.png
    root/{gtFine|gtCoarse}/{split}/{city}/{city}_{seq}_{frame}_{gtFine|gtCoarse}_instanceIds.png

labelIds are mapped to trainIds through the label table; instanceIds (16-bit PNG) are
``labelId * 1000 + k`` on thing pixels with an instance and the plain labelId elsewhere (a group
of things without an instance keeps ``labelId < 1000``). :func:`instance_targets` turns them into
Mask R-CNN targets (boxes, thing trainIds, masks).

Missing or unreadable files are skipped with a :class:`DataWarning` naming the file, or raise
:class:`DataError` with ``strict=True``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from seg_perception.errors import SegError
from seg_perception.labels import CITYSCAPES, LabelTable

__all__ = [
    "ANNOTATIONS",
    "CityscapesDataset",
    "CityscapesFrame",
    "DataError",
    "DataWarning",
    "find_cityscapes_frames",
    "instance_targets",
    "read_cityscapes_frame",
    "read_label_ids",
]

ANNOTATIONS = ("gtFine", "gtCoarse")
IMAGE_SUFFIX = "_leftImg8bit.png"
INSTANCE_DIVISOR = 1000


class DataError(SegError, ValueError):
    """A data file is missing or corrupt (raised in strict mode); the message names the file."""


class DataWarning(UserWarning):
    """A data file was skipped; the message names the file."""


def report_problem(message: str, *, strict: bool) -> None:
    """Raise :class:`DataError` (strict) or warn with :class:`DataWarning` and go on."""
    if strict:
        raise DataError(message)
    warnings.warn(message, DataWarning, stacklevel=3)


@dataclass(frozen=True)
class CityscapesFrame:
    """Paths of one frame; ``instance`` is None when the annotation has no instanceIds file."""

    name: str  # "{city}_{seq}_{frame}"
    image: Path
    label_ids: Path
    instance: Path | None


def find_cityscapes_frames(
    root: str | Path,
    split: str,
    *,
    annotation: str = "gtFine",
    with_instances: bool = True,
    strict: bool = False,
) -> list[CityscapesFrame]:
    """List the frames of ``split`` that have an image and a labelIds file, sorted by name.

    A frame whose labelIds (or, with ``with_instances``, instanceIds) file is missing is skipped
    with a warning naming that file (``strict``: :class:`DataError`).
    """
    if annotation not in ANNOTATIONS:
        raise ValueError(f"unknown annotation {annotation!r}; valid: {', '.join(ANNOTATIONS)}")
    root = Path(root)
    img_dir = root / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise DataError(f"Cityscapes folder {root}: no image directory {img_dir}")
    frames = []
    for img in sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        name = img.name[: -len(IMAGE_SUFFIX)]
        gt_dir = root / annotation / split / img.parent.name
        label_ids = gt_dir / f"{name}_{annotation}_labelIds.png"
        instance = gt_dir / f"{name}_{annotation}_instanceIds.png"
        if not label_ids.is_file():
            report_problem(f"skipping {img}: missing label file {label_ids}", strict=strict)
            continue
        if with_instances and not instance.is_file():
            report_problem(f"skipping {img}: missing instance file {instance}", strict=strict)
            continue
        frames.append(CityscapesFrame(name, img, label_ids, instance if with_instances else None))
    if not frames:
        raise DataError(f"Cityscapes folder {root}: no usable frames in {img_dir} ({annotation})")
    return frames


def _read(path: Path, flags: int) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    arr = None if data is None or data.size == 0 else cv2.imdecode(data, flags)
    if arr is None:
        raise DataError(f"cannot read image file {path} (missing, empty or corrupt)")
    return arr


def read_label_ids(path: Path) -> np.ndarray:
    """A ``*_labelIds.png`` as it is stored: ``(H, W)`` uint8 labelIds (:class:`DataError` naming
    the file when it cannot be decoded or is not one channel)."""
    label_ids = _read(path, cv2.IMREAD_UNCHANGED)
    if label_ids.ndim != 2:
        raise DataError(f"{path}: labelIds must be one channel, got {label_ids.shape}")
    return label_ids


def read_cityscapes_frame(
    frame: CityscapesFrame, labels: LabelTable = CITYSCAPES
) -> dict[str, object]:
    """Decode one frame -> sample dict (image RGB uint8, semantic trainIds uint8, instance int32).

    Raises :class:`DataError` naming the file when a file cannot be decoded or sizes disagree.
    """
    bgr = _read(frame.image, cv2.IMREAD_COLOR)
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    label_ids = read_label_ids(frame.label_ids)
    if label_ids.shape != image.shape[:2]:
        raise DataError(
            f"{frame.label_ids}: size {label_ids.shape} differs from the image {image.shape[:2]}"
        )
    sample: dict[str, object] = {
        "image": image,
        "semantic": labels.to_train_ids(label_ids),
        "instance": None,
        "name": frame.name,
    }
    if frame.instance is not None:
        inst = _read(frame.instance, cv2.IMREAD_UNCHANGED)
        if inst.ndim != 2 or inst.shape != image.shape[:2]:
            raise DataError(
                f"{frame.instance}: instanceIds must be one channel of size {image.shape[:2]}, "
                f"got {inst.shape}"
            )
        sample["instance"] = inst.astype(np.int32)
    return sample


class CityscapesDataset(torch.utils.data.Dataset):
    """Map-style dataset over a Cityscapes-format folder; items are sample dicts (see module doc).

    A frame that fails to decode is reported (warning naming the file, or :class:`DataError` when
    ``strict``) and replaced by the next readable frame, so an epoch keeps its length.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        annotation: str = "gtFine",
        labels: LabelTable = CITYSCAPES,
        with_instances: bool = True,
        strict: bool = False,
        max_frames: int = 0,
    ) -> None:
        self.root = Path(root)
        self.labels = labels
        self.strict = strict
        self.frames = find_cityscapes_frames(
            root, split, annotation=annotation, with_instances=with_instances, strict=strict
        )
        if max_frames > 0:
            self.frames = self.frames[:max_frames]
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, object]:
        n = len(self.frames)
        for step in range(n):
            i = (index + step) % n
            if i in self.bad:
                continue
            try:
                return read_cityscapes_frame(self.frames[i], self.labels)
            except DataError as err:
                self.bad.add(i)
                report_problem(f"skipping frame {self.frames[i].name}: {err}", strict=self.strict)
        raise DataError(f"Cityscapes folder {self.root}: no readable frame left")


def instance_targets(
    instance: np.ndarray, labels: LabelTable = CITYSCAPES, *, min_area: int = 1
) -> dict[str, Tensor]:
    """Cityscapes instanceIds ``(H, W)`` -> Mask R-CNN targets of the thing instances.

    Returns ``boxes`` ``(K, 4)`` float32 ``(x0, y0, x1, y1)`` with exclusive ``x1, y1`` (so a
    one-pixel instance has a positive width), ``labels`` ``(K,)`` int64 thing trainIds, ``masks``
    ``(K, H, W)`` uint8, ordered by instanceId. Ids below 1000 (stuff, or things without an
    instance) and instances of labels without a thing trainId are left out, as are instances
    with fewer than ``min_area`` pixels (e.g. cut by a crop).
    """
    inst = np.asarray(instance)
    h, w = inst.shape
    ids = np.unique(inst[inst >= INSTANCE_DIVISOR])
    boxes, classes, masks = [], [], []
    for iid in ids.tolist():
        train_id = int(labels.label_to_train[(iid // INSTANCE_DIVISOR) & 0xFF])
        if not labels.is_thing(train_id):
            continue
        mask = inst == iid
        if int(mask.sum()) < min_area:
            continue
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        boxes.append([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1])
        classes.append(train_id)
        masks.append(mask)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(classes, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8))
        if masks
        else torch.zeros((0, h, w), dtype=torch.uint8),
    }
