"""The small in-process seg_node configuration the node tests share (random weights, 64x128)."""

from __future__ import annotations

import os

SMALL = {
    "allow_random_weights": True,
    "weights": "does/not/exist.safetensors",
    "network_height": 64,
    "network_width": 128,
    "warmup_frames": 0,
    "threads": 1,
    "panoptic.enabled": False,
    "engine_cache": os.environ["SEG_TEST_ENGINE_CACHE"],
}
