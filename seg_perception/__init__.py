"""seg_perception: real-time semantic and panoptic segmentation for ROS 2."""

__version__ = "0.1.0"
