"""Typed configuration shared by the node, the pipeline and the CLI.

``config/seg.yaml`` (ROS 2 parameter-file format, ``seg_node: ros__parameters: ...``) is the one
source of default values; this module holds the *schema*: every key's type, description and allowed
values. Nested YAML mappings become dotted names (``engine.threads``), as ROS 2 flattens them
into parameter names. Unknown keys and wrong types are errors that name the key and the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "seg_perception"
NODE_NAME = "seg_node"


class ConfigError(ValueError):
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
    model: str = _spec("Real-time semantic network.", choices=("gun", "shelfnet"))
    weights: str = _spec(
        "Weights file (.safetensors or .pt) of the semantic network. A relative path is looked up "
        "in the current directory, then in the package's share directory."
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
    network_height: int = _spec(
        "Network input height in pixels (multiple of 32).", minimum=32, maximum=4096
    )
    network_width: int = _spec(
        "Network input width in pixels (multiple of 32).", minimum=32, maximum=8192
    )
    backend: str = _spec(
        "Inference backend: 'torch' (eager PyTorch), 'onnxruntime' (ONNX exported on first use "
        "into engine_cache) or 'tensorrt' (GPU).",
        choices=("torch", "onnxruntime", "tensorrt"),
    )
    precision: str = _spec(
        "Compute precision of the real-time net: fp32; bf16 (torch on CPUs with AVX512-BF16, or "
        "CUDA); fp16 (CUDA / TensorRT); int8 (onnxruntime QDQ or TensorRT, calibrated on "
        "synthetic street scenes).",
        choices=("fp32", "bf16", "fp16", "int8"),
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

    def camera_names(self) -> tuple[str, ...]:
        """The ``cameras`` list; ``("",)`` for one camera under the node namespace."""
        return parse_cameras(self.cameras)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every parameter name, dotted for nested sections."""
        return tuple(_leaves(cls))

    @classmethod
    def field_types(cls) -> dict[str, type]:
        return {name: typ for name, (_, typ) in _leaves(cls).items()}

    @classmethod
    def description(cls, key: str) -> str:
        meta = _leaves(cls)[key][0].metadata
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


def _leaves(cls: type, prefix: str = "") -> dict[str, tuple[dataclasses.Field, type]]:
    """Dotted parameter name -> (dataclass field, scalar type), sections walked recursively."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[dataclasses.Field, type]] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            out.update(_leaves(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (f, _SCALARS[hints[f.name].__name__])
    return out


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            kwargs[f.name] = _build(hints[f.name], values, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (ROS 2 parameter naming)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _check_value(key: str, value: Any, source: str) -> Any:
    spec, want = _leaves(SegConfig)[key]
    meta = spec.metadata
    ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(
            f"{source}: parameter '{key}' must be {want.__name__}, got "
            f"{type(value).__name__} {value!r}"
        )
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(
            f"{source}: parameter '{key}' must be one of {', '.join(map(str, meta['choices']))}, "
            f"got {value!r}"
        )
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ConfigError(f"{source}: parameter '{key}' must be >= {meta['minimum']}, got {value}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise ConfigError(f"{source}: parameter '{key}' must be <= {meta['maximum']}, got {value}")
    return value


def validate(values: Mapping[str, Any], *, source: str, partial: bool = False) -> Any:
    """Check a flat ``{dotted_key: value}`` mapping against the schema.

    Returns a :class:`SegConfig`, or (``partial=True``) the checked dict, which may lack keys.
    """
    known = SegConfig.names()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(known)}"
        )
    checked = {k: _check_value(k, v, source) for k, v in values.items()}
    if partial:
        return checked
    missing = [k for k in known if k not in checked]
    if missing:
        raise ConfigError(f"{source}: missing parameter(s) {', '.join(missing)}")
    cfg = _build(SegConfig, checked)
    try:
        parse_cameras(cfg.cameras)
    except ValueError as exc:
        raise ConfigError(f"{source}: parameter 'cameras': {exc}") from None
    if cfg.diagnostics.warn_drop_ratio > cfg.diagnostics.error_drop_ratio:
        raise ConfigError(
            f"{source}: parameter 'diagnostics.warn_drop_ratio' "
            f"({cfg.diagnostics.warn_drop_ratio}) must be <= 'diagnostics.error_drop_ratio' "
            f"({cfg.diagnostics.error_drop_ratio})"
        )
    for key in (
        "network_height",
        "network_width",
        "panoptic.network_height",
        "panoptic.network_width",
    ):
        if cfg.get(key) % 32:
            raise ConfigError(
                f"{source}: parameter '{key}' must be a multiple of 32, got {cfg.get(key)}"
            )
    return cfg


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


def read_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """Read the flat parameters of ``node_name`` from a ROS 2 parameter file.

    Accepts ``seg_node:``, ``/seg_node:``, a namespaced ``/ns/seg_node:`` and the ``/**:`` wildcard.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping '{node_name}: ros__parameters: ...'")
    params: dict[str, Any] = {}
    matched = False
    for key, body in doc.items():
        name = str(key).rstrip("/").split("/")[-1]
        if name not in (node_name, "**"):
            continue
        matched = True
        if not isinstance(body, dict) or set(body) != {"ros__parameters"}:
            raise ConfigError(f"{p}: '{key}' must contain exactly one key 'ros__parameters'")
        section = body["ros__parameters"] or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{p}: '{key}.ros__parameters' must be a mapping")
        params.update(flatten(section))
    if not matched:
        raise ConfigError(f"{p}: no '{node_name}:' (or '/**:') section with ros__parameters")
    return params


def package_share() -> Path | None:
    """The installed share directory of the package, or None when running from a source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:
        candidate = Path(sys.prefix) / "share" / PACKAGE
        return candidate if candidate.is_dir() else None


def source_root() -> Path:
    """The repository root when running from a source checkout (editable install)."""
    return Path(__file__).resolve().parent.parent


def find_data_file(relative: str) -> Path:
    """Locate a shipped file (``config/seg.yaml``, ``models/x``): source tree first, then share."""
    candidates = [source_root() / relative]
    share = package_share()
    if share is not None:
        candidates.append(share / relative)
    for c in candidates:
        if c.exists():
            return c
    raise ConfigError(f"shipped file {relative!r} not found in {', '.join(map(str, candidates))}")


def default_config_path() -> Path:
    return find_data_file("config/seg.yaml")


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> SegConfig:
    """Defaults from the shipped ``config/seg.yaml``, then ``path``, then ``overrides``."""
    default_path = default_config_path()
    values = validate(read_params_file(default_path), source=str(default_path), partial=True)
    if path is not None and Path(path).resolve() != default_path.resolve():
        values.update(validate(read_params_file(path), source=str(path), partial=True))
    if overrides:
        values.update(validate(dict(overrides), source="overrides", partial=True))
    return validate(values, source=str(path or default_path))


def resolve_path(value: str) -> Path:
    """Resolve a file parameter: absolute, relative to cwd, then relative to the package data."""
    p = Path(os.path.expanduser(value))
    if p.is_absolute() or p.exists():
        return p
    try:
        return find_data_file(value)
    except ConfigError:
        return p


def parse_hw(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> ``(512, 1024)``; ValueError naming the text otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected a size HxW like 512x1024, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return h, w


def parse_key_values(items: list[str], option: str) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values parsed as YAML scalars);
    a malformed item is a ValueError naming the command-line ``option``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"{option} {item!r}: not a plain YAML value: {exc}") from None
    return out
