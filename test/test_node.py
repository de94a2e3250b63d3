"""seg_node over real DDS: in-process and as its own process, good and bad frames."""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from seg_perception.labels import CITYSCAPES
from seg_perception.ros.bridge import loopback_env, node_command
from seg_perception.ros.image_codec import array_to_imgmsg, imgmsg_to_array
from seg_perception.ros.node import OUTPUT_QOS, OUTPUT_TOPICS, SegNode

ROOT = Path(__file__).resolve().parent.parent
SMALL = [
    Parameter("allow_random_weights", value=True),
    Parameter("network_height", value=64),
    Parameter("network_width", value=128),
    Parameter("warmup_frames", value=0),
    Parameter("threads", value=1),
    Parameter("panoptic.enabled", value=False),
    Parameter("engine_cache", value=os.environ["SEG_TEST_ENGINE_CACHE"]),
]
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


class Harness:
    """A listener node on the outputs + a publisher on the input, spun in a thread."""

    def __init__(self, namespace: str = "", input_type: type = Image, nodes: tuple = ()):
        self.node = rclpy.create_node("test_harness", namespace=namespace)
        self.received: dict[str, list] = {t: [] for t in (*OUTPUT_TOPICS, "labels", "diag")}
        self.cv = threading.Condition()
        for topic in OUTPUT_TOPICS:
            self.node.create_subscription(Image, topic, self._keep(topic), OUTPUT_QOS)
        self.node.create_subscription(String, "segmentation/labels", self._keep("labels"), LATCHED)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._keep("diag"), 10)
        topic = "image" if input_type is Image else "image/compressed"
        self.pub = self.node.create_publisher(input_type, topic, 10)
        self.executor = MultiThreadedExecutor(num_threads=2)
        for n in (self.node, *nodes):
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _keep(self, key):
        def callback(msg):
            with self.cv:
                self.received[key].append(msg)
                self.cv.notify_all()

        return callback

    def wait_for(self, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        with self.cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.1))
        return True

    def wait_subscribed(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while self.pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.pub.get_subscription_count() > 0, "node never subscribed to the input"

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


def _image(height=96, width=160, stamp=(12, 345), seed=0):
    rgb = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    header = Header(frame_id="cam_front")
    header.stamp.sec, header.stamp.nanosec = stamp
    return rgb, array_to_imgmsg(rgb, "rgb8", header=header)


def test_in_process_every_output_with_input_header(ros):
    node = SegNode(parameter_overrides=SMALL)
    h = Harness(nodes=(node,))
    try:
        h.wait_subscribed()
        assert h.wait_for(lambda: h.received["labels"]), "latched labels topic not received"
        labels = json.loads(h.received["labels"][0].data)
        assert len(labels["train_ids"]) == 19
        deadline = time.monotonic() + 10
        while len(node.wanted_outputs()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        rgb, msg = _image()
        h.pub.publish(msg)
        assert h.wait_for(lambda: all(h.received[t] for t in OUTPUT_TOPICS))
        for topic, (_, encoding) in OUTPUT_TOPICS.items():
            out = h.received[topic][0]
            assert out.header.frame_id == "cam_front", topic
            assert (out.header.stamp.sec, out.header.stamp.nanosec) == (12, 345), topic
            assert (out.height, out.width, out.encoding) == (96, 160, encoding), topic
        semantic = imgmsg_to_array(h.received["segmentation/semantic"][0])
        assert semantic.dtype == np.uint8 and semantic.max() < 19
        colour = imgmsg_to_array(h.received["segmentation/semantic_color"][0])
        np.testing.assert_array_equal(colour, CITYSCAPES.colorize(semantic))
        overlay = imgmsg_to_array(h.received["segmentation/overlay"][0])
        expected = cv2.addWeighted(rgb, 0.5, colour, 0.5, 0.0)
        assert np.abs(overlay.astype(int) - expected).max() <= 1
        assert h.wait_for(lambda: h.received["diag"], timeout=5)
        values = {kv.key: kv.value for kv in h.received["diag"][-1].status[0].values}
        assert int(values["frames_processed"]) == 1
    finally:
        h.close()
        node.shutdown()
        node.destroy_node()


def test_bad_frames_are_counted_and_next_good_frame_answered(ros):
    node = SegNode(parameter_overrides=SMALL)
    h = Harness(nodes=(node,))
    try:
        h.wait_subscribed()
        _, good = _image()
        bad = []
        short = array_to_imgmsg(np.zeros((8, 8, 3), np.uint8), "rgb8")
        short.data = short.data[:-10]
        bad.append(("data_too_short", short))
        unknown = array_to_imgmsg(np.zeros((8, 8, 3), np.uint8), "rgb8")
        unknown.encoding = "weird42"
        bad.append(("unknown_encoding", unknown))
        bad.append(("empty", Image(height=0, width=0, encoding="rgb8", step=0)))
        for i, (reason, msg) in enumerate(bad, start=1):
            h.pub.publish(msg)
            deadline = time.monotonic() + 10
            while node.stats.bad_total < i and time.monotonic() < deadline:
                time.sleep(0.02)
            assert node.stats.bad_reasons[reason] == 1, (reason, dict(node.stats.bad_reasons))
        h.pub.publish(good)
        assert h.wait_for(lambda: h.received["segmentation/semantic"])
        assert node.stats.processed == 1 and node.stats.bad_total == 3
    finally:
        h.close()
        node.shutdown()
        node.destroy_node()


def test_corrupt_jpeg_on_compressed_input(ros):
    node = SegNode(parameter_overrides=[*SMALL, Parameter("input_transport", value="compressed")])
    h = Harness(input_type=CompressedImage, nodes=(node,))
    try:
        h.wait_subscribed()
        rgb, _ = _image()
        ok, jpeg = cv2.imencode(".jpg", rgb)
        assert ok
        corrupt = CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpeg.tobytes()[:40])
        h.pub.publish(corrupt)
        deadline = time.monotonic() + 10
        while node.stats.bad_total < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert node.stats.bad_reasons["corrupt_compressed"] == 1
        good = CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpeg.tobytes())
        good.header.frame_id = "cam_front"
        h.pub.publish(good)
        assert h.wait_for(lambda: h.received["segmentation/semantic"])
        out = h.received["segmentation/semantic"][0]
        assert (out.height, out.width, out.header.frame_id) == (96, 160, "cam_front")
    finally:
        h.close()
        node.shutdown()
        node.destroy_node()


def test_only_subscribed_outputs_are_computed(ros):
    node = SegNode(parameter_overrides=SMALL)
    listener = rclpy.create_node("only_semantic")
    got = []
    listener.create_subscription(Image, "segmentation/semantic", got.append, OUTPUT_QOS)
    try:
        deadline = time.monotonic() + 10
        while not node.wanted_outputs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.wanted_outputs() == {"semantic"}
        _, msg = _image()
        timings = node.process_message(msg)
        assert timings is not None
        bufs = node.pipeline._buf._bufs  # colour work skipped: no colour or overlay buffers
        assert "semantic0" in bufs and "color0" not in bufs and "overlay0" not in bufs
    finally:
        listener.destroy_node()
        node.shutdown()
        node.destroy_node()


def test_latest_frame_policy_drops_stale_frames(ros):
    node = SegNode(parameter_overrides=SMALL)
    real_infer = node.pipeline.engine.infer

    def slow_infer(batch):
        time.sleep(0.3)
        return real_infer(batch)

    node.pipeline.engine.infer = slow_infer
    h = Harness(nodes=(node,))
    try:
        h.wait_subscribed()
        deadline = time.monotonic() + 10
        while len(node.wanted_outputs()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(8):
            h.pub.publish(_image(stamp=(i, 0), seed=i)[1])
            time.sleep(0.03)
        assert h.wait_for(
            lambda: any(m.header.stamp.sec == 7 for m in h.received["segmentation/semantic"]),
            timeout=20,
        )
        time.sleep(0.4)
        stats = node.stats
        assert stats.received == 8
        assert stats.dropped_stale >= 3  # a slow engine never builds a queue
        assert stats.processed + stats.dropped_stale == 8
        stamps = [m.header.stamp.sec for m in h.received["segmentation/semantic"]]
        assert stamps == sorted(stamps) and stamps[-1] == 7
    finally:
        h.close()
        node.shutdown()
        node.destroy_node()


def _run_node(*extra, timeout=120):
    cmd = node_command(ROOT / "config" / "seg.yaml") + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=loopback_env())


def test_subprocess_refuses_without_weights_naming_the_parameter():
    result = _run_node("-p", "weights:=/nonexistent/gun.safetensors")
    assert result.returncode == 2
    assert "'weights'" in result.stderr and "allow_random_weights" in result.stderr


def test_subprocess_rejects_invalid_and_unknown_parameters():
    result = _run_node("-p", "overlay_alpha:=3.0")
    assert result.returncode == 2 and "overlay_alpha" in result.stderr
    result = _run_node("-p", "overlay_alpa:=0.3")
    assert result.returncode == 2 and "overlay_alpa" in result.stderr


def test_subprocess_from_params_file_on_remapped_namespace(ros):
    cmd = node_command(
        ROOT / "config" / "seg.yaml",
        namespace="/front_cam",
        params={
            "allow_random_weights": "true",
            "network_height": "64",
            "network_width": "128",
            "threads": "1",
            "panoptic.enabled": "false",
            "engine_cache": os.environ["SEG_TEST_ENGINE_CACHE"],
        },
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=loopback_env()
    )
    h = Harness(namespace="/front_cam")
    try:
        h.wait_subscribed(timeout=90)
        assert h.wait_for(lambda: h.received["labels"], timeout=30)
        deadline = time.monotonic() + 30
        _, msg = _image(stamp=(77, 1))
        while not h.received["segmentation/semantic"] and time.monotonic() < deadline:
            h.pub.publish(msg)  # subscription matching may lag discovery: resend until answered
            h.wait_for(lambda: h.received["segmentation/semantic"], timeout=1.0)
        out = h.received["segmentation/semantic"][0]
        assert (out.header.stamp.sec, out.header.stamp.nanosec, out.header.frame_id) == (
            77,
            1,
            "cam_front",
        )
        assert (out.height, out.width, out.encoding) == (96, 160, "mono8")
    finally:
        h.close()
        proc.send_signal(2)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = proc.stdout.read().decode(errors="replace")
    assert proc.returncode == 0, log
    assert "Traceback" not in log


def test_subprocess_params_file_key_must_match_namespace(tmp_path):
    body = "  ros__parameters:\n    allow_random_weights: true\n    network_height: 64\n"
    plain = tmp_path / "plain.yaml"
    plain.write_text("seg_node:\n" + body)
    cmd = node_command(plain, namespace="/ns_check")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=loopback_env())
    assert result.returncode == 2
    assert "plain.yaml" in result.stderr and "/**/seg_node" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**/seg_node:\n  ros__parameters:\n    network_hieght: 64\n")
    result = subprocess.run(
        node_command(bad), capture_output=True, text=True, timeout=120, env=loopback_env()
    )
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "network_hieght" in result.stderr


def _panoptic_node(mode: str, every_n: int = 1):
    params = [p for p in SMALL if p.name not in ("panoptic.enabled",)]
    return SegNode(
        parameter_overrides=[
            *params,
            Parameter("backend", value="torch"),
            Parameter("panoptic.enabled", value=True),
            Parameter("panoptic.mode", value=mode),
            Parameter("panoptic.every_n", value=every_n),
            Parameter("panoptic.network_height", value=128),
            Parameter("panoptic.network_width", value=256),
            Parameter("panoptic.score_threshold", value=0.0),
        ]
    )


def _panoptic_listener(h: Harness):
    for topic in ("segmentation/instance", "segmentation/panoptic", "segmentation/panoptic_color"):
        h.received[topic] = []
        h.node.create_subscription(Image, topic, h._keep(topic), OUTPUT_QOS)


def test_panoptic_sync_every_n_frames_with_input_header(ros):
    node = _panoptic_node("sync", every_n=2)
    h = Harness(nodes=(node,))
    _panoptic_listener(h)
    try:
        h.wait_subscribed()
        deadline = time.monotonic() + 10
        while len(node.wanted_outputs()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(3):
            h.pub.publish(_image(stamp=(100 + i, 0), seed=i)[1])
            assert h.wait_for(
                lambda i=i: any(
                    m.header.stamp.sec == 100 + i for m in h.received["segmentation/semantic"]
                )
            )
        assert h.wait_for(
            lambda: all(
                len(h.received[t]) >= 2
                for t in (
                    "segmentation/instance",
                    "segmentation/panoptic",
                    "segmentation/panoptic_color",
                )
            )
        )
        time.sleep(0.3)
        for topic, encoding in (
            ("segmentation/instance", "mono16"),
            ("segmentation/panoptic", "32SC1"),
            ("segmentation/panoptic_color", "rgb8"),
        ):
            msgs = h.received[topic]
            assert [m.header.stamp.sec for m in msgs] == [100, 102], topic  # frames 0 and 2
            assert all(
                (m.height, m.width, m.encoding, m.header.frame_id)
                == (96, 160, encoding, "cam_front")
                for m in msgs
            ), topic
        pan = imgmsg_to_array(h.received["segmentation/panoptic"][0])
        inst = imgmsg_to_array(h.received["segmentation/instance"][0])
        np.testing.assert_array_equal(pan % 1000, inst)
        assert (pan // 1000).max() < 19
    finally:
        h.close()
        node.shutdown()
        node.destroy_node()


def test_panoptic_async_never_publishes_under_a_foreign_stamp(ros):
    node = _panoptic_node("async")
    h = Harness(nodes=(node,))
    _panoptic_listener(h)
    try:
        h.wait_subscribed()
        deadline = time.monotonic() + 10
        while len(node.wanted_outputs()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(6):
            h.pub.publish(_image(stamp=(200 + i, 0), seed=i)[1])
            time.sleep(0.05)
        assert h.wait_for(lambda: len(h.received["segmentation/panoptic"]) >= 1, timeout=30)
        time.sleep(1.0)
        semantic = {m.header.stamp.sec for m in h.received["segmentation/semantic"]}
        panoptic = [m.header.stamp.sec for m in h.received["segmentation/panoptic"]]
        assert set(panoptic) <= semantic and len(panoptic) == len(set(panoptic))
        assert panoptic == sorted(panoptic)
    finally:
        h.close()
        node.shutdown()
        node.destroy_node()
