"""One camera served by seg_node: its topics, publishers and statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from seg_perception.ros.diagnostics import NodeStats
from seg_perception.ros.input_watch import InputWatch
from seg_perception.topics import OUTPUT_TOPICS, PANOPTIC_TOPICS

# relative output topic -> the pipeline output it carries
_OUTPUT_OF_TOPIC = {t: key for t, (key, _) in {**OUTPUT_TOPICS, **PANOPTIC_TOPICS}.items()}


def camera_topic(camera: str, relative: str) -> str:
    """``("front", "image")`` -> ``"front/image"``; ``("", "image")`` -> ``"image"`` (relative
    to the node namespace, so ``namespace:=`` and remapping keep working)."""
    return f"{camera}/{relative}" if camera else relative


@dataclass
class Camera:
    """A camera stream: its input topic, one publisher per output topic, its statistics."""

    name: str  # "" = directly under the node namespace
    input_topic: str  # relative
    pubs: dict[str, Any]  # relative output topic (without the camera prefix) -> publisher
    stats: NodeStats = field(default_factory=NodeStats)
    frame_index: int = 0  # frames processed, for panoptic.every_n
    subscription: Any = None  # the input subscription
    input_watch: InputWatch = field(default_factory=InputWatch)  # silence / loss episodes

    @property
    def label(self) -> str:
        return self.name or "default"

    def wanted_outputs(self) -> set[str]:
        """Pipeline outputs with at least one subscriber on this camera's topics."""
        return {_OUTPUT_OF_TOPIC[t] for t, p in self.pubs.items() if p.get_subscription_count()}
