"""Predictions and ground truth of an offline evaluation in the Cityscapes file layout, read by
the official ``cityscapesscripts`` evaluators as they are.

Frames are named ``city_seq_frame``: a Cityscapes folder's own names, or ``bag_000000_{i:06d}``
for frame ``i`` of a bag (:func:`frame_name`); the scripts match predictions to ground truth by
that prefix. Under the export root, for the split (``val`` for a bag):

* ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png`` (uint8 labelIds) and
  ``..._gtFine_instanceIds.png`` (uint16 Cityscapes instanceIds) -- what
  ``evalPixelLevelSemanticLabeling`` and ``evalInstanceLevelSemanticLabeling`` read;
* ``gtFine/cityscapes_panoptic_<split>.json`` + ``gtFine/cityscapes_panoptic_<split>/
  <name>_gtFine_panoptic.png``: the ground truth in the COCO panoptic format, as
  ``cityscapesscripts.preparation.createPanopticImgs`` writes it (categories = labelIds; stuff and
  crowd segments have their labelId as id, instances ``labelId * 1000 + k``; groups of things
  without an instance are ``iscrowd``; void is 0);
* ``pred/semantic/<name>_pred_labelIds.png``: the real-time net's map (uint8 labelIds);
* ``pred/instance/<name>_pred.txt``: one line ``<mask png> <labelId> <score>`` per thing segment of
  the panoptic output (the masks, 0 / 255 PNGs, beside it in ``masks/``);
* ``pred/panoptic/cityscapes_panoptic_<split>.json`` + ``pred/panoptic/
  cityscapes_panoptic_<split>/<name>_panoptic.png``: the panoptic output in the COCO panoptic format
  (thing pixels without an instance are void) -- what ``evalPanopticSemanticLabeling`` reads.

With ``CITYSCAPES_DATASET=<root>`` and ``CITYSCAPES_RESULTS=<root>/pred/<semantic|instance|
panoptic>`` the official scripts find every file by their defaults (split ``val``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from seg_perception.atomic import atomic_path, write_text_atomic
from seg_perception.labels import PANOPTIC_DIVISOR, LabelTable
from seg_perception.metrics_instance import panoptic_instances
from seg_perception.panoptic import gt_panoptic

__all__ = ["BAG_CITY", "CityscapesExport", "frame_name", "panoptic_segment_image"]

BAG_CITY = "bag"
INSTANCE_DIVISOR = 1000


def frame_name(index: int) -> str:
    """Cityscapes-style name of frame ``index`` of a bag."""
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    return f"{BAG_CITY}_000000_{index:06d}"


def _png(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"PNG encoding failed for {path} ({image.dtype} {image.shape})")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


def panoptic_segment_image(
    panoptic: np.ndarray, labels: LabelTable, *, crowd: bool
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(H, W)`` panoptic ids (``trainId * 1000 + k``) -> (``(H, W)`` int64 COCO segment ids,
    segments info). A segment's id is ``labelId * 1000 + k`` for an instance (``k >= 1``) and its
    labelId for stuff; a thing region with ``k = 0`` is a crowd segment (``iscrowd`` 1) when
    ``crowd`` (ground truth), else void (a prediction that claims no object); void is 0."""
    pan = np.asarray(panoptic).astype(np.int64)
    values = np.unique(pan)
    ids = np.zeros(len(values), np.int64)
    for i, v in enumerate(values.tolist()):
        train_id, k = divmod(v, PANOPTIC_DIVISOR)
        if train_id >= labels.num_classes:
            continue
        thing = labels.is_thing(train_id)
        if thing and k == 0 and not crowd:
            continue
        label_id = int(labels.train_to_label[train_id])
        ids[i] = label_id * INSTANCE_DIVISOR + k if thing and k else label_id
    seg = ids[np.searchsorted(values, pan)]
    info = []
    for sid, area in zip(*(a.tolist() for a in np.unique(seg, return_counts=True)), strict=True):
        if sid == 0:
            continue
        rows, cols = np.nonzero(seg == sid)
        x, y = int(cols.min()), int(rows.min())
        info.append(
            {
                "id": sid,
                "category_id": sid if sid < INSTANCE_DIVISOR else sid // INSTANCE_DIVISOR,
                "iscrowd": int(sid < INSTANCE_DIVISOR and crowd and _is_thing_label(labels, sid)),
                "area": area,
                "bbox": [x, y, int(cols.max()) - x + 1, int(rows.max()) - y + 1],
            }
        )
    return seg, info


def _is_thing_label(labels: LabelTable, label_id: int) -> bool:
    return labels.is_thing(int(labels.label_to_train[label_id]))


def _rgb_ids(seg: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG pixels (``id = R + 256 G + 256^2 B``) in OpenCV's BGR channel order."""
    return np.stack([seg // 65536, (seg // 256) % 256, seg % 256], axis=-1).astype(np.uint8)


class CityscapesExport:
    """Writes the frames of one evaluation (see the module docstring); :meth:`close` writes the
    panoptic JSON files once every frame is in."""

    def __init__(self, root: str | Path, labels: LabelTable, *, split: str = "val") -> None:
        self.root = Path(root)
        self.labels = labels
        self.split = split
        self.gt_panoptic: list[dict[str, Any]] = []
        self.pred_panoptic: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.written: list[Path] = []

    @property
    def panoptic_base(self) -> str:
        return f"cityscapes_panoptic_{self.split}"

    def categories(self) -> list[dict[str, Any]]:
        """The COCO panoptic categories: the evaluated labels, by labelId."""
        return [
            {
                "id": lab.id,
                "name": lab.name,
                "color": list(lab.color),
                "supercategory": lab.category,
                "isthing": int(lab.has_instances),
            }
            for lab in self.labels.labels
            if not lab.ignore_in_eval and lab.train_id < self.labels.num_classes
        ]

    def add(
        self,
        name: str,
        semantic: np.ndarray,
        *,
        gt_semantic: np.ndarray | None = None,
        gt_instance: np.ndarray | None = None,
        gt_label_ids: np.ndarray | None = None,
        panoptic: np.ndarray | None = None,
        segments: list[dict[str, Any]] | None = None,
    ) -> list[Path]:
        """Write one frame ``name`` (``city_seq_frame``): ``semantic`` / ``gt_semantic`` ``(H, W)``
        trainIds, ``gt_instance`` Cityscapes instanceIds, ``gt_label_ids`` the original labelIds
        file's content when there is one (else derived from ``gt_semantic``), ``panoptic`` +
        ``segments`` the fusion's result. Returns the files written."""
        labels, root = self.labels, self.root
        city = name.split("_")[0]
        h, w = semantic.shape
        written = [
            _png(
                root / "pred/semantic" / f"{name}_pred_labelIds.png", labels.to_label_ids(semantic)
            )
        ]
        gt_dir = root / "gtFine" / self.split / city
        if gt_label_ids is None and gt_semantic is not None:
            gt_label_ids = labels.to_label_ids(gt_semantic)
        if gt_label_ids is not None:
            written.append(_png(gt_dir / f"{name}_gtFine_labelIds.png", gt_label_ids))
        if gt_instance is not None:
            if gt_instance.min() < 0 or gt_instance.max() > np.iinfo(np.uint16).max:
                raise ValueError(f"frame {name}: instanceIds out of the uint16 range")
            ids = gt_instance.astype(np.uint16)
            written.append(_png(gt_dir / f"{name}_gtFine_instanceIds.png", ids))
            if gt_semantic is not None:
                seg, info = panoptic_segment_image(
                    gt_panoptic(gt_semantic, gt_instance, labels), labels, crowd=True
                )
                file = f"{name}_gtFine_panoptic.png"
                written.append(_png(root / "gtFine" / self.panoptic_base / file, _rgb_ids(seg)))
                self.gt_panoptic.append(
                    {"image_id": name, "file_name": file, "segments_info": info}
                )
        self.images.append(
            {"id": name, "width": w, "height": h, "file_name": f"{name}_leftImg8bit.png"}
        )
        if panoptic is not None:
            written += self._instances(name, panoptic, segments)
            seg, info = panoptic_segment_image(panoptic, labels, crowd=False)
            file = f"{name}_panoptic.png"
            written.append(_png(root / "pred/panoptic" / self.panoptic_base / file, _rgb_ids(seg)))
            self.pred_panoptic.append({"image_id": name, "file_name": file, "segments_info": info})
        self.written += written
        return written

    def _instances(
        self, name: str, panoptic: np.ndarray, segments: list[dict[str, Any]] | None
    ) -> list[Path]:
        """The thing segments as instance predictions: masks + ``<name>_pred.txt``."""
        out, lines = [], []
        inst_dir = self.root / "pred/instance"
        for k, p in enumerate(panoptic_instances(panoptic, segments, self.labels)):
            rel = f"masks/{name}_{k:03d}.png"
            out.append(_png(inst_dir / rel, (panoptic == p.value).astype(np.uint8) * 255))
            lines.append(f"{rel} {int(self.labels.train_to_label[p.train_id])} {p.score:.6f}")
        txt = inst_dir / f"{name}_pred.txt"
        out.append(write_text_atomic(txt, "".join(f"{x}\n" for x in lines)))
        return out

    def close(self) -> list[Path]:
        """Write the panoptic JSON files (ground truth and prediction, where frames had them)."""
        out = []
        for folder, entries in (
            ("gtFine", self.gt_panoptic),
            ("pred/panoptic", self.pred_panoptic),
        ):
            if not entries:
                continue
            ids = {a["image_id"] for a in entries}
            doc = {
                "images": [im for im in self.images if im["id"] in ids],
                "annotations": entries,
                "categories": self.categories(),
            }
            path = self.root / folder / f"{self.panoptic_base}.json"
            out.append(write_text_atomic(path, json.dumps(doc, indent=1)))
        self.written += out
        return out
