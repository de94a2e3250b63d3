"""config/seg.rviz shows the camera and the three segmentation images on relative topics."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_rviz_layout_has_the_four_images_on_relative_topics():
    doc = yaml.safe_load((ROOT / "config" / "seg.rviz").read_text())
    displays = doc["Visualization Manager"]["Displays"]
    images = [d for d in displays if d["Class"] == "rviz_default_plugins/Image"]
    topics = [d["Topic"]["Value"] for d in images]
    assert topics == [
        "image",
        "segmentation/semantic_color",
        "segmentation/panoptic_color",
        "segmentation/overlay",
    ]
    assert all(not t.startswith("/") for t in topics)  # namespaced by the launch file
    assert all(d["Topic"]["Reliability Policy"] == "Best Effort" for d in images)


def test_launch_file_offers_rviz_argument():
    text = (ROOT / "launch" / "seg.launch.py").read_text()
    assert '"rviz"' in text and "seg.rviz" in text and "rviz2" in text
