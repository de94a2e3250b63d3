"""The output topics of seg_node: name (relative to the camera namespace) -> (pipeline output,
image encoding). The one table the node, the offline and the live evaluation use."""

from __future__ import annotations

from seg_perception.pipeline import (
    INSTANCE,
    OVERLAY,
    PANOPTIC,
    PANOPTIC_COLOR,
    SEMANTIC,
    SEMANTIC_COLOR,
)

SEMANTIC_TOPIC = "segmentation/semantic"
PANOPTIC_TOPIC = "segmentation/panoptic"
OUTPUT_TOPICS = {
    SEMANTIC_TOPIC: (SEMANTIC, "mono8"),
    "segmentation/semantic_color": (SEMANTIC_COLOR, "rgb8"),
    "segmentation/overlay": (OVERLAY, "rgb8"),
}
PANOPTIC_TOPICS = {
    "segmentation/instance": (INSTANCE, "mono16"),
    PANOPTIC_TOPIC: (PANOPTIC, "32SC1"),
    "segmentation/panoptic_color": (PANOPTIC_COLOR, "rgb8"),
}
LABELS_TOPIC = "segmentation/labels"
