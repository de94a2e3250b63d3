"""The package builds with colcon into a ROS workspace exactly where ROS 2 tools look."""

import ast
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seg_perception.ros.bridge import loopback_env

ROOT = Path(__file__).resolve().parent.parent
COLCON = Path(sys.executable).with_name("colcon")
SKIP = {".venv", ".git", ".cache", "demo_out", "build", "install", "log", "__pycache__"}
# ignored top-level folders of GBs: virtual environments of other distributions (.venv-jazzy),
# datasets, training runs and logs (never part of the package)
SKIP_TOP = {"data", "runs", "logs"}


def _not_copied(folder: str, names: list[str]) -> list[str]:
    top = Path(folder) == ROOT
    return [
        n
        for n in names
        if n in SKIP
        or n.endswith(".egg-info")
        or (top and (n.startswith(".venv") or n in SKIP_TOP))
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(
        ROOT,
        ws / "src" / "seg_perception",
        ignore=_not_copied,
    )
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [str(COLCON), "build", "--base-paths", "src"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return ws / "install" / "seg_perception"


def test_package_xml_parses_with_catkin_pkg():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT))
    assert pkg.name == "seg_perception" and pkg.package_format == 3
    assert pkg.get_build_type() == "ament_python"
    assert "@" in pkg.maintainers[0].email
    exec_deps = {d.name for d in pkg.exec_depends}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs"} <= exec_deps


def _imported_top_level(paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_package_xml_lists_every_ros_package_the_code_imports():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT))
    code = [*(ROOT / "seg_perception").rglob("*.py"), *(ROOT / "launch").glob("*.py")]
    imported = _imported_top_level(code)
    ros = {
        n
        for n in imported
        if n.endswith(("_msgs", "_interfaces"))
        or n in {"rclpy", "launch", "launch_ros", "ament_index_python", "cv_bridge"}
        or n.startswith(("rosbag2", "rosidl", "tf2", "message_filters"))
    }
    assert {"rclpy", "rcl_interfaces", "rosgraph_msgs", "launch_ros"} <= ros  # the scan works
    exec_deps = {d.name for d in pkg.exec_depends}
    assert not ros - exec_deps, f"package.xml lacks exec_depend {sorted(ros - exec_deps)}"
    # test dependencies only for tests that exist (the ament_python template's linters)
    for dep in pkg.test_depends:
        if dep.name.startswith("ament_"):
            linter = dep.name.removeprefix("ament_")
            assert (ROOT / "test" / f"test_{linter}.py").is_file(), dep.name
    test_imports = _imported_top_level((ROOT / "test").glob("*.py"))
    assert "catkin_pkg" in test_imports and "pytest" in test_imports
    assert {"python3-pytest", "python3-catkin-pkg"} <= {d.name for d in pkg.test_depends}


def test_ament_index_finds_package_and_files(workspace):
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    saved = os.environ.get("AMENT_PREFIX_PATH")
    os.environ["AMENT_PREFIX_PATH"] = str(workspace)
    try:
        share = Path(get_package_share_directory("seg_perception"))
        prefix = Path(get_package_prefix("seg_perception"))
    finally:
        if saved is None:
            os.environ.pop("AMENT_PREFIX_PATH")
        else:
            os.environ["AMENT_PREFIX_PATH"] = saved
    assert share == workspace / "share" / "seg_perception"
    assert (share / "launch" / "seg.launch.py").is_file()
    assert (share / "config" / "seg.yaml").is_file()
    assert (share / "config" / "seg.rviz").is_file()
    assert (share / "config" / "fastdds_large_images.xml").is_file()
    assert (share / "config" / "train" / "gun_synth.yaml").is_file()
    assert (share / "package.xml").is_file()
    for name in ("gun_synth", "shelfnet_synth", "asp_synth"):  # the shipped models
        assert (share / "models" / f"{name}.safetensors").is_file(), name
    exe = prefix / "lib" / "seg_perception" / "seg_node"
    assert exe.is_file() and os.access(exe, os.X_OK)
    assert os.access(prefix / "lib" / "seg_perception" / "seg-perception", os.X_OK)


def test_installed_executable_runs_and_validates_parameters(workspace):
    exe = workspace / "lib" / "seg_perception" / "seg_node"
    site = next((workspace / "lib").glob("python3*/site-packages"))
    env = dict(os.environ, PYTHONPATH=str(site), AMENT_PREFIX_PATH=str(workspace))
    result = subprocess.run(
        [str(exe), "--ros-args", "-p", "model:=resnet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "model" in result.stderr and "gun, shelfnet" in result.stderr


def test_installed_node_starts_with_the_shipped_models(workspace, tmp_path):
    """Default parameters, no allow_random_weights, started outside the source tree: the weights
    come from share/seg_perception/models and the node gets to listening."""
    exe = workspace / "lib" / "seg_perception" / "seg_node"
    site = next((workspace / "lib").glob("python3*/site-packages"))
    env = dict(
        loopback_env(),
        PYTHONPATH=str(site),
        AMENT_PREFIX_PATH=str(workspace),
        PYTHONUNBUFFERED="1",
    )
    cmd = [str(exe), "--ros-args", "-p", "backend:=torch", "-p", "network_height:=64"]
    cmd += ["-p", "network_width:=128", "-p", "threads:=1", "-p", "warmup_frames:=0"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    seen = []
    try:
        deadline = time.monotonic() + 120
        while not any("listening on" in x for x in seen) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.5))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(10)
    seen.extend(lines.queue)
    log = "".join(seen)
    share = workspace / "share" / "seg_perception" / "models"
    assert "listening on" in log, log
    assert f"weights from {share / 'gun_synth.safetensors'}" in log, log
    assert f"weights from {share / 'asp_synth.safetensors'}" in log, log
    assert "RANDOM" not in log
