"""seg_node under stress: several cameras, deadlines, engine faults, run-time reload, SIGTERM."""

import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from node_params import SMALL
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from waiting import poll_until, wait_for, wait_matched

from seg_perception import config as cfgmod
from seg_perception.codec import array_to_imgmsg, imgmsg_to_array
from seg_perception.labels import CITYSCAPES
from seg_perception.pipeline import build_pipeline
from seg_perception.ros.bridge import loopback_env, node_command
from seg_perception.ros.compat import SpinThread
from seg_perception.ros.diagnostics import camera_level
from seg_perception.ros.node import OUTPUT_QOS, SegNode


def _params(**extra):
    return [Parameter(k, value=v) for k, v in {**SMALL, **extra}.items()]


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def _msg(seed, frame_id="cam", stamp=None, height=48, width=80):
    rgb = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    header = Header(frame_id=frame_id)
    if stamp is not None:
        header.stamp.sec, header.stamp.nanosec = stamp
    return rgb, array_to_imgmsg(rgb, "rgb8", header=header)


def _now_stamp(node):
    ns = node.get_clock().now().nanoseconds
    return ns // 1_000_000_000, ns % 1_000_000_000


class Listener:
    """Subscribes to topics and spins (with the node under test) in a thread."""

    def __init__(self, topics, nodes=()):
        self.node = rclpy.create_node("stress_listener")
        self.got = {t: [] for t in topics}
        self.cv = threading.Condition()
        for t in topics:
            self.node.create_subscription(Image, t, self._keep(t), OUTPUT_QOS)
        # one thread per node: the node under test's callbacks never hold up the listener's
        self.spinners = [SpinThread.of(n) for n in (self.node, *nodes)]

    def _keep(self, topic):
        def cb(msg):
            with self.cv:
                self.got[topic].append(msg)
                self.cv.notify_all()

        return cb

    def wait(self, predicate, timeout=30.0):
        """True once ``predicate()`` holds (evaluated under the lock of the received lists),
        False after ``timeout`` seconds."""
        return poll_until(predicate, timeout, cv=self.cv)

    def close(self):
        for spinner in self.spinners:
            spinner.stop()
        self.node.destroy_node()


def _wait_subscribed(node, camera, n=1, timeout=30.0):
    wait_for(
        lambda: len(node.wanted_outputs(camera)) >= n,
        timeout,
        f"subscribers on {n} output(s) of camera {camera!r}",
    )


def _wait_reload_done(node, timeout, serve=None):
    """Until the background engine reload ended; with ``serve``, the node answers that
    message meanwhile (the old engine serves during the build)."""

    def done():
        if not node.reloader.busy:
            return True
        if serve is not None:
            node.process_message(serve)
        return False

    wait_for(
        done,
        timeout,
        lambda: f"the engine reload to end (last error: {node.semantic_health.reload_error!r})",
    )


def _close(node, *others):
    for o in others:
        o.close()
    node.shutdown()
    node.destroy_node()


def test_parse_cameras():
    assert cfgmod.parse_cameras("") == ("",)
    assert cfgmod.parse_cameras("front, left") == ("front", "left")
    assert cfgmod.parse_cameras("car/front") == ("car/front",)
    for bad in ("front,front", "front,,left", "1cam", "front/", "a b"):
        with pytest.raises(ValueError):
            cfgmod.parse_cameras(bad)
    with pytest.raises(cfgmod.ConfigError, match="cameras"):
        cfgmod.load_config(overrides={"cameras": "front,front"})


def test_two_cameras_one_engine_call_each_output_with_its_own_header(ros):
    node = SegNode(parameter_overrides=_params(cameras="front,left"))
    topics = ["front/segmentation/semantic", "left/segmentation/semantic"]
    listener = Listener(topics, nodes=(node,))
    calls = []
    real_infer = node.pipeline.engine.infer
    gate = threading.Event()

    def counting_infer(batch):
        calls.append(batch.shape[0])
        if len(calls) == 1:
            gate.wait(10)  # hold the worker so that both cameras' frames wait together
        return real_infer(batch)

    node.pipeline.engine.infer = counting_infer
    pub_front = listener.node.create_publisher(Image, "front/image", 10)
    pub_left = listener.node.create_publisher(Image, "left/image", 10)
    try:
        _wait_subscribed(node, "front")
        _wait_subscribed(node, "left")
        for pub in (pub_front, pub_left):
            wait_matched(pub, (node,))
        pub_front.publish(_msg(0, "front_optical", (1, 0))[1])  # blocks the worker
        wait_for(lambda: calls, 30, "the engine call of the first front frame")
        rgb_f, msg_f = _msg(1, "front_optical", (2, 0), height=40, width=72)
        rgb_l, msg_l = _msg(2, "left_optical", (3, 0))
        pub_front.publish(msg_f)
        pub_left.publish(msg_l)
        wait_for(
            lambda: (
                node.cameras["front"].stats.received >= 2
                and node.cameras["left"].stats.received >= 1
            ),
            30,
            "the second front frame and the left frame to arrive while the engine is held",
        )
        gate.set()
        assert listener.wait(
            lambda: len(listener.got[topics[0]]) >= 2 and len(listener.got[topics[1]]) >= 1
        )
        assert calls == [1, 2]  # the two cameras' frames went through one engine call
        assert node.pipeline.engine_calls == 2
        front, left = listener.got[topics[0]][-1], listener.got[topics[1]][-1]
        assert (front.header.frame_id, front.header.stamp.sec) == ("front_optical", 2)
        assert (left.header.frame_id, left.header.stamp.sec) == ("left_optical", 3)
        assert (front.height, front.width) == rgb_f.shape[:2]
        assert (left.height, left.width) == rgb_l.shape[:2]
        # batched == one at a time
        single = node.pipeline.run(rgb_l).semantic
        assert np.array_equal(imgmsg_to_array(left), single)
        statuses = node.diagnostic_statuses()
        cams = {s.name.rsplit(" ", 1)[-1]: s for s in statuses if ": camera " in s.name}
        assert set(cams) == {"front", "left"}
        values = {k.key: k.value for k in cams["front"].values}
        assert values["frames_processed"] == "2" and values["camera"] == "front"
    finally:
        gate.set()
        _close(node, listener)


def test_frames_older_than_the_deadline_are_dropped_and_counted(ros):
    node = SegNode(parameter_overrides=_params(max_frame_age_ms=200.0))
    listener = Listener(["segmentation/semantic"], nodes=(node,))
    try:
        _wait_subscribed(node, None)
        sec, nsec = _now_stamp(node)
        assert node.process_message(_msg(0, stamp=(sec - 5, nsec))[1]) is None  # 5 s old
        assert node.stats.dropped_deadline == 1 and node.stats.processed == 0
        assert node.process_message(_msg(1, stamp=_now_stamp(node))[1]) is not None
        assert node.stats.dropped_deadline == 1 and node.stats.processed == 1
        assert node.process_message(_msg(2)[1]) is not None  # no stamp: no age to judge
        assert listener.wait(lambda: len(listener.got["segmentation/semantic"]) == 2)
        status = next(s for s in node.diagnostic_statuses() if ": camera " in s.name)
        values = {k.key: k.value for k in status.values}
        assert values["dropped_deadline"] == "1"
    finally:
        _close(node, listener)


def test_engine_failing_every_third_frame(ros):
    node = SegNode(parameter_overrides=_params())
    listener = Listener(["segmentation/semantic"], nodes=(node,))
    real_infer = node.pipeline.engine.infer
    count = [0]

    def flaky(batch):
        count[0] += 1
        if count[0] % 3 == 0:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_infer(batch)

    node.pipeline.engine.infer = flaky
    try:
        _wait_subscribed(node, None)
        node.diagnostic_statuses()  # start a fresh period
        levels, engine_levels, answered = [], [], []
        for i in range(1, 7):
            answered.append(node.process_message(_msg(i, stamp=(i, 0))[1]) is not None)
            statuses = node.diagnostic_statuses()
            levels.append(next(s.level for s in statuses if ": camera " in s.name))
            engine_levels.append(next(s.level for s in statuses if "semantic engine" in s.name))
        ok, err = DiagnosticStatus.OK, DiagnosticStatus.ERROR
        assert answered == [True, True, False, True, True, False]
        assert levels == [ok, ok, err, ok, ok, err]
        assert engine_levels == [ok, ok, err, ok, ok, err]
        assert node.stats.engine_errors == 2 and node.stats.processed == 4
        assert "illegal memory access" in node.stats.last_error
        assert listener.wait(lambda: len(listener.got["segmentation/semantic"]) == 4)
        stamps = [m.header.stamp.sec for m in listener.got["segmentation/semantic"]]
        assert stamps == [1, 2, 4, 5]
    finally:
        _close(node, listener)


def test_camera_levels_from_thresholds():
    th = cfgmod.load_config().diagnostics
    base = dict(
        seconds=1.0,
        received=10,
        processed=10,
        dropped_stale=0,
        dropped_deadline=0,
        bad=0,
        engine_errors=0,
        skipped_no_subscribers=0,
    )
    assert camera_level(base, thresholds=th)[0] == DiagnosticStatus.OK
    assert camera_level({**base, "engine_errors": 1}, thresholds=th)[0] == DiagnosticStatus.ERROR
    half = {**base, "processed": 4, "dropped_stale": 6}
    assert camera_level(half, thresholds=th)[0] == DiagnosticStatus.WARN
    assert camera_level({**base, "processed": 0, "dropped_stale": 10}, thresholds=th)[0] == (
        DiagnosticStatus.ERROR
    )
    level, message = camera_level({**base, "bad": 1, "processed": 9}, thresholds=th)
    assert level == DiagnosticStatus.WARN and "bad" in message
    level, message = camera_level(base, thresholds=th, age_p95_ms=300.0, deadline_ms=100.0)
    assert level == DiagnosticStatus.WARN and "deadline" in message
    slow = cfgmod.load_config(overrides={"diagnostics.expected_rate_hz": 30.0}).diagnostics
    level, message = camera_level(base, thresholds=slow)
    assert level == DiagnosticStatus.WARN and "Hz" in message


def test_reload_switches_model_and_refuses_missing_weights(ros, tmp_path):
    node = SegNode(parameter_overrides=_params())
    listener = Listener(["segmentation/semantic"], nodes=(node,))
    try:
        _wait_subscribed(node, None)
        rgb, msg = _msg(5, stamp=(1, 0))
        node.process_message(msg)
        old_name = node.pipeline.engine.name
        result = node.set_parameters([Parameter("model", value="shelfnet")])[0]
        assert result.successful, result.reason
        _wait_reload_done(node, 120, serve=msg)  # the old engine serves during the build
        assert node.reloader.reloads == 1 and node.cfg.model == "shelfnet"
        assert node.pipeline.engine.name != old_name and "shelfnet" in node.pipeline.engine.name
        node.process_message(msg)
        assert listener.wait(lambda: listener.got["segmentation/semantic"])
        expected_cfg = cfgmod.load_config(overrides={**SMALL, "model": "shelfnet"})
        reference = build_pipeline(expected_cfg, CITYSCAPES)
        try:
            want = reference.run(rgb).semantic
        finally:
            reference.engine.close()
        assert listener.wait(
            lambda: np.array_equal(imgmsg_to_array(listener.got["segmentation/semantic"][-1]), want)
        ), "outputs did not switch to the new model"

        # a missing weights file is refused at once, the engine stays
        current = node.pipeline.engine
        result = node.set_parameters_atomically(
            [
                Parameter("allow_random_weights", value=False),
                Parameter("weights", value=str(tmp_path / "missing.safetensors")),
            ]
        )
        assert not result.successful and "missing.safetensors" in result.reason
        assert not node.reloader.busy and node.pipeline.engine is current
        assert node.get_parameter("allow_random_weights").value is True

        # a corrupt header is refused at once too (the stored model name is read)
        bad = tmp_path / "corrupt.safetensors"
        bad.write_bytes(b"\x00garbage" * 10)
        result = node.set_parameters([Parameter("weights", value=str(bad))])[0]
        assert not result.successful and "corrupt.safetensors" in result.reason
        assert not node.reloader.busy and node.pipeline.engine is current

        # a readable file of other tensors passes the check but fails the build: old engine
        # kept, reported
        from safetensors.numpy import save_file

        bad = tmp_path / "other_tensors.safetensors"
        save_file({"not.a.layer": np.zeros((3, 3), np.float32)}, str(bad))
        result = node.set_parameters_atomically(
            [
                Parameter("allow_random_weights", value=False),
                Parameter("weights", value=str(bad)),
            ]
        )
        assert result.successful, result.reason
        _wait_reload_done(node, 120)
        assert node.pipeline.engine is current
        assert "other_tensors" in node.semantic_health.reload_error
        assert node.get_parameter("weights").value == SMALL["weights"]  # put back
        assert node.get_parameter("allow_random_weights").value is True
        engine = next(s for s in node.diagnostic_statuses() if "semantic engine" in s.name)
        assert engine.level == DiagnosticStatus.WARN and "reload failed" in engine.message
        assert node.process_message(msg) is not None  # still serving

        # parameters that need a restart are read-only
        result = node.set_parameters([Parameter("cameras", value="a,b")])[0]
        assert not result.successful
    finally:
        _close(node, listener)


def test_reload_of_the_model_alone_takes_its_shipped_weights(ros):
    """The README's `ros2 param set /seg_node model shelfnet` with the shipped files: weights ''
    means each model's own file; weights naming another network are refused at once."""
    shipped = {m: cfgmod.resolve_path(w) for m, w in cfgmod.SHIPPED_WEIGHTS.items()}
    assert all(p.is_file() for p in shipped.values()), shipped
    params = _params(weights="", allow_random_weights=False, backend="torch")
    node = SegNode(parameter_overrides=params)
    try:
        assert "gun" in node.pipeline.engine.name
        result = node.set_parameters([Parameter("model", value="shelfnet")])[0]
        assert result.successful, result.reason
        _wait_reload_done(node, 120)
        assert node.reloader.reloads == 1, node.semantic_health.reload_error
        assert "shelfnet" in node.pipeline.engine.name and node.cfg.model == "shelfnet"
        assert node.get_parameter("weights").value == ""

        # the GUN file for the ShelfNet model: refused now, naming both networks, engine kept
        current = node.pipeline.engine
        result = node.set_parameters([Parameter("weights", value=str(shipped["gun"]))])[0]
        assert not result.successful
        assert "'gun'" in result.reason and "'shelfnet'" in result.reason
        assert "weights" in result.reason and "set_parameters_atomically" in result.reason
        assert not node.reloader.busy and node.pipeline.engine is current
        assert node.get_parameter("weights").value == ""

        # model and weights changed together, as one request: accepted and built
        result = node.set_parameters_atomically(
            [Parameter("model", value="gun"), Parameter("weights", value=str(shipped["gun"]))]
        )
        assert result.successful, result.reason
        _wait_reload_done(node, 120)
        assert node.reloader.reloads == 2, node.semantic_health.reload_error
        assert "gun" in node.pipeline.engine.name and node.cfg.weights == str(shipped["gun"])
    finally:
        _close(node)


def test_reload_failing_at_once_still_puts_the_values_back(ros, monkeypatch):
    """rclpy stores new parameter values only after the on-set callback returned: the reload
    starts from the post-set callback, so a build that fails at once sees the new values and
    its revert is not overwritten by them (it was, under load, when the build started in the
    on-set callback)."""
    node = SegNode(parameter_overrides=_params())
    seen = []

    def fail_at_once(spec):
        seen.append(node.get_parameter("weights").value)
        raise RuntimeError("engine build failed")

    monkeypatch.setattr("seg_perception.engines.factory.build", fail_at_once)
    try:
        for attempt in range(5):
            wanted = f"other_{attempt}.safetensors"
            result = node.set_parameters_atomically([Parameter("weights", value=wanted)])
            assert result.successful, result.reason
            _wait_reload_done(node, 60)
            assert seen[-1] == wanted  # the build ran after rclpy stored the value
            assert node.get_parameter("weights").value == SMALL["weights"]  # put back
            assert "engine build failed" in node.semantic_health.reload_error
        assert len(seen) == 5
    finally:
        _close(node)


def test_sigterm_during_processing_exits_cleanly(ros, tmp_path):
    params = tmp_path / "p.yaml"
    lines = [f"    {k}: {v!r}" if isinstance(v, str) else f"    {k}: {v}" for k, v in SMALL.items()]
    lines = [ln.replace("True", "true").replace("False", "false") for ln in lines]
    params.write_text("/**/seg_node:\n  ros__parameters:\n" + "\n".join(lines) + "\n")
    proc = subprocess.Popen(
        node_command(params),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=loopback_env(),
        text=True,
    )
    feeder = rclpy.create_node("sigterm_feeder")
    got = []
    feeder.create_subscription(Image, "segmentation/semantic", got.append, OUTPUT_QOS)
    pub = feeder.create_publisher(Image, "image", 10)
    try:
        end = time.monotonic() + 90
        i = 0
        while not got and time.monotonic() < end and proc.poll() is None:
            pub.publish(_msg(i, height=240, width=320)[1])
            rclpy.spin_once(feeder, timeout_sec=0.05)
            i += 1
        assert got, "the node never answered"
        for _ in range(5):  # keep it busy
            pub.publish(_msg(i, height=240, width=320)[1])
            rclpy.spin_once(feeder, timeout_sec=0.01)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)  # a hang is a failure (TimeoutExpired); speed is not tested
        output = proc.stdout.read()
        assert code == 0, output
        assert "Traceback" not in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
        feeder.destroy_node()


def test_two_cameras_async_panoptic_each_with_its_own_header(ros):
    node = SegNode(
        parameter_overrides=_params(
            cameras="front,left",
            backend="torch",
            **{
                "panoptic.enabled": True,
                "panoptic.mode": "async",
                "panoptic.network_height": 128,
                "panoptic.network_width": 256,
                "panoptic.score_threshold": 0.0,
            },
        )
    )
    topics = [f"{c}/segmentation/panoptic" for c in ("front", "left")]
    listener = Listener(topics, nodes=(node,))
    pubs = {c: listener.node.create_publisher(Image, f"{c}/image", 10) for c in ("front", "left")}
    try:
        for cam in ("front", "left"):
            wait_for(
                lambda cam=cam: "panoptic" in node.wanted_outputs(cam),
                30,
                f"a subscriber on the panoptic output of camera {cam}",
            )
        for i in range(3):  # keep offering until both cameras got a panoptic answer
            for j, cam in enumerate(("front", "left")):
                pubs[cam].publish(_msg(10 * i + j, f"{cam}_optical", (10 * i + j, 0))[1])
            if listener.wait(lambda: all(listener.got[t] for t in topics), timeout=15):
                break
        assert all(listener.got[t] for t in topics), {t: len(v) for t, v in listener.got.items()}
        for cam, topic in zip(("front", "left"), topics, strict=True):
            msgs = listener.got[topic]
            assert {m.header.frame_id for m in msgs} == {f"{cam}_optical"}, topic
            assert all((m.height, m.width, m.encoding) == (48, 80, "32SC1") for m in msgs)
        assert node.cameras["front"].stats.panoptic_frames >= 1
        assert node.cameras["left"].stats.panoptic_frames >= 1
    finally:
        _close(node, listener)


def test_large_image_transport_profile(tmp_path):
    from seg_perception.ros.dds import large_image_transport, profile_variable

    env = {}
    path = large_image_transport(env)
    assert path and env[profile_variable()] == path  # the name the installed Fast DDS reads
    text = Path(path).read_text()
    assert "<segment_size>33554432</segment_size>" in text and "<type>SHM</type>" in text
    import xml.etree.ElementTree as ET

    ET.parse(path)  # well-formed
    # a profile the user chose, another RMW, or the opt-out leave the environment alone
    for env in (
        {"FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/mine.xml"},
        {"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/mine.xml"},
        {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"},
        {"SEG_PERCEPTION_DDS_PROFILE": "0"},
    ):
        before = dict(env)
        assert large_image_transport(env) is None and env == before
