"""`seg-perception play` publishes every message of a bag once, in order, with its header."""

import subprocess
import sys

import pytest
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image
from waiting import wait_for

from seg_perception.data.bag_io import read_bag_messages, write_synth_bag
from seg_perception.data.synth import generate_frames
from seg_perception.ros.bridge import loopback_env
from seg_perception.ros.compat import SpinThread


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    frames = generate_frames(4, seed=3, height=48, width=96)
    return write_synth_bag(
        tmp_path_factory.mktemp("play") / "b", frames, fps=20.0, compressed=False
    )


def test_play_publishes_every_message_once_in_order(bag):
    topics = ["/camera/image", "/camera/gt/semantic"]
    recorded = {t: [raw for tt, _, _, raw in read_bag_messages(bag, topics=[t])] for t in topics}
    rclpy.init()
    node = rclpy.create_node("play_listener")
    got: dict[str, list[bytes]] = {t: [] for t in topics}
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    for t in topics:
        node.create_subscription(
            Image, t, lambda raw, t=t: got[t].append(bytes(raw)), qos, raw=True
        )
    spinner = SpinThread.of(node)
    try:
        cmd = [
            sys.executable,
            "-m",
            "seg_perception.cli",
            "play",
            str(bag),
            "--topics",
            *topics,
            "--wait-subscribers",
            "10",
        ]
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env=loopback_env()
        )
        assert result.returncode == 0, result.stderr
        assert "published 8 messages" in result.stdout
        wait_for(
            lambda: all(len(got[t]) >= 4 for t in topics),
            30,
            lambda: f"4 messages on each topic (got {[len(got[t]) for t in topics]})",
        )
        for t in topics:
            assert got[t] == recorded[t], t  # same bytes, same order, each once
        stamps = [deserialize_message(r, Image).header.stamp.nanosec for r in got[topics[0]]]
        assert stamps == sorted(stamps) and len(set(stamps)) == 4
    finally:
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()


def test_play_names_missing_topics(bag):
    cmd = [sys.executable, "-m", "seg_perception.cli", "play", str(bag), "--topics", "/nope"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=loopback_env())
    assert result.returncode == 2
    assert "/nope" in result.stderr and "/camera/image" in result.stderr
