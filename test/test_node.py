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
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from waiting import poll_until, wait_for, wait_matched

from seg_perception.codec import array_to_imgmsg, imgmsg_to_array
from seg_perception.labels import CITYSCAPES
from seg_perception.ros.bridge import loopback_env, node_command
from seg_perception.ros.compat import SpinThread
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
        self.nodes = nodes
        # one thread per node: the node under test's callbacks never hold up the listener's
        self.spinners = [SpinThread.of(n) for n in (self.node, *nodes)]

    def _keep(self, key):
        def callback(msg):
            with self.cv:
                self.received[key].append(msg)
                self.cv.notify_all()

        return callback

    def wait_for(self, predicate, timeout=30.0):
        """True once ``predicate()`` holds (evaluated under the lock of the received lists),
        False after ``timeout`` seconds."""
        return poll_until(predicate, timeout, cv=self.cv)

    def wait_subscribed(self, timeout=30.0):
        """Until the input publisher is matched at both ends (the in-process nodes included)."""
        wait_matched(self.pub, self.nodes, timeout)

    def close(self):
        for spinner in self.spinners:
            spinner.stop()
        self.node.destroy_node()


def _wait_wanted(node, n, timeout=30.0):
    """Until the node sees subscribers on ``n`` of its outputs (graph discovery lags)."""
    wait_for(
        lambda: len(node.wanted_outputs()) >= n,
        timeout,
        lambda: f"subscribers on {n} outputs (the node sees {sorted(node.wanted_outputs())})",
    )


def _unaccounted(stats) -> int:
    """Frames received and not (yet) processed or dropped for a counted reason."""
    done = (
        stats.processed
        + stats.dropped_stale
        + stats.dropped_deadline
        + stats.skipped_no_subscribers
        + stats.bad_total
        + stats.engine_errors
    )
    return stats.received - done


def _wait_all_accounted(stats, timeout=30.0):
    """Until every frame received so far was processed or dropped: the counters are final."""
    wait_for(
        lambda: _unaccounted(stats) == 0,
        timeout,
        lambda: f"every received frame to be accounted for ({_unaccounted(stats)} are not)",
    )


def _camera_values(node, diag: DiagnosticArray) -> dict[str, str] | None:
    """The key/values of ``node``'s (first) camera status in a /diagnostics message."""
    prefix = f"{node.get_fully_qualified_name()}: camera "
    status = next((s for s in diag.status if s.name.startswith(prefix)), None)
    return None if status is None else {kv.key: kv.value for kv in status.values}


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
        _wait_wanted(node, 3)
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

        # diagnostics published before the frame was done say 0 frames (set-up may have taken
        # several periods): wait for the first status that counts the frame, then check it
        # counts exactly that one
        def counting() -> list[dict[str, str]]:
            values = [_camera_values(node, m) for m in h.received["diag"]]
            return [v for v in values if v and int(v["frames_processed"]) > 0]

        assert h.wait_for(counting, timeout=30), "no /diagnostics status counted the frame"
        values = counting()[0]
        assert (values["frames_received"], values["frames_processed"]) == ("1", "1"), values
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
            wait_for(lambda i=i: node.stats.bad_total >= i, 30, f"bad frame {i} to be counted")
            assert node.stats.bad_reasons[reason] == 1, (reason, dict(node.stats.bad_reasons))
        h.pub.publish(good)
        assert h.wait_for(lambda: h.received["segmentation/semantic"]), "good frame unanswered"
        _wait_all_accounted(node.stats)  # the frame is counted after all its outputs went out
        stats = node.stats
        assert (stats.received, stats.processed, stats.bad_total) == (4, 1, 3)
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
        wait_for(lambda: node.stats.bad_total >= 1, 30, "the corrupt JPEG to be counted")
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
        _wait_wanted(node, 1)
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
    """Frames that arrive while the engine is busy replace each other in a one-slot mailbox:
    the engine then gets the newest, never a queue of old ones. The engine is held on frame 0
    (no timing involved); input is best effort, so which frames arrive is not asserted."""
    node = SegNode(parameter_overrides=SMALL)
    real_infer = node.pipeline.engine.infer
    entered, release = threading.Event(), threading.Event()

    def held_infer(batch):
        if not entered.is_set():  # one worker thread: no race on the first call
            entered.set()
            release.wait(120)  # bounded, so that a failed test never leaves the worker stuck
        return real_infer(batch)

    node.pipeline.engine.infer = held_infer
    h = Harness(nodes=(node,))
    stats = node.stats
    semantic = h.received["segmentation/semantic"]
    try:
        h.wait_subscribed()
        _wait_wanted(node, 3)
        frame0 = _image(stamp=(0, 0), seed=0)[1]
        for _ in range(30):  # resent while unanswered: best effort may lose a frame
            h.pub.publish(frame0)
            if entered.wait(2.0):
                break
        assert entered.is_set(), "the engine never got frame 0"
        for i in range(1, 8):
            h.pub.publish(_image(stamp=(i, 0), seed=i)[1])
        # one frame in the engine, one waiting, every other one replaced and counted
        wait_for(
            lambda: stats.received >= 3 and stats.dropped_stale == stats.received - 2,
            30,
            lambda: (
                "frames behind the busy engine to replace each other (received "
                f"{stats.received}, dropped_stale {stats.dropped_stale}, processed "
                f"{stats.processed})"
            ),
        )
        assert stats.processed == 0
        release.set()
        last = _image(stamp=(7, 0), seed=7)[1]
        for _ in range(15):  # the last frame, resent while unanswered (best effort)
            if h.wait_for(lambda: any(m.header.stamp.sec == 7 for m in semantic), timeout=2.0):
                break
            h.pub.publish(last)
        assert h.wait_for(lambda: any(m.header.stamp.sec == 7 for m in semantic), timeout=1.0), (
            "frame 7 never answered"
        )
        _wait_all_accounted(stats)
        assert stats.processed + stats.dropped_stale == stats.received
        assert stats.dropped_stale >= 1 and stats.processed < stats.received
        stamps = [m.header.stamp.sec for m in semantic]
        assert stamps[0] == 0 and stamps[-1] == 7 and stamps == sorted(stamps), stamps
    finally:
        release.set()
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
    # -p without a node name is for every node (rcl files it under /**): warned about, ignored
    result = _run_node("-p", "overlay_alpa:=0.3", "-p", "weights:=/nonexistent/gun.safetensors")
    assert result.returncode == 2 and "ignoring parameter(s) 'overlay_alpa'" in result.stderr


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
        assert h.received["segmentation/semantic"], "the node never answered a frame"
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


def test_subprocess_params_file_unknown_key_of_the_node_stops_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**/seg_node:\n  ros__parameters:\n    network_hieght: 64\n")
    result = subprocess.run(
        node_command(bad), capture_output=True, text=True, timeout=120, env=loopback_env()
    )
    assert result.returncode == 2
    assert "/seg_node" in result.stderr and "'network_hieght'" in result.stderr


def _panoptic_node(mode: str, every_n: int = 1, *extra: Parameter):
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
            *extra,
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
        _wait_wanted(node, 6)
        for i in range(3):
            h.pub.publish(_image(stamp=(100 + i, 0), seed=i)[1])
            assert h.wait_for(
                lambda i=i: any(
                    m.header.stamp.sec == 100 + i for m in h.received["segmentation/semantic"]
                )
            )
        # each topic's messages arrive in order: once frame 2's is in, nothing before is missing
        assert h.wait_for(
            lambda: all(
                any(m.header.stamp.sec == 102 for m in h.received[t])
                for t in (
                    "segmentation/instance",
                    "segmentation/panoptic",
                    "segmentation/panoptic_color",
                )
            )
        ), {t: [m.header.stamp.sec for m in v] for t, v in h.received.items()}
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
        _wait_wanted(node, 6)
        # a stream the semantic path answers frame by frame while the slower ASP model works
        # on the newest frame it was offered
        for i in range(6):
            h.pub.publish(_image(stamp=(200 + i, 0), seed=i)[1])
            assert h.wait_for(
                lambda i=i: any(
                    m.header.stamp.sec == 200 + i for m in h.received["segmentation/semantic"]
                )
            ), f"frame {200 + i} unanswered"
        # the last frame offered to the ASP model is never replaced: its answer comes, and
        # (one writer, in order) every earlier panoptic message is in by then
        assert h.wait_for(
            lambda: any(m.header.stamp.sec == 205 for m in h.received["segmentation/panoptic"]),
            timeout=60,
        ), [m.header.stamp.sec for m in h.received["segmentation/panoptic"]]
        semantic = {m.header.stamp.sec for m in h.received["segmentation/semantic"]}
        panoptic = [m.header.stamp.sec for m in h.received["segmentation/panoptic"]]
        assert semantic == set(range(200, 206))
        assert set(panoptic) <= semantic and len(panoptic) == len(set(panoptic)), panoptic
        assert panoptic == sorted(panoptic), panoptic
    finally:
        h.close()
        node.shutdown()
        node.destroy_node()


def test_per_frame_path_checks_once_and_runs_only_the_engines_read(ros, monkeypatch):
    """Each frame's fields are checked once; with only panoptic topics read, the real-time
    engine runs when the fusion takes its map, and not at all when it takes the ASP model's."""
    from seg_perception.codec import image as image_codec

    checks = []
    original = image_codec._validate
    monkeypatch.setattr(image_codec, "_validate", lambda msg: checks.append(msg) or original(msg))
    for source, engine_calls in (("realtime", 1), ("asp", 0)):
        node = _panoptic_node("sync", 1, Parameter("fusion.semantic_source", value=source))
        listener = rclpy.create_node("only_panoptic")
        got = []
        listener.create_subscription(Image, "segmentation/panoptic", got.append, OUTPUT_QOS)
        try:
            _wait_wanted(node, 1)
            assert node.wanted_outputs() == {"panoptic"}
            checks.clear()
            _, msg = _image(stamp=(300, 0))
            assert node.process_message(msg) is not None
            assert len(checks) == 1  # the arrival check; decoding trusts it
            assert node.pipeline.engine_calls == engine_calls, source
            executor = rclpy.executors.SingleThreadedExecutor()
            executor.add_node(listener)
            wait_for(
                lambda e=executor, g=got: e.spin_once(timeout_sec=0.05) or g,
                30,
                f"the panoptic answer ({source})",
            )
            assert got[-1].header.stamp.sec == 300
            executor.shutdown()
        finally:
            listener.destroy_node()
            node.shutdown()
            node.destroy_node()
