"""Predictions and ground truth of an offline evaluation in the Cityscapes file layout, for the
official ``cityscapesscripts`` evaluators.

Frame ``i`` of the bag is named ``bag_000000_{i:06d}`` (the ``city_sequence_frame`` pattern the
scripts match predictions to ground truth by). Under the export root:

* ``gtFine/bag/bag_000000_{i:06d}_gtFine_labelIds.png`` (uint8 labelIds) and
  ``..._gtFine_instanceIds.png`` (uint16 Cityscapes instanceIds);
* ``pred/semantic/bag_000000_{i:06d}_pred_labelIds.png`` (uint8 labelIds);
* ``pred/instance/bag_000000_{i:06d}_pred.txt``: one line ``<mask png> <labelId> <score>`` per
  detected thing segment, the masks (0 / 255 PNG) beside it in ``masks/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from seg_perception.atomic import atomic_path, write_text_atomic
from seg_perception.labels import PANOPTIC_DIVISOR, LabelTable

CITY = "bag"


def frame_name(index: int) -> str:
    """Cityscapes-style name of frame ``index`` of the bag."""
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    return f"{CITY}_000000_{index:06d}"


def _png(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"PNG encoding failed for {path} ({image.dtype} {image.shape})")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


def export_frame(
    root: str | Path,
    index: int,
    labels: LabelTable,
    semantic: np.ndarray,
    *,
    gt_semantic: np.ndarray | None = None,
    gt_instance: np.ndarray | None = None,
    panoptic: np.ndarray | None = None,
    segments: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """Write one frame (``semantic``/``gt_semantic``: ``(H, W)`` trainIds; ``gt_instance``:
    Cityscapes instanceIds; ``panoptic`` + ``segments``: the fusion's result); returns the
    files written."""
    root, name = Path(root), frame_name(index)
    written = [
        _png(
            root / "pred" / "semantic" / f"{name}_pred_labelIds.png", labels.to_label_ids(semantic)
        )
    ]
    gt_dir = root / "gtFine" / CITY
    if gt_semantic is not None:
        written.append(
            _png(gt_dir / f"{name}_gtFine_labelIds.png", labels.to_label_ids(gt_semantic))
        )
    if gt_instance is not None:
        if gt_instance.min() < 0 or gt_instance.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"frame {index}: instanceIds out of the uint16 range")
        ids = gt_instance.astype(np.uint16)
        written.append(_png(gt_dir / f"{name}_gtFine_instanceIds.png", ids))
    if panoptic is not None:
        lines = []
        for k, seg in enumerate(segments or []):
            if not seg.get("is_thing") or not seg.get("instance"):
                continue
            mask = (panoptic == seg["id"]).astype(np.uint8) * 255
            if not mask.any():
                continue
            rel = f"masks/{name}_{k:03d}.png"
            written.append(_png(root / "pred" / "instance" / rel, mask))
            label_id = int(labels.train_to_label[int(seg["id"]) // PANOPTIC_DIVISOR])
            score = 1.0 if seg.get("score") is None else float(seg["score"])
            lines.append(f"{rel} {label_id} {score:.6f}")
        txt = root / "pred" / "instance" / f"{name}_pred.txt"
        written.append(write_text_atomic(txt, "".join(f"{x}\n" for x in lines)))
    return written
