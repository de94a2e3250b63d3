"""launch/seg.launch.py: declarative (substitutions and conditions), every common override a
launch argument, overrides after the parameter file so they win, RViz only on request.

``launch`` and ``launch_ros`` are not on PyPI, so the launch file runs here against a small stand-in
of the part of their API it uses (same names and keywords; the semantics of ros2/launch and
ros2/launch_ros: a scoped group, global parameters passed in order, ``IfCondition`` accepting only
true/false/1/0, values parsed as YAML). The command line it yields is then handed to real rclpy,
which must give the node the intended parameters, name, namespace and remappings. Where the real
packages are installed, the file is also built with them.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import yaml
from rclpy.context import Context
from rclpy.node import Node as RclNode

from seg_perception.config import SegConfig
from seg_perception.ros.params import BUILTIN_PARAMS, declare_parameters

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILE = ROOT / "launch" / "seg.launch.py"


# ----------------------------------------------------------------- the stand-in launch API
class _Context:
    def __init__(self, arguments: dict[str, str]):
        self.configs: dict[str, object] = dict(arguments)
        self.processes: list[dict] = []


def _subs(value):
    """A substitution, a string or a list of them -> a list (launch's normalisation)."""
    if isinstance(value, list | tuple):
        return [v for item in value for v in _subs(item)]
    return [value]


def _perform(context: _Context, value) -> str:
    return "".join(v if isinstance(v, str) else v.perform(context) for v in _subs(value))


class LaunchConfiguration:
    def __init__(self, variable_name, default=None):
        self.name, self.default = variable_name, default

    def perform(self, context):
        if self.name in context.configs:
            return context.configs[self.name]
        if self.default is None:
            raise KeyError(f"launch configuration {self.name!r} does not exist")
        return _perform(context, self.default)


class NotEqualsSubstitution:
    def __init__(self, left, right):
        self.left, self.right = left, right

    def perform(self, context):
        return str(_perform(context, self.left) != _perform(context, self.right)).lower()


class PathJoinSubstitution:
    def __init__(self, substitutions):
        self.parts = substitutions

    def perform(self, context):
        return os.path.join(*(_perform(context, p) for p in self.parts))


class FindPackageShare:
    def __init__(self, package):
        self.package = package

    def perform(self, context):
        if self.package != "seg_perception":
            raise LookupError(f"package {self.package!r} not found")
        return str(ROOT)  # the source tree has the share directory's layout


class IfCondition:
    def __init__(self, predicate_expression):
        self.expression = predicate_expression

    def evaluate(self, context):
        text = _perform(context, self.expression).strip().lower()
        if text not in ("true", "false", "1", "0"):
            raise ValueError(f"IfCondition: invalid condition expression {text!r}")
        return text in ("true", "1")


class _Action:
    def __init__(self, condition=None):
        self.condition = condition

    def visit(self, context):
        if self.condition is None or self.condition.evaluate(context):
            self.execute(context)


class DeclareLaunchArgument(_Action):
    def __init__(self, name, *, default_value=None, description="", **kwargs):
        super().__init__(**kwargs)
        self.name, self.default_value, self.description = name, default_value, description

    def execute(self, context):
        if self.name not in context.configs:
            if self.default_value is None:
                raise RuntimeError(f"required launch argument {self.name!r} not given")
            context.configs[self.name] = _perform(context, self.default_value)


class GroupAction(_Action):
    def __init__(self, actions, *, scoped=True, forwarding=True, **kwargs):
        super().__init__(**kwargs)
        self.actions, self.scoped = list(actions), scoped

    def execute(self, context):
        saved = dict(context.configs)
        if "global_params" in saved:
            saved["global_params"] = list(saved["global_params"])
        for action in self.actions:
            action.visit(context)
        if self.scoped:
            context.configs = saved


class SetParametersFromFile(_Action):
    def __init__(self, filename, **kwargs):
        super().__init__(**kwargs)
        self.filename = filename

    def execute(self, context):
        context.configs.setdefault("global_params", []).append(_perform(context, self.filename))


class SetParameter(_Action):
    def __init__(self, name, value, **kwargs):
        super().__init__(**kwargs)
        self.name, self.value = name, value

    def execute(self, context):
        text = _perform(context, self.value)
        value = yaml.safe_load(text if text else "''")  # launch_ros parses values as YAML
        name = _perform(context, self.name)
        context.configs.setdefault("global_params", []).append((name, value))


class Node(_Action):
    def __init__(
        self,
        *,
        executable,
        package=None,
        name=None,
        namespace=None,
        parameters=None,
        remappings=None,
        ros_arguments=None,
        arguments=None,
        **kwargs,
    ):
        condition = kwargs.pop("condition", None)
        assert set(kwargs) <= {"output", "emulate_tty"}, kwargs
        super().__init__(condition=condition)
        assert parameters is None, "parameters come from SetParametersFromFile / SetParameter"
        self.package, self.executable, self.name, self.namespace = (
            package,
            executable,
            name,
            namespace,
        )
        self.remappings, self.ros_arguments = remappings or [], ros_arguments or []
        self.arguments = arguments or []

    def execute(self, context):
        """The command line in launch_ros's order: arguments, ros_arguments, name, namespace,
        global parameters (in order), remappings."""
        cmd = [f"{self.package}/{self.executable}"]
        cmd += [_perform(context, a) for a in self.arguments]
        if self.ros_arguments:
            cmd += ["--ros-args", *(_perform(context, a) for a in self.ros_arguments)]
        cmd += ["--ros-args"]
        if self.name is not None:
            cmd += ["-r", f"__node:={_perform(context, self.name)}"]
        namespace = None
        if self.namespace is not None:
            namespace = "/" + _perform(context, self.namespace).strip("/")
            cmd += ["-r", f"__ns:={namespace}"]
        for param in context.configs.get("global_params", []):
            if isinstance(param, tuple):
                cmd += ["-p", f"{param[0]}:={param[1]}"]
            else:
                assert os.path.isfile(param), param
                cmd += ["--params-file", os.path.abspath(param)]
        for src, dst in self.remappings:
            cmd += ["-r", f"{_perform(context, src)}:={_perform(context, dst)}"]
        context.processes.append(
            {"package": self.package, "namespace": namespace, "cmd": cmd, "node": self}
        )


class LaunchDescription:
    def __init__(self, initial_entities=None):
        self.entities = list(initial_entities or [])


_FAKE_MODULES = {
    "launch": {"LaunchDescription": LaunchDescription},
    "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument, "GroupAction": GroupAction},
    "launch.conditions": {"IfCondition": IfCondition},
    "launch.substitutions": {
        "LaunchConfiguration": LaunchConfiguration,
        "NotEqualsSubstitution": NotEqualsSubstitution,
        "PathJoinSubstitution": PathJoinSubstitution,
    },
    "launch_ros": {},
    "launch_ros.actions": {
        "Node": Node,
        "SetParameter": SetParameter,
        "SetParametersFromFile": SetParametersFromFile,
    },
    "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
}


def _load_launch_file(name="seg_launch_under_test"):
    spec = importlib.util.spec_from_file_location(name, LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def launch_file(monkeypatch):
    for name, attrs in _FAKE_MODULES.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    return _load_launch_file()


def _launch(launch_file, **arguments) -> tuple[_Context, LaunchDescription]:
    description = launch_file.generate_launch_description()
    context = _Context(arguments)
    for entity in description.entities:
        entity.visit(context)
    return context, description


def _seg_process(context):
    (proc,) = [p for p in context.processes if p["package"] == "seg_perception"]
    return proc


@contextlib.contextmanager
def _rcl_node(cmd):
    """What rcl makes of a launch command line: a node (auto-declaring its overrides, as
    SegNode does) on a context initialised with exactly those arguments."""
    ctx = Context()
    ctx.init(cmd, initialize_logging=False)
    node = RclNode(
        "not_the_name", context=ctx, automatically_declare_parameters_from_overrides=True
    )
    try:
        yield node
    finally:
        node.destroy_node()
        ctx.try_shutdown()


# ----------------------------------------------------------------- tests
def test_launch_file_is_declarative():
    tree = ast.parse(LAUNCH_FILE.read_text())
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert not any(m.startswith("seg_perception") for m in imported), imported
    assert imported <= set(_FAKE_MODULES), imported
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & {"OpaqueFunction", "PythonExpression"}, names
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Compare)], "a Python comparison"
    calls = {
        n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and hasattr(n.func, "attr")
    }
    assert "perform" not in calls


def test_every_override_is_a_launch_argument_for_a_real_parameter(launch_file):
    _, description = _launch(launch_file)
    declared = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert all(d.description for d in declared.values())
    common = {
        "params_file", "namespace", "image_topic", "model", "weights", "engine_file", "backend",
        "precision", "device", "allow_random_weights", "cameras", "panoptic_enabled", "rviz",
        "use_sim_time", "log_level",
    }  # fmt: skip
    assert common <= set(declared), common - set(declared)
    (group,) = [e for e in description.entities if isinstance(e, GroupAction)]
    overrides = [a for a in group.actions if isinstance(a, SetParameter)]
    targets = [o.name for o in overrides]
    # a misspelt name would only be warned about (a -p is for every node): none may be
    assert set(targets) <= set(SegConfig.names()) | set(BUILTIN_PARAMS), targets
    assert len(set(targets)) == len(targets) >= 15
    assert {"allow_random_weights", "panoptic.enabled", "model", "weights"} <= set(targets)
    for o in overrides:  # each one is conditional on its own, declared launch argument
        assert isinstance(o.condition, IfCondition)
        assert o.value.name in declared and declared[o.value.name].default_value == ""
    assert isinstance(group.actions[0], SetParametersFromFile)  # the file first: overrides win
    assert isinstance(group.actions[-1], Node) and group.scoped


def test_defaults_pass_the_shipped_file_and_nothing_else(launch_file):
    context, _ = _launch(launch_file)
    proc = _seg_process(context)
    cmd = proc["cmd"]
    assert cmd.count("--params-file") == 1
    assert cmd[cmd.index("--params-file") + 1] == str(ROOT / "config" / "seg.yaml")
    assert "-p" not in cmd  # every override left empty keeps the file's value
    assert [p["package"] for p in context.processes] == ["seg_perception"]  # no RViz
    with _rcl_node(cmd) as node:
        cfg = declare_parameters(node)
        assert node.get_fully_qualified_name() == "/seg_node"
        assert node.resolve_topic_name("image") == "/image"
        assert node.resolve_topic_name("image/compressed") == "/image/compressed"
    shipped = yaml.safe_load((ROOT / "config" / "seg.yaml").read_text())
    section = shipped["/**/seg_node"]["ros__parameters"]
    assert (cfg.model, cfg.backend, cfg.allow_random_weights) == (
        section["model"],
        section["backend"],
        section["allow_random_weights"],
    )


def test_overrides_reach_the_node_over_the_file(launch_file, tmp_path):
    params_file = tmp_path / "mine.yaml"
    params_file.write_text(
        "/**/seg_node:\n  ros__parameters:\n    model: gun\n    threads: 3\n"
        "    panoptic:\n      enabled: true\n"
    )
    context, _ = _launch(
        launch_file,
        params_file=str(params_file),
        namespace="front",
        image_topic="/sensors/front/image_raw",
        model="shelfnet",
        allow_random_weights="true",
        panoptic_enabled="false",
        network_height="256",
        weights="/data/w/shelfnet.safetensors",
        use_sim_time="true",
        log_level="debug",
        input_qos="reliable",
    )
    cmd = _seg_process(context)["cmd"]
    assert cmd[cmd.index("--log-level") + 1] == "debug"
    with _rcl_node(cmd) as node:
        cfg = declare_parameters(node)
        assert node.get_fully_qualified_name() == "/front/seg_node"
        assert node.resolve_topic_name("image") == "/sensors/front/image_raw"
        assert node.resolve_topic_name("image/compressed") == "/sensors/front/image_raw/compressed"
        assert node.get_parameter("use_sim_time").value is True
    assert cfg.model == "shelfnet" and cfg.weights == "/data/w/shelfnet.safetensors"
    assert cfg.allow_random_weights is True and cfg.panoptic.enabled is False
    assert cfg.network_height == 256
    assert cfg.input_qos == "reliable"
    assert cfg.threads == 3  # not overridden: the file's value


def test_rviz_only_on_request(launch_file):
    context, _ = _launch(launch_file, rviz="true", namespace="front")
    (rviz,) = [p for p in context.processes if p["package"] == "rviz2"]
    cmd = rviz["cmd"]
    assert cmd[cmd.index("-d") + 1] == str(ROOT / "config" / "seg.rviz")
    assert rviz["namespace"] == "/front"  # config/seg.rviz uses relative topics
    context, _ = _launch(launch_file, rviz="false")
    assert [p["package"] for p in context.processes] == ["seg_perception"]
    with pytest.raises(ValueError, match="invalid condition"):
        _launch(launch_file, rviz="maybe")


def test_builds_with_the_real_launch_packages():
    """Where ROS 2's launch and launch_ros are installed: the file builds with them."""
    pytest.importorskip("launch_ros")
    import launch

    description = _load_launch_file("seg_launch_real").generate_launch_description()
    assert isinstance(description, launch.LaunchDescription)
    names = {a.name for a in description.get_launch_arguments()}
    assert {"params_file", "allow_random_weights", "model", "rviz"} <= names
