"""The label table: ids, trainIds, names, categories, thing/stuff flags and colours.

Cityscapes is the default table. A dataset with other labels supplies its own table as a YAML
file (see :func:`load_label_table`). Everything in the package that needs a class name, a
colour, a category or a thing flag asks this module.

Encodings used on the output topics (documented here once, published on the latched
``segmentation/labels`` topic by the node):

* semantic: ``mono8``, one trainId per pixel, ``255`` = void;
* instance: ``mono16``, ``0`` = no instance, ``1..N`` instance index within the frame;
* panoptic: ``32SC1``, ``trainId * 1000 + instance_index`` (instance ``0`` = stuff / no instance).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

IGNORE_ID = 255
PANOPTIC_DIVISOR = 1000


@dataclass(frozen=True)
class Label:
    """One row of the label table."""

    name: str
    id: int  # labelId as stored in *_labelIds.png
    train_id: int  # 0..C-1, or 255 for labels not evaluated
    category: str
    category_id: int
    has_instances: bool  # a "thing" class
    ignore_in_eval: bool
    color: tuple[int, int, int]  # RGB


# The 34 Cityscapes labels (ids 0..33), as defined by the dataset's label definition.
# (The dataset's extra "license plate" label has id -1 and never appears in label images.)
_CITYSCAPES: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    Label("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    Label("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    Label("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    Label("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    Label("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    Label("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    Label("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
)


class LabelTable:
    """Lookups over a tuple of :class:`Label` rows.

    Attributes (all derived once in the constructor):
        num_classes: number of trainIds (19 for Cityscapes).
        train_names / train_colors: per trainId, shape ``(C,)`` / ``(C, 3)`` uint8.
        train_category: category name per trainId.
        thing_train_ids: sorted trainIds of thing classes.
        label_to_train: uint8 LUT of length 256, labelId -> trainId (255 elsewhere).
        train_to_label: uint8 LUT of length 256, trainId -> labelId (0 for void).
        color_lut: uint8 ``(256, 3)`` LUT, trainId -> RGB (void black).
    """

    def __init__(self, labels: tuple[Label, ...], name: str = "custom") -> None:
        if not labels:
            raise ValueError("label table is empty")
        self.name = name
        self.labels = labels
        ids = [lab.id for lab in labels]
        if len(set(ids)) != len(ids):
            raise ValueError(f"label table {name!r}: duplicate label ids")
        if any(not 0 <= i <= 254 for i in ids):
            raise ValueError(f"label table {name!r}: label ids must be in 0..254")
        evaluated = {lab.train_id: lab for lab in labels if lab.train_id != IGNORE_ID}
        train_ids = sorted(evaluated)
        if train_ids != list(range(len(train_ids))):
            raise ValueError(
                f"label table {name!r}: trainIds must be 0..C-1 without gaps, got {train_ids}"
            )
        self.num_classes = len(train_ids)
        self.by_train_id = tuple(evaluated[t] for t in train_ids)
        self.train_names = tuple(lab.name for lab in self.by_train_id)
        self.train_category = tuple(lab.category for lab in self.by_train_id)
        self.train_colors = np.array([lab.color for lab in self.by_train_id], dtype=np.uint8)
        self.thing_train_ids = tuple(
            t for t, lab in enumerate(self.by_train_id) if lab.has_instances
        )
        self.categories = tuple(dict.fromkeys(lab.category for lab in labels))
        self.label_to_train = np.full(256, IGNORE_ID, dtype=np.uint8)
        for lab in labels:
            self.label_to_train[lab.id] = lab.train_id
        self.train_to_label = np.zeros(256, dtype=np.uint8)
        for t, lab in enumerate(self.by_train_id):
            self.train_to_label[t] = lab.id
        self.color_lut = np.zeros((256, 3), dtype=np.uint8)
        self.color_lut[: self.num_classes] = self.train_colors
        self._cv_lut = np.ascontiguousarray(self.color_lut.reshape(1, 256, 3))

    def train_id(self, name: str) -> int:
        """trainId of a class name; raises ``KeyError`` listing the valid names."""
        try:
            return self.train_names.index(name)
        except ValueError:
            raise KeyError(
                f"unknown class {name!r}; valid: {', '.join(self.train_names)}"
            ) from None

    def label(self, name: str) -> Label:
        for lab in self.labels:
            if lab.name == name:
                return lab
        raise KeyError(f"unknown label {name!r}")

    def is_thing(self, train_id: int) -> bool:
        return train_id in self.thing_train_ids

    def to_train_ids(self, label_ids: np.ndarray) -> np.ndarray:
        """labelId map (any integer dtype) -> trainId map (uint8, 255 = void)."""
        return self.label_to_train[np.asarray(label_ids).astype(np.intp) & 0xFF]

    def to_label_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """trainId map -> labelId map (uint8); void becomes labelId 0 ("unlabeled")."""
        return self.train_to_label[np.asarray(train_ids).astype(np.intp) & 0xFF]

    def colorize(self, train_ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """trainId map ``(H, W)`` -> RGB ``(H, W, 3)`` uint8 (void black), into ``out`` if given."""
        ids = np.asarray(train_ids)
        if ids.dtype != np.uint8:
            ids = ids.astype(np.uint8)
        if ids.ndim != 2:
            return np.take(self.color_lut, ids, axis=0, out=out)
        # OpenCV's per-channel LUT on the id map replicated to 3 channels: ~2x np.take at 1024x2048
        return cv2.LUT(cv2.merge((ids, ids, ids)), self._cv_lut, dst=out)

    def to_json(self) -> str:
        """The table and the topic encodings, as published on ``segmentation/labels``."""
        return json.dumps(
            {
                "table": self.name,
                "ignore_id": IGNORE_ID,
                "labels": [asdict(lab) for lab in self.labels],
                "train_ids": [
                    {
                        "train_id": t,
                        "name": lab.name,
                        "category": lab.category,
                        "is_thing": lab.has_instances,
                        "color": list(lab.color),
                    }
                    for t, lab in enumerate(self.by_train_id)
                ],
                "encodings": {
                    "segmentation/semantic": "mono8: trainId per pixel, 255 = void",
                    "segmentation/semantic_color": "rgb8: trainId colour from this table",
                    "segmentation/overlay": "rgb8: colours blended on the camera image",
                    "segmentation/instance": "mono16: 0 = no instance, 1..N instance index",
                    "segmentation/panoptic": (
                        f"32SC1: trainId * {PANOPTIC_DIVISOR} + instance index (0 = stuff)"
                    ),
                    "segmentation/panoptic_color": "rgb8: stuff in label colour, instances shaded",
                },
            }
        )


CITYSCAPES = LabelTable(_CITYSCAPES, name="cityscapes")


def load_label_table(path: str | Path | None) -> LabelTable:
    """Load a label table from YAML, or return Cityscapes for ``None`` / ``"cityscapes"``.

    YAML layout: ``labels: [{name, id, train_id, category, category_id, has_instances,
    ignore_in_eval, color: [r, g, b]}, ...]``.
    """
    if path is None or str(path) in ("", "cityscapes"):
        return CITYSCAPES
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"label table file not found: {p}")
    try:  # safe_load: a python/* tag in an untrusted file is an error, never executed
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), list):
        raise ValueError(f"{p}: expected a mapping with a 'labels' list")
    rows = []
    fields = set(Label.__dataclass_fields__)
    for i, row in enumerate(doc["labels"]):
        if not isinstance(row, dict) or set(row) != fields:
            raise ValueError(f"{p}: labels[{i}] must have exactly the keys {sorted(fields)}")
        row = dict(row)
        row["color"] = tuple(int(c) for c in row["color"])
        rows.append(Label(**row))
    return LabelTable(tuple(rows), name=p.stem)
