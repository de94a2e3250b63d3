"""The configuration schema: every node parameter's type, description and allowed values.

Plain dataclasses without I/O; :mod:`seg_perception.config` validates values against them and reads
parameter files. Nested sections become dotted ROS parameter names (``panoptic.every_n``).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from seg_perception.choices import BACKENDS, PRECISIONS, SEMANTIC_MODELS
from seg_perception.errors import SegError

#: model -> its shipped weights file (relative: looked up like every file parameter); the
#: ``weights`` parameter's meaning when it is empty
SHIPPED_WEIGHTS: dict[str, str] = {
    "gun": "models/gun_synth.safetensors",
    "shelfnet": "models/shelfnet_synth.safetensors",
}


class ConfigError(SegError, ValueError):
    """A configuration value or file is invalid; the message names the key and the source."""


def _spec(
    description: str,
    *,
    choices: tuple[Any, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    return field(
        metadata={
            "description": description,
            "choices": choices,
            "minimum": minimum,
            "maximum": maximum,
        }
    )


@dataclass(frozen=True)
class PanopticConfig:
    """The panoptic ASP model and when it runs (``panoptic.*`` parameters)."""

    enabled: bool = _spec(
        "Run the panoptic ASP model and publish segmentation/instance, segmentation/panoptic and "
        "segmentation/panoptic_color."
    )
    mode: str = _spec(
        "'sync': run on every every_n-th frame in the frame path; 'async': run in its own thread "
        "on the newest frame whenever it is free (semantic topics never wait for it).",
        choices=("sync", "async"),
    )
    every_n: int = _spec("In sync mode, run on every N-th frame.", minimum=1, maximum=10000)
    weights: str = _spec("Weights file of the ASP model (same lookup as 'weights').")
    engine_file: str = _spec(
        "A ready artefact of the ASP model (see 'engine_file'); '' = export 'panoptic.weights'."
    )
    network_height: int = _spec(
        "ASP model input height (multiple of 32).", minimum=64, maximum=4096
    )
    network_width: int = _spec("ASP model input width (multiple of 32).", minimum=64, maximum=8192)
    score_threshold: float = _spec(
        "Detections below this score are ignored.", minimum=0.0, maximum=1.0
    )


@dataclass(frozen=True)
class FusionConfig:
    """Fusion of the semantic map and the instances into panoptic output (``fusion.*``)."""

    method: str = _spec(
        "'heuristic': the fusion paper's category-consistent matching and region growing; "
        "'baseline': instances by score, overlaps skipped, stuff from the semantic map.",
        choices=("heuristic", "baseline"),
    )
    semantic_source: str = _spec(
        "Semantic map fused with the instances: 'realtime' (GUN/ShelfNet) or 'asp' (the ASP "
        "model's own semantic head).",
        choices=("realtime", "asp"),
    )
    min_new_instance_area: int = _spec(
        "Unmatched foreground segments larger than this (pixels at input resolution) become new "
        "instances.",
        minimum=0,
        maximum=1 << 30,
    )


@dataclass(frozen=True)
class DiagnosticsConfig:
    """Thresholds of the /diagnostics levels (``diagnostics.*``), judged per period."""

    expected_rate_hz: float = _spec(
        "Output rate each camera should reach; 0 = the camera's measured input rate.",
        minimum=0.0,
        maximum=10000.0,
    )
    min_rate_ratio: float = _spec(
        "WARN when a camera's output rate falls below this fraction of the expected rate.",
        minimum=0.0,
        maximum=1.0,
    )
    warn_drop_ratio: float = _spec(
        "WARN when this fraction of a camera's frames in a period was dropped (stale, too old or "
        "bad).",
        minimum=0.0,
        maximum=1.0,
    )
    error_drop_ratio: float = _spec(
        "ERROR when this fraction of a camera's frames in a period was dropped.",
        minimum=0.0,
        maximum=1.0,
    )
    silent_input_s: float = _spec(
        "WARN, and log once naming the publishers, the likely cause and the fix, when a "
        "publisher has been matched on a camera's input topic for this many seconds and no "
        "frame arrived (large samples lost by the publisher's DDS transport, typically); "
        "0 = off.",
        minimum=0.0,
        maximum=3600.0,
    )
    lost_input_ratio: float = _spec(
        "WARN, and log, when at least this fraction of the frames the camera's publishers sent in "
        "a period never arrived (gaps in their publication sequence numbers); 1 = only when "
        "every frame was lost.",
        minimum=0.0,
        maximum=1.0,
    )


@dataclass(frozen=True)
class SegConfig:
    """Every node parameter. Defaults live in ``config/seg.yaml``, not here.

    Nested sections (``panoptic``, ``fusion``) are ROS parameters with dotted names
    (``panoptic.every_n``), exactly as a nested YAML mapping in a parameter file.
    """

    cameras: str = _spec(
        "Camera namespaces served by this node, comma separated (e.g. 'front,left'): camera "
        "'front' reads front/image and publishes front/segmentation/*; frames of all cameras are "
        "batched into one engine call. '' = one camera directly under the node namespace."
    )
    max_frame_age_ms: float = _spec(
        "Frames whose header stamp is older than this (node clock; use_sim_time with /clock for "
        "bags) when the worker takes them are dropped and counted; 0 = no deadline.",
        minimum=0.0,
        maximum=3600000.0,
    )
    model: str = _spec("Real-time semantic network.", choices=SEMANTIC_MODELS)
    weights: str = _spec(
        "Weights file (.safetensors or .pt) of the semantic network; '' = the shipped weights of "
        "'model' (models/<model>_synth.safetensors), so that 'model' alone can be changed at run "
        "time. A relative path is looked up in the current directory, then in the package's "
        "share directory."
    )
    engine_file: str = _spec(
        "A ready artefact of the semantic network to run instead of exporting 'weights': an "
        "ONNX file (onnxruntime, tensorrt) or a TensorRT plan (.plan/.engine, tensorrt), e.g. "
        "from 'seg-perception build-engine'. Checked at start against what the node needs "
        "(input size, outputs, class count). '' = export 'weights' (cached)."
    )
    allow_random_weights: bool = _spec(
        "Start with randomly initialised weights when a weights file does not exist "
        "(for demos and tests only: the output is meaningless)."
    )
    labels: str = _spec("Label table: 'cityscapes' or a YAML file with a 'labels' list.")
    input_transport: str = _spec(
        "'raw' subscribes to 'image' (sensor_msgs/Image); 'compressed' to 'image/compressed' "
        "(sensor_msgs/CompressedImage).",
        choices=("raw", "compressed"),
    )
    input_qos: str = _spec(
        "QoS of the camera subscriptions. 'sensor_data' (best effort, ROS's sensor-data "
        "profile): matches every publisher and never slows a camera down, but a sample lost on "
        "the way is gone; for cameras on this machine or a clean network. 'reliable': lost "
        "fragments are sent again; for a camera driver that publishes reliable (the ROS "
        "default) frames too large for its DDS transport, or a lossy network; it does not match "
        "a best-effort publisher.",
        choices=("sensor_data", "reliable"),
    )
    input_queue_depth: int = _spec(
        "History depth (keep last N) of the camera subscriptions; the node takes only the newest "
        "frame of each camera, so a small depth suffices.",
        minimum=1,
        maximum=1000,
    )
    network_height: int = _spec(
        "Network input height in pixels (multiple of 32).", minimum=32, maximum=4096
    )
    network_width: int = _spec(
        "Network input width in pixels (multiple of 32).", minimum=32, maximum=8192
    )
    backend: str = _spec(
        "Inference backend: 'torch' (eager PyTorch), 'onnxruntime' (ONNX exported on first use "
        "into engine_cache) or 'tensorrt' (GPU).",
        choices=BACKENDS,
    )
    precision: str = _spec(
        "Compute precision of the real-time net: fp32; bf16 (torch on CPUs with AVX512-BF16, or "
        "CUDA); fp16 (CUDA / TensorRT); int8 (onnxruntime QDQ or TensorRT, calibrated on "
        "synthetic street scenes).",
        choices=PRECISIONS,
    )
    providers: str = _spec(
        "onnxruntime execution providers in order, comma separated: tensorrt, cuda, cpu."
    )
    engine_cache: str = _spec(
        "Folder for exported ONNX files and built engines ('' = ~/.cache/seg_perception/engines)."
    )
    device: str = _spec("Torch device: 'cpu' or 'cuda[:N]' (its index is the TensorRT GPU).")
    threads: int = _spec("CPU threads for inference (0 = library default).", minimum=0, maximum=256)
    overlay_alpha: float = _spec(
        "Weight of the label colours in segmentation/overlay.", minimum=0.0, maximum=1.0
    )
    max_pixels: int = _spec(
        "Input images with more pixels are rejected (bad frame).", minimum=1, maximum=1 << 30
    )
    diagnostics_period_s: float = _spec(
        "Period of /diagnostics messages in seconds.", minimum=0.05, maximum=3600.0
    )
    warmup_frames: int = _spec(
        "Engine warm-up runs before the first frame.", minimum=0, maximum=100
    )
    diagnostics: DiagnosticsConfig = field(metadata={"section": True})
    panoptic: PanopticConfig = field(metadata={"section": True})
    fusion: FusionConfig = field(metadata={"section": True})

    def semantic_weights(self) -> str:
        """The real-time net's weights file: ``weights``, or ``model``'s shipped file when empty."""
        return self.weights or SHIPPED_WEIGHTS[self.model]

    def camera_names(self) -> tuple[str, ...]:
        """The ``cameras`` list; ``("",)`` for one camera under the node namespace."""
        return parse_cameras(self.cameras)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every parameter name, dotted for nested sections."""
        return tuple(leaf_fields(cls))

    @classmethod
    def field_types(cls) -> dict[str, type]:
        return {name: typ for name, (_, typ) in leaf_fields(cls).items()}

    @classmethod
    def description(cls, key: str) -> str:
        meta = leaf_fields(cls)[key][0].metadata
        text = meta["description"]
        if meta["choices"]:
            text += f" One of: {', '.join(map(str, meta['choices']))}."
        return text

    def get(self, name: str) -> Any:
        """Value of a (dotted) parameter name."""
        value: Any = self
        for part in name.split("."):
            value = getattr(value, part)
        return value

    def flat(self) -> dict[str, Any]:
        """``{dotted_name: value}`` of every parameter."""
        return {name: self.get(name) for name in self.names()}


_SCALARS = {"str": str, "int": int, "float": float, "bool": bool}


def leaf_fields(cls: type, prefix: str = "") -> dict[str, tuple[dataclasses.Field, type]]:
    """Dotted parameter name -> (dataclass field, scalar type) of a config dataclass, sections
    walked recursively (the field's ``metadata`` holds description, choices and range)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[dataclasses.Field, type]] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            out.update(leaf_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (f, _SCALARS[hints[f.name].__name__])
    return out


_CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


def parse_cameras(text: str) -> tuple[str, ...]:
    """``"front, left"`` -> ``("front", "left")``; ``""`` -> ``("",)``. Names are relative ROS
    namespaces (letters, digits, underscores, '/' between tokens); ValueError otherwise."""
    names = tuple(n.strip() for n in text.split(",")) if text.strip() else ("",)
    for name in names:
        if len(names) > 1 and not name:
            raise ValueError(f"empty camera name in {text!r}")
        if name and not _CAMERA_NAME.match(name):
            raise ValueError(
                f"camera name {name!r} is not a relative ROS namespace (letters, digits, '_', "
                "tokens separated by '/', starting with a letter)"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"camera(s) listed twice: {', '.join(duplicates)}")
    return names


#: the parameters that may change at run time: they only concern the real-time engine, which the
#: node rebuilds beside the running one (``ros/reload.py``); every other parameter is read-only
RELOADABLE = frozenset(
    {
        "model",
        "weights",
        "engine_file",
        "allow_random_weights",
        "backend",
        "precision",
        "providers",
        "engine_cache",
        "device",
        "threads",
        "network_height",
        "network_width",
        "warmup_frames",
    }
)
