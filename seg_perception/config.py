"""Typed configuration shared by the node, the pipeline and the CLI.

``config/seg.yaml`` (ROS 2 parameter-file format, ``seg_node: ros__parameters: ...``) is the one
source of default values; :mod:`seg_perception.config_schema` holds the *schema* (every key's type,
description and allowed values, re-exported here); this module validates values against it and
reads parameter files. Nested YAML mappings become dotted names (``panoptic.every_n``), as ROS 2
flattens them into parameter names. Unknown keys and wrong types are errors that name the key and
the file.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from seg_perception.config_schema import (
    SHIPPED_WEIGHTS,
    ConfigError,
    DiagnosticsConfig,
    FusionConfig,
    PanopticConfig,
    SegConfig,
    leaf_fields,
    parse_cameras,
)

PACKAGE = "seg_perception"
NODE_NAME = "seg_node"
__all__ = [
    "NODE_NAME",
    "PACKAGE",
    "SHIPPED_WEIGHTS",
    "ConfigError",
    "DiagnosticsConfig",
    "FusionConfig",
    "PanopticConfig",
    "SegConfig",
    "add_key_value_option",
    "default_config_path",
    "find_data_file",
    "flatten",
    "load_config",
    "package_share",
    "parse_cameras",
    "parse_hw",
    "parse_key_values",
    "read_params_file",
    "resolve_path",
    "source_root",
    "split_key_values",
    "validate",
]


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
    spec, want = leaf_fields(SegConfig)[key]
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
        raise ConfigError(f"expected a size HxW like 512x1024, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"size must be positive, got {text!r}")
    return h, w


def hw_argument(text: str) -> tuple[int, int]:
    """``argparse`` type of a size option (``--camera 1024x2048``, ``--network 512x1024``)."""
    return parse_hw(text)


hw_argument.__name__ = "HxW size"  # argparse: "invalid HxW size value: '...'"


def add_key_value_option(parser: Any, flag: str, *, help: str, dest: str | None = None) -> None:
    """A ``KEY=VALUE`` option of an ``argparse`` parser: several values after one flag, the flag
    repeatable; read them with :func:`parse_key_values` / :func:`split_key_values`."""
    extra = {"dest": dest} if dest else {}
    parser.add_argument(
        flag, nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help, **extra
    )


def split_key_values(items: list[str], option: str) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}`` (values as given); a malformed item is
    a ValueError naming the command-line ``option``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def parse_key_values(items: list[str], option: str) -> dict[str, Any]:
    """:func:`split_key_values` with the values parsed as YAML scalars (``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in split_key_values(items, option).items():
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{option} '{key}={value}': not a plain YAML value: {exc}") from None
    return out
