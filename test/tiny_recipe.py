"""The small training recipe the trainer tests share (imported by test modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_recipe(out_dir: Path, **changes: Any) -> dict[str, Any]:
    """GUN on 4 synthetic 32x64 frames, with augmentation, OHEM and SCL switched on."""
    doc: dict[str, Any] = {
        "model": {"name": "gun"},
        "data": {
            "train": {
                "train": {"kind": "synth", "seed": 1, "frames": 4, "height": 40, "width": 72}
            },
            "batch_size": 2,
        },
        "augment": {
            "scale": [0.8, 1.2],
            "flip": True,
            "crop": [32, 64],
            "color_jitter": 0.2,
            "lighting": 0.1,
            "rotate": 5.0,
        },
        "loss": {"ohem": True},
        # fp32 on every machine: optim.amp's default (auto) follows the CPU's bf16 hardware, and
        # the trainer tests' expectations must not
        "optim": {"lr": 0.01, "grad_clip": 5.0, "amp": False},
        "schedule": {"policy": "poly"},
        "stages": [{"name": "fine", "dataset": "train", "length": 10, "scl": True}],
        "run": {
            "out_dir": str(out_dir),
            "checkpoint_every": 5,
            "progress": False,
            "tensorboard": False,
            "seed": 3,
        },
    }
    for dotted, value in changes.items():
        node = doc
        *head, last = dotted.split("__")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return doc
