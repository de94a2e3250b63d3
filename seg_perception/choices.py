"""The closed vocabularies of the package, kept once: networks, backends, precisions.

At the bottom of the imports (no package imports), so that the node's parameter schema, the
engines and the command line all take their choices from here.
"""

from __future__ import annotations

__all__ = ["BACKENDS", "MODEL_KINDS", "PRECISIONS", "SEMANTIC_MODELS", "TTA_MODES"]

#: every network an engine runs -> its kind (``semantic``: class ids + confidence per pixel;
#: ``panoptic``: the ASP model's detections and semantic map)
MODEL_KINDS: dict[str, str] = {
    "gun": "semantic",
    "shelfnet": "semantic",
    "panoptic_asp": "panoptic",
}
#: the real-time networks (the node's ``model`` parameter)
SEMANTIC_MODELS: tuple[str, ...] = tuple(m for m, k in MODEL_KINDS.items() if k == "semantic")
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
#: test-time procedures of the papers (offline evaluation only: ``seg-perception eval --tta``
#: and the recipes' ``data.val_tta``; :mod:`seg_perception.networks.tta`)
TTA_MODES: tuple[str, ...] = ("none", "multistep", "multiscale-flip")
