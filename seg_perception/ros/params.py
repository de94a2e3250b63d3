"""Declaring seg_node's parameters from the configuration schema.

Every parameter is declared with a descriptor built from the schema: its type, description,
allowed values (``additional_constraints``), its range (``IntegerRange`` / ``FloatingPointRange``,
enforced by rclpy on every later set) and ``read_only`` unless the engine can be reloaded with it.
Defaults come from ``config/seg.yaml``.

What reached the node (parameter files, ``-p``, ``parameter_overrides=``) is read through public
rclpy API only: the node is created with ``automatically_declare_parameters_from_overrides=True``,
so every override is a declared parameter when :func:`declare_parameters` runs; each one of the
schema is checked, then declared again with its descriptor. rcl has already matched the files'
sections to the node, so nothing here reads the files or the command line.

A name the schema does not know may come from a parameter file shared by several nodes. To tell
the node's own section (``seg_node:``, ``/**/seg_node:``, ``/<ns>/seg_node:``) from one meant for
every node (``/**:``, and ``-p NAME:=VALUE``, which rcl files under ``/**`` as well), rcl is asked
what a short-lived hidden node of another name in the same namespace receives: a name it gets too
is meant for any node and only warned about; the others are this node's and stop it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from seg_perception import config as cfgmod
from seg_perception.config_schema import RELOADABLE

_ROS_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_DOUBLE = (-1.7976931348623157e308, 1.7976931348623157e308)
#: parameters every rclpy node may receive; they are not ours to validate
BUILTIN_PARAMS = ("use_sim_time", "start_type_description_service")
#: the hidden node asked which parameters rcl hands to *any* node in this namespace
PROBE_NODE_NAME = "_seg_node_params_probe"


def is_builtin(name: str) -> bool:
    """A parameter every rclpy node may receive (use_sim_time, qos_overrides.*)."""
    return name in BUILTIN_PARAMS or name.startswith("qos_overrides.")


def _constraints(key: str) -> typing.Mapping[str, Any]:
    """The schema's ``choices`` / ``minimum`` / ``maximum`` of a dotted parameter name."""
    cls: Any = cfgmod.SegConfig
    *sections, leaf = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return next(f for f in dataclasses.fields(cls) if f.name == leaf).metadata


def parameter_descriptor(key: str) -> ParameterDescriptor:
    """The descriptor of one parameter: type, description, choices, range, read-only."""
    typ = cfgmod.SegConfig.field_types()[key]
    meta = _constraints(key)
    descriptor = ParameterDescriptor(
        name=key,
        type=_ROS_TYPES[typ],
        description=cfgmod.SegConfig.description(key),
        read_only=key not in RELOADABLE,
    )
    if meta["choices"]:
        descriptor.additional_constraints = "one of: " + ", ".join(map(str, meta["choices"]))
    low, high = meta["minimum"], meta["maximum"]
    if low is not None or high is not None:
        if typ is int:
            low = _INT64[0] if low is None else int(low)
            high = _INT64[1] if high is None else int(high)
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
        elif typ is float:
            low = _DOUBLE[0] if low is None else float(low)
            high = _DOUBLE[1] if high is None else float(high)
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=low, to_value=high, step=0.0)
            ]
    return descriptor


def wildcard_parameter_names(
    node: Node, *, cli_args: Sequence[str] | None = None, use_global_arguments: bool = True
) -> set[str]:
    """Names rcl hands to any node in ``node``'s namespace: ``/**`` sections and ``-p`` without
    a node name. Asked of a hidden node of another name, created and destroyed here with the
    same context and arguments (its own ``__node`` remap comes first, so a ``-r __node:=...``
    meant for ``node`` does not rename it)."""
    probe = Node(
        PROBE_NODE_NAME,
        context=node.context,
        namespace=node.get_namespace(),
        cli_args=["--ros-args", "-r", f"__node:={PROBE_NODE_NAME}", *(cli_args or ())],
        use_global_arguments=use_global_arguments,
        enable_rosout=False,
        start_parameter_services=False,
        parameter_overrides=[Parameter("start_type_description_service", value=False)],
        automatically_declare_parameters_from_overrides=True,
    )
    try:
        return {name for name in probe.get_parameters_by_prefix("") if not is_builtin(name)}
    finally:
        probe.destroy_node()


def declare_parameters(
    node: Node, *, cli_args: Sequence[str] | None = None, use_global_arguments: bool = True
) -> cfgmod.SegConfig:
    """Declare every parameter with its descriptor and return the validated values.

    ``node`` must have been created with ``automatically_declare_parameters_from_overrides=True``
    (and ``cli_args`` / ``use_global_arguments`` as given here). Raises ``ConfigError`` for a
    wrong type or value, and for an unknown name in the node's own section; an unknown name given
    to every node is logged as a warning and undeclared.
    """
    fqn = node.get_fully_qualified_name()
    received = {
        name: param.value
        for name, param in node.get_parameters_by_prefix("").items()
        if not is_builtin(name)
    }
    names = cfgmod.SegConfig.names()
    unknown = sorted(set(received) - set(names))
    if unknown:
        shared = wildcard_parameter_names(
            node, cli_args=cli_args, use_global_arguments=use_global_arguments
        )
        own = [n for n in unknown if n not in shared]
        if own:
            raise cfgmod.ConfigError(
                f"node {fqn}: unknown parameter(s) {', '.join(map(repr, own))} (in the node's own "
                f"parameter-file section or given to it directly); valid: {', '.join(names)}"
            )
        node.get_logger().warning(
            f"ignoring parameter(s) {', '.join(map(repr, unknown))}: given to every node "
            "(a '/**' parameter-file section or -p without a node name) and not parameters of "
            f"{fqn}"
        )
        for name in unknown:
            node.undeclare_parameter(name)
    given = cfgmod.validate(
        {k: v for k, v in received.items() if k in names}, source=f"{fqn} parameters", partial=True
    )
    default_path = cfgmod.default_config_path()
    values = cfgmod.validate(cfgmod.read_params_file(default_path), source=str(default_path)).flat()
    values.update(given)  # ints given for float parameters are floats now
    for key in names:
        if node.has_parameter(key):  # declared from an override, without a descriptor
            node.undeclare_parameter(key)
        node.declare_parameter(
            key, values[key], parameter_descriptor(key), ignore_override=key in given
        )
    return cfgmod.validate(
        {key: node.get_parameter(key).value for key in names}, source=f"{fqn} parameters"
    )
