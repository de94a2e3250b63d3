"""seg_node's parameters: descriptors from the schema, and what reaches the node through rcl.

Unknown names in the node's own section stop it; in a section for every node (``/**``, ``-p``
without a node name) they are a warning and the node runs.
"""

import contextlib
import dataclasses
import os
import queue
import subprocess
import threading
import typing
from pathlib import Path

import pytest
from rcl_interfaces.msg import ParameterType
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
from waiting import poll_until

from seg_perception.config import ConfigError, SegConfig
from seg_perception.config_schema import RELOADABLE
from seg_perception.ros.bridge import loopback_env, node_command
from seg_perception.ros.params import declare_parameters

ROOT = Path(__file__).resolve().parent.parent
SMALL_SECTION = f"""\
/**/seg_node:
  ros__parameters:
    allow_random_weights: true
    backend: torch
    network_height: 64
    network_width: 128
    threads: 1
    warmup_frames: 0
    engine_cache: "{os.environ["SEG_TEST_ENGINE_CACHE"]}"
    panoptic:
      enabled: false
"""


def _schema_fields() -> dict[str, dataclasses.Field]:
    """Dotted name -> dataclass field of the schema, walked independently of the code."""
    out = {}

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("section"):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = f

    walk(SegConfig, "")
    return out


@contextlib.contextmanager
def _node(args, name="seg_node", **node_kwargs):
    """A plain node on a context of its own, created the way SegNode creates itself."""
    ctx = Context()
    ctx.init(["seg_node", "--ros-args", *args], initialize_logging=False)
    node = Node(
        name, context=ctx, automatically_declare_parameters_from_overrides=True, **node_kwargs
    )
    try:
        yield node
    finally:
        node.destroy_node()
        ctx.try_shutdown()


def _params_file(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_descriptors_carry_type_range_choices_and_read_only():
    fields = _schema_fields()
    assert set(fields) == set(SegConfig.names())
    with _node([]) as node:
        declare_parameters(node)
        ranged = 0
        for key, f in fields.items():
            d = node.describe_parameter(key)
            meta = f.metadata
            assert d.read_only == (key not in RELOADABLE), key
            assert d.description == SegConfig.description(key), key
            if meta["choices"]:
                assert d.additional_constraints == "one of: " + ", ".join(meta["choices"]), key
            if meta["minimum"] is None:
                assert not d.integer_range and not d.floating_point_range, key
                continue
            ranged += 1
            if d.type == ParameterType.PARAMETER_INTEGER:
                (r,) = d.integer_range
                assert not d.floating_point_range, key
            else:
                assert d.type == ParameterType.PARAMETER_DOUBLE, key
                (r,) = d.floating_point_range
            assert (r.from_value, r.to_value) == (meta["minimum"], meta["maximum"]), key
        assert ranged >= 15  # every numeric parameter of the schema has bounds
        assert node.describe_parameter("network_height").integer_range[0].to_value == 4096
        assert node.describe_parameter("overlay_alpha").floating_point_range[0].to_value == 1.0


def test_rclpy_enforces_the_ranges_on_set():
    with _node([]) as node:
        declare_parameters(node)
        (result,) = node.set_parameters([Parameter("threads", value=1000)])
        assert not result.successful and "out of range" in result.reason
        assert node.get_parameter("threads").value != 1000
        (result,) = node.set_parameters([Parameter("threads", value=3)])
        assert result.successful and node.get_parameter("threads").value == 3


def test_overrides_are_validated_and_an_int_is_accepted_for_a_float():
    with _node(["-p", "overlay_alpha:=1", "-p", "model:=shelfnet"]) as node:
        cfg = declare_parameters(node)
        assert cfg.overlay_alpha == 1.0 and isinstance(cfg.overlay_alpha, float)
        assert cfg.model == "shelfnet"
        assert node.get_parameter("overlay_alpha").type_ == Parameter.Type.DOUBLE
    with _node(["-p", "overlay_alpha:=3.0"]) as node, pytest.raises(ConfigError) as err:
        declare_parameters(node)
    assert "overlay_alpha" in str(err.value) and "<= 1.0" in str(err.value)


def test_wildcard_unknown_key_is_a_warning_and_undeclared(tmp_path, capfd):
    shared = _params_file(
        tmp_path,
        "/**:\n  ros__parameters:\n    lidar_rate_hz: 10.0\n    model: shelfnet\n",
    )
    # launch's name remap is global: the probe must not be renamed by it
    args = ["--params-file", shared, "-r", "__node:=seg_node", "-r", "__ns:=/front"]
    with _node(args, name="any_name") as node:
        cfg = declare_parameters(node)
        assert node.get_fully_qualified_name() == "/front/seg_node"
        assert cfg.model == "shelfnet"  # a known key of the shared section applies
        assert not node.has_parameter("lidar_rate_hz")
    err = capfd.readouterr().err
    assert "ignoring parameter(s) 'lidar_rate_hz'" in err and "/front/seg_node" in err


@pytest.mark.parametrize("section", ["/**/seg_node", "/front/seg_node", "/**/renamed"])
def test_own_section_unknown_key_is_an_error(tmp_path, section):
    path = _params_file(
        tmp_path,
        f"{section}:\n  ros__parameters:\n    network_hieght: 64\n"
        "/**:\n  ros__parameters:\n    lidar_rate_hz: 10.0\n",
    )
    args = ["--params-file", path, "-r", "__ns:=/front"]
    if section.endswith("renamed"):
        args += ["-r", "__node:=renamed"]
    with _node(args) as node:
        fqn = node.get_fully_qualified_name()
        with pytest.raises(ConfigError) as err:
            declare_parameters(node)
    text = str(err.value)
    assert "unknown parameter(s) 'network_hieght'" in text and "valid: cameras" in text
    assert "lidar_rate_hz" not in text  # only the node's own keys are its errors
    assert f"node {fqn}:" in text and fqn.startswith("/front/")


def test_explicit_overrides_are_the_nodes_own():
    from seg_perception.ros.node import SegNode

    ctx = Context()
    ctx.init(["seg_node"], initialize_logging=False)
    try:
        with pytest.raises(ConfigError, match="unknown parameter\\(s\\) 'bogus'"):
            SegNode(context=ctx, parameter_overrides=[Parameter("bogus", value=1)])
    finally:
        ctx.try_shutdown()


def _start(cmd):
    env = dict(loopback_env(), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    return proc, lines


def test_node_with_a_shared_params_file_warns_and_runs(tmp_path):
    """The shipped file, a file with seg_node's section and a shared one, as a launch file for
    several nodes would pass them: the node starts, warning about the other nodes' keys."""
    own = _params_file(tmp_path, SMALL_SECTION, "own.yaml")
    shared = _params_file(
        tmp_path,
        "/**:\n  ros__parameters:\n    lidar_rate_hz: 10.0\n"
        "lidar_node:\n  ros__parameters:\n    frame_id: lidar\n",
        "shared.yaml",
    )
    cmd = node_command(ROOT / "config" / "seg.yaml", namespace="/cam_shared")
    cmd += ["--params-file", own, "--params-file", shared]
    proc, lines = _start(cmd)
    seen: list[str] = []
    try:

        def listening():
            with contextlib.suppress(queue.Empty):
                while True:
                    seen.append(lines.get_nowait())
            return any("listening on" in x for x in seen) or proc.poll() is not None

        poll_until(listening, 120)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = "".join(seen) + "".join(lines.queue)
    assert "ignoring parameter(s) 'lidar_rate_hz'" in log, log
    assert "listening on /cam_shared/image" in log, log
    assert "frame_id" not in log  # another node's own section never reaches this one
    assert proc.returncode == 0, log
