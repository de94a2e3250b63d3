"""Declaring seg_node's parameters from the configuration schema, and checking params files."""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node

from seg_perception import config as cfgmod
from seg_perception.ros.reload import RELOADABLE

_ROS_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
# parameters every rclpy node may receive; they are not ours to validate
BUILTIN_PARAMS = ("use_sim_time", "start_type_description_service")


def own_params(params: dict[str, Any]) -> dict[str, Any]:
    """Drop the parameters every rclpy node may receive (use_sim_time, qos_overrides.*)."""
    return {
        k: v
        for k, v in params.items()
        if k not in BUILTIN_PARAMS and not k.startswith("qos_overrides.")
    }


def declare_parameters(node: Node) -> cfgmod.SegConfig:
    """Declare every parameter with its descriptor (type, description, read-only unless the
    engine can be reloaded with it) and the default of config/seg.yaml; return the values."""
    default_path = cfgmod.default_config_path()
    defaults = cfgmod.validate(cfgmod.read_params_file(default_path), source=str(default_path))
    types = cfgmod.SegConfig.field_types()
    values = {}
    for key in cfgmod.SegConfig.names():
        descriptor = ParameterDescriptor(
            name=key,
            type=_ROS_TYPES[types[key]],
            description=cfgmod.SegConfig.description(key),
            read_only=key not in RELOADABLE,
        )
        param = node.declare_parameter(key, defaults.get(key), descriptor)
        values[key] = param.value
    overrides = getattr(node, "_parameter_overrides", {})
    unknown = sorted(
        n
        for n in overrides
        if n not in values and n not in BUILTIN_PARAMS and not n.startswith("qos_overrides.")
    )
    if unknown:
        raise cfgmod.ConfigError(
            f"node parameters: unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(cfgmod.SegConfig.names())}"
        )
    return cfgmod.validate(values, source="node parameters")


def check_params_files_applied(node: Node, files: dict[str, dict[str, Any]]) -> None:
    """Every ``--params-file`` must be valid and must reach this node.

    rcl applies a file's ``seg_node:`` section only to a node in the root namespace; under a
    namespace it would silently keep the defaults. Say so instead, naming the file.
    """
    overrides = getattr(node, "_parameter_overrides", {})
    for path, params in files.items():
        missing = sorted(k for k in params if k not in overrides)
        if missing:
            raise cfgmod.ConfigError(
                f"{path}: parameters {', '.join(missing)} did not reach node "
                f"{node.get_fully_qualified_name()}: the file's node key does not match its "
                "namespace; use '/**/seg_node:' as the top-level key"
            )
