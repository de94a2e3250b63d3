"""Training data sources and the augmenting wrapper the trainer loads batches from.

Sources (each item a sample dict, see :mod:`seg_perception.data.transforms`):

- ``synth``: the synthetic street-scene generator, frames rendered on first use (a pure function
  of ``(seed, index, size)``) and kept on disk for the next use
  (:mod:`seg_perception.data.synth_cache`; ``cache: false`` renders every time);
- ``cityscapes``: a folder in the Cityscapes layout (real Cityscapes, or synthetic frames written
  by ``seg-perception synth --format cityscapes``: "from a folder");
- ``bag``: a rosbag2 (sqlite3 or MCAP) with a camera topic and ground-truth topics (semantic
  trainIds ``mono8``, instanceIds ``32SC1``), frames paired by header stamp.

:class:`AugmentedDataset` is indexed by ``(index, seed)`` keys: the sample ``index`` is augmented
with ``np.random.default_rng(seed)``, so a batch is a pure function of its keys.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seg_perception.data.cityscapes import (
    CityscapesDataset,
    DataError,
    DataWarning,
    instance_targets,
    report_problem,
)
from seg_perception.data.synth_cache import (
    DEFAULT_CACHE_FRAMES,
    CachedFrame,
    FrameCache,
    default_synth_cache_dir,
)
from seg_perception.data.transforms import AugmentConfig, Sample, augment, image_to_tensor
from seg_perception.labels import CITYSCAPES, IGNORE_ID, LabelTable

__all__ = [
    "DATASET_KINDS",
    "AugmentedDataset",
    "BagDataset",
    "DatasetSpec",
    "SyntheticDataset",
    "build_dataset",
    "collate",
]

DATASET_KINDS = ("synth", "cityscapes", "bag")


@dataclass(frozen=True)
class DatasetSpec:
    """Where one dataset comes from (a ``data.*`` section of a training recipe).

    ``kind``: ``synth`` | ``cityscapes`` | ``bag``. ``synth``: ``seed``, ``frames``,
    ``height``, ``width``, ``cache`` (rendered frames kept on disk and read back, see
    :mod:`seg_perception.data.synth_cache`), ``cache_frames`` (only frames with a lower index are
    kept: bounds the disk used). ``cityscapes``: ``root``, ``split``, ``annotation``
    (``gtFine`` | ``gtCoarse``). ``bag``: ``path``, ``image_topic``, ``semantic_topic``,
    ``instance_topic`` (empty: none). ``max_frames`` > 0 keeps the first frames only.
    """

    kind: str = "synth"
    seed: int = 0
    frames: int = 100
    height: int = 512
    width: int = 1024
    cache: bool = True
    cache_frames: int = DEFAULT_CACHE_FRAMES
    root: str = ""
    split: str = "train"
    annotation: str = "gtFine"
    path: str = ""
    image_topic: str = "/camera/image"
    semantic_topic: str = "/camera/gt/semantic"
    instance_topic: str = "/camera/gt/instance"
    max_frames: int = 0


class SyntheticDataset(torch.utils.data.Dataset):
    """Frames ``0 .. frames-1`` of the synthetic sequence ``seed`` at ``height x width``.

    ``cache_dir``: keep rendered frames with an index below ``cache_frames`` there and read them
    back (:class:`~seg_perception.data.synth_cache.FrameCache`; None: render every time).
    """

    def __init__(
        self,
        *,
        frames: int,
        seed: int,
        height: int,
        width: int,
        labels: LabelTable = CITYSCAPES,
        cache_dir: str | Path | None = None,
        cache_frames: int = DEFAULT_CACHE_FRAMES,
    ) -> None:
        if frames < 1:
            raise ValueError(f"SyntheticDataset: frames must be >= 1, got {frames}")
        self.frames, self.seed, self.height, self.width = frames, seed, height, width
        self.labels = labels
        self.cache = None
        if cache_dir is not None and cache_frames > 0:
            self.cache = FrameCache(cache_dir, seed=seed, height=height, width=width, labels=labels)
        self.cache_frames = cache_frames

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.frames:
            raise IndexError(f"SyntheticDataset: index {index} out of range 0..{self.frames - 1}")
        cache = self.cache if index < self.cache_frames else None
        frame = cache.load(index) if cache is not None else None
        if frame is None:
            frame = self._render(index)
            if cache is not None:
                cache.store(index, frame)
        return {
            "image": frame.image,
            "semantic": frame.semantic,
            "instance": frame.instance,
            "name": f"synth_{self.seed}_{index:06d}",
        }

    def _render(self, index: int) -> CachedFrame:
        from seg_perception.data.synth import generate_frame

        f = generate_frame(
            seed=self.seed, index=index, height=self.height, width=self.width, labels=self.labels
        )
        return CachedFrame(f.image, f.semantic, f.instance)


class BagDataset(torch.utils.data.Dataset):
    """Frames of a rosbag2 with ground truth, paired by header stamp.

    The bag is indexed on first access (one pass; raw message bytes of the selected topics are
    kept in memory). Frames lacking the semantic topic are skipped with a warning (``strict``:
    :class:`DataError`). ``instance_topic=""`` reads no instances.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        image_topic: str,
        semantic_topic: str,
        instance_topic: str = "",
        strict: bool = False,
        max_frames: int = 0,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"bag not found: {self.path}")
        self.topics = {"image": image_topic, "semantic": semantic_topic}
        if instance_topic:
            self.topics["instance"] = instance_topic
        self.strict = strict
        self.max_frames = max_frames
        self._frames: list[dict[str, tuple[str, bytes]]] | None = None

    def _index(self) -> list[dict[str, tuple[str, bytes]]]:
        if self._frames is not None:
            return self._frames
        from seg_perception.codec import stamp_ns
        from seg_perception.data.bag_io import deserialize, read_bag_messages

        role_of = {t: r for r, t in self.topics.items()}
        by_stamp: dict[int, dict[str, tuple[str, bytes]]] = {}
        for topic, msgtype, _ts, raw in read_bag_messages(self.path, list(role_of)):
            stamp = stamp_ns(deserialize(raw, msgtype).header)
            by_stamp.setdefault(stamp, {})[role_of[topic]] = (msgtype, bytes(raw))
        frames = []
        for stamp in sorted(by_stamp):
            parts = by_stamp[stamp]
            lacking = [self.topics[r] for r in self.topics if r not in parts]
            if lacking:
                report_problem(
                    f"{self.path}: skipping frame at stamp {stamp} ns: no message on {lacking}",
                    strict=self.strict,
                )
                continue
            frames.append(parts)
        if self.max_frames > 0:
            frames = frames[: self.max_frames]
        if not frames:
            raise DataError(
                f"{self.path}: no frame with all of the topics {list(self.topics.values())}"
            )
        self._frames = frames
        return frames

    def __len__(self) -> int:
        return len(self._index())

    def __getitem__(self, index: int) -> Sample:
        from seg_perception.codec import image_from_ros, msg_to_rgb8
        from seg_perception.data.bag_io import deserialize

        parts = self._index()[index]
        out: dict[str, Any] = {"name": f"{self.path.name}_{index:06d}", "instance": None}
        try:
            msgtype, raw = parts["image"]
            out["image"] = msg_to_rgb8(deserialize(raw, msgtype))
            msgtype, raw = parts["semantic"]
            out["semantic"] = np.asarray(image_from_ros(deserialize(raw, msgtype)), np.uint8)
            if "instance" in parts:
                msgtype, raw = parts["instance"]
                out["instance"] = np.asarray(image_from_ros(deserialize(raw, msgtype)), np.int32)
        except Exception as err:  # a corrupt message: name the bag and the frame
            raise DataError(f"{self.path}: frame {index} cannot be decoded: {err}") from err
        return out


def build_dataset(
    spec: DatasetSpec, *, labels: LabelTable = CITYSCAPES, strict: bool = False
) -> torch.utils.data.Dataset:
    """The dataset a :class:`DatasetSpec` names."""
    if spec.kind == "synth":
        return SyntheticDataset(
            frames=min(spec.frames, spec.max_frames) if spec.max_frames else spec.frames,
            seed=spec.seed,
            height=spec.height,
            width=spec.width,
            labels=labels,
            cache_dir=default_synth_cache_dir() if spec.cache else None,
            cache_frames=spec.cache_frames,
        )
    if spec.kind == "cityscapes":
        if not spec.root:
            raise ValueError("dataset kind 'cityscapes' needs 'root'")
        return CityscapesDataset(
            spec.root,
            spec.split,
            annotation=spec.annotation,
            labels=labels,
            strict=strict,
            max_frames=spec.max_frames,
        )
    if spec.kind == "bag":
        if not spec.path:
            raise ValueError("dataset kind 'bag' needs 'path'")
        return BagDataset(
            spec.path,
            image_topic=spec.image_topic,
            semantic_topic=spec.semantic_topic,
            instance_topic=spec.instance_topic,
            strict=strict,
            max_frames=spec.max_frames,
        )
    raise ValueError(f"unknown dataset kind {spec.kind!r}; valid: {', '.join(DATASET_KINDS)}")


class AugmentedDataset(torch.utils.data.Dataset):
    """``dataset[(index, seed)]`` -> training item: augmented, as tensors.

    Item: ``image`` ``(3, H, W)`` float32 in 0..1 (RGB, not normalised: the trainer normalises
    per network), ``semantic`` ``(H, W)`` int64 (255 ignored), ``targets`` (with
    ``with_instances``) Mask R-CNN targets from :func:`instance_targets` plus ``semantic``,
    ``name``. A sample that fails to load is skipped for the next index with a warning (or
    raises with ``strict``).
    """

    def __init__(
        self,
        base: torch.utils.data.Dataset,
        augmentation: AugmentConfig,
        *,
        labels: LabelTable = CITYSCAPES,
        with_instances: bool = False,
        strict: bool = False,
    ) -> None:
        self.base = base
        self.augmentation = augmentation
        self.labels = labels
        self.with_instances = with_instances
        self.strict = strict

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _load(self, index: int) -> Sample:
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            try:
                return self.base[i]
            except DataError as err:
                if self.strict:
                    raise
                warnings.warn(f"skipping sample {i}: {err}", DataWarning, stacklevel=2)
        raise DataError("no readable sample in the dataset")

    def __getitem__(self, key: int | tuple[int, Any]) -> dict[str, Any]:
        index, seed = (key, 0) if isinstance(key, int) else key
        sample = augment(self._load(int(index)), self.augmentation, np.random.default_rng(seed))
        semantic = sample.get("semantic")
        if semantic is None:
            semantic = np.full(sample["image"].shape[:2], IGNORE_ID, np.uint8)
        item: dict[str, Any] = {
            "image": image_to_tensor(sample["image"]),
            "semantic": torch.from_numpy(np.ascontiguousarray(semantic)).long(),
            "name": sample.get("name", str(index)),
        }
        if self.with_instances:
            inst = sample.get("instance")
            if inst is None:
                raise DataError(f"sample {item['name']}: instance targets needed, none in source")
            targets = instance_targets(inst, self.labels)
            targets["semantic"] = item["semantic"]
            item["targets"] = targets
        return item


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: ``image`` ``(N, 3, H, W)`` and ``semantic`` ``(N, H, W)`` when all sizes are
    equal, else lists; ``targets`` / ``name`` as lists."""
    out: dict[str, Any] = {"name": [it["name"] for it in items]}
    for key in ("image", "semantic"):
        vals: list[Tensor] = [it[key] for it in items]
        same = all(v.shape == vals[0].shape for v in vals)
        out[key] = torch.stack(vals) if same else vals
    if "targets" in items[0]:
        out["targets"] = [it["targets"] for it in items]
    return out
