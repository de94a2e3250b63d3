"""The topics of a recorded bag that an evaluation reads: the camera (``Image`` or
``CompressedImage``) and its ground truth (``<ns>/gt/semantic``, ``<ns>/gt/instance``), chosen
by default or by name, with errors that list what the bag holds. Used by the offline
(:mod:`.evaluate`) and the live (:mod:`.live`) evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seg_perception.data.bag_io import BagError

__all__ = ["CAMERA_TYPES", "COMPRESSED", "IMAGE", "Topics", "camera_namespace", "resolve_topics"]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_TYPES = (IMAGE, COMPRESSED)


@dataclass(frozen=True)
class Topics:
    camera: str
    camera_type: str
    gt_semantic: str
    gt_instance: str | None  # None: no panoptic scoring

    @property
    def namespace(self) -> str:
        return camera_namespace(self.camera)


def camera_namespace(topic: str) -> str:
    """``/camera/image`` and ``/camera/image/compressed`` -> ``/camera``; ``/image`` -> ``""``."""
    parts = topic.strip("/").split("/")
    if len(parts) > 1 and parts[-1] in ("compressed", "theora", "zstd"):
        parts = parts[:-1]
    return "".join("/" + p for p in parts[:-1])


def _listing(topics: dict[str, str]) -> str:
    return ", ".join(f"{t} ({m})" for t, m in sorted(topics.items())) or "(none)"


def resolve_topics(
    bag: str | Path,
    topics: dict[str, str],
    *,
    camera_topic: str | None = None,
    gt_semantic_topic: str | None = None,
    gt_instance_topic: str | None = None,
    need_instance: bool = True,
) -> Topics:
    """Pick the camera and ground-truth topics of a bag (``topics``: ``{topic: msgtype}``).

    Default camera: the single ``sensor_msgs/msg/Image`` topic not under ``gt/``. Default ground
    truth: ``<ns>/gt/semantic`` and ``<ns>/gt/instance`` of the camera's namespace. Raises
    :class:`BagError` naming the missing topic and listing the bag's topics.
    """
    if camera_topic is None:
        cands = [t for t, m in topics.items() if m == IMAGE and "/gt/" not in t + "/"]
        if len(cands) != 1:
            raise BagError(
                f"{bag}: cannot choose the camera topic: {len(cands)} sensor_msgs/msg/Image "
                f"topics outside gt/ ({', '.join(sorted(cands)) or 'none'}); pass --camera-topic. "
                f"Topics in the bag: {_listing(topics)}"
            )
        camera_topic = cands[0]
    if camera_topic not in topics:
        raise BagError(
            f"{bag}: camera topic {camera_topic} not in the bag; topics: {_listing(topics)}"
        )
    if topics[camera_topic] not in CAMERA_TYPES:
        raise BagError(
            f"{bag}: camera topic {camera_topic} has type {topics[camera_topic]}; expected "
            f"{' or '.join(CAMERA_TYPES)}"
        )
    ns = camera_namespace(camera_topic)
    sem = gt_semantic_topic or f"{ns}/gt/semantic"
    inst = gt_instance_topic or f"{ns}/gt/instance"
    needed = [sem, inst] if need_instance else [sem]
    for topic in needed:
        if topic not in topics:
            raise BagError(
                f"{bag}: ground-truth topic {topic} not in the bag; topics: {_listing(topics)}"
            )
        if topics[topic] != IMAGE:
            raise BagError(f"{bag}: ground-truth topic {topic} has type {topics[topic]}")
    return Topics(
        camera_topic, topics[camera_topic], sem, inst if (need_instance or inst in topics) else None
    )
