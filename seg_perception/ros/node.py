"""``seg_node``: camera images in, segmentation images out, for one or several cameras.

A thin adapter in the ros2/examples style: messages -> arrays -> :class:`Pipeline` -> arrays ->
messages. Every output carries its input's header and resolution. Input uses the ``input_qos``
parameter (sensor-data best effort by default, or reliable) and a latest-frame policy per camera:
the subscription callback checks the message's fields (bad frames are counted there, so they never
displace a good one) and parks it in the camera's one-slot mailbox; a worker thread takes the
newest frame of every camera when it is free and runs them through the engine as one batch, so a
slow engine never builds a queue. Replaced frames and frames older than ``max_frame_age_ms`` are
counted as dropped.

Each diagnostics period also watches what reaches the input topics: a publisher matched for
``diagnostics.silent_input_s`` with no frame arriving, or gaps in the publishers' sequence numbers
(frames sent that never arrived), put the camera at WARN and are logged once per episode, naming
the topic, the publishers, the likely cause (samples too large for the publisher's DDS transport)
and the fix.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Hashable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from seg_perception import config as cfgmod
from seg_perception.codec import (
    ImageDecodeError,
    array_to_imgmsg,
    check_image_fields,
    msg_to_rgb8,
    stamp_ns,
)
from seg_perception.engines import EngineError
from seg_perception.labels import load_label_table
from seg_perception.pipeline import (
    ALL_OUTPUTS,
    INSTANCE,
    PANOPTIC,
    PANOPTIC_COLOR,
    PANOPTIC_OUTPUTS,
    build_pipeline,
)
from seg_perception.ros.camera import Camera, camera_topic
from seg_perception.ros.compat import distro, input_qos, message_source, publishers_of
from seg_perception.ros.dds import large_image_transport
from seg_perception.ros.diagnostics import EngineHealth, camera_status, diagnostic_array
from seg_perception.ros.params import declare_parameters
from seg_perception.ros.pylog import forward_package_logging
from seg_perception.ros.reload import EngineReloader
from seg_perception.ros.worker import LatestWorker
from seg_perception.topics import LABELS_TOPIC, OUTPUT_TOPICS, PANOPTIC_TOPICS

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def _own_semantic_copy(items: dict[Hashable, Any]) -> dict[Hashable, Any]:
    """``on_take`` of the async panoptic worker: the taken frame's semantic map copied out of
    the real-time pipeline's buffers (called while the semantic worker cannot write them)."""
    return {
        key: (msg, rgb, None if semantic is None else semantic.copy())
        for key, (msg, rgb, semantic) in items.items()
    }


class SegNode(Node):
    """The segmentation node. Raises ``ConfigError`` / ``EngineError`` when it cannot start."""

    def __init__(self, **node_kwargs: Any) -> None:
        # every override becomes a parameter at once: declare_parameters reads what reached us
        super().__init__(
            cfgmod.NODE_NAME, automatically_declare_parameters_from_overrides=True, **node_kwargs
        )
        try:
            self.cfg = declare_parameters(
                self,
                cli_args=node_kwargs.get("cli_args"),
                use_global_arguments=node_kwargs.get("use_global_arguments", True),
            )
        except Exception:
            self.destroy_node()
            raise
        self.labels = load_label_table(self.cfg.labels)
        self.semantic_health = EngineHealth("semantic", f"{self.cfg.model}/{self.cfg.backend}")
        with forward_package_logging(self.get_logger()):  # export / engine build progress
            self.pipeline = build_pipeline(self.cfg, self.labels, on_note=self.log_note)
        self.semantic_health.name = self.pipeline.engine.name
        self.semantic_health.state = "loaded"
        pan = self.cfg.panoptic
        self.panoptic_health = (
            EngineHealth("panoptic", self.pipeline.panoptic_engine.name, state="loaded")
            if self.pipeline.panoptic_engine is not None
            else None
        )
        self.pipeline_lock = threading.Lock()  # held while the real-time engine runs
        compressed = self.cfg.input_transport == "compressed"
        msg_type: type = CompressedImage if compressed else Image
        out_topics = {**OUTPUT_TOPICS, **(PANOPTIC_TOPICS if pan.enabled else {})}
        self.cameras: dict[str, Camera] = {}
        in_qos = input_qos(self.cfg.input_qos, self.cfg.input_queue_depth)
        for name in self.cfg.camera_names():
            pubs = {
                t: self.create_publisher(Image, camera_topic(name, t), OUTPUT_QOS)
                for t in out_topics
            }
            cam = Camera(
                name, camera_topic(name, "image/compressed" if compressed else "image"), pubs
            )
            self.cameras[name] = cam
            cam.subscription = self.create_subscription(
                msg_type, cam.input_topic, self._on_image_of(cam), in_qos
            )
        self._labels_pub = self.create_publisher(String, LABELS_TOPIC, LATCHED_QOS)
        self._labels_pub.publish(String(data=self.labels.to_json()))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.cfg.diagnostics_period_s, self.publish_diagnostics)
        self.reloader = EngineReloader(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(lambda _params: self.reloader.start_pending())

        self._worker = LatestWorker(
            "seg_worker",
            self._process_batch,
            take="all",
            on_replaced=lambda cam, _msg: self.cameras[cam].stats.count("dropped_stale"),
            on_error=self._worker_failed,
        )
        self._panoptic_worker = (
            LatestWorker(
                "seg_panoptic",
                self._process_panoptic_items,
                take="one",
                on_error=self._worker_failed,
                # items refer to the real-time net's output buffers: the one taken is copied
                # while the semantic worker cannot overwrite them (it withdraws waiting items
                # first), so no copy is made for an item that a newer frame replaces
                take_lock=self.pipeline_lock,
                on_take=_own_semantic_copy,
            )
            if pan.enabled and pan.mode == "async"
            else None
        )
        topics = ", ".join(self.resolve_topic_name(c.input_topic) for c in self.cameras.values())
        self.get_logger().info(
            f"{self.cfg.model} on {self.cfg.backend}/{self.cfg.device} at "
            f"{self.cfg.network_height}x{self.cfg.network_width}; listening on {topics} "
            f"(input_qos {self.cfg.input_qos}, depth {self.cfg.input_queue_depth}); "
            f"ROS 2 {distro()}"
        )

    def log_note(self, model: str, note: str) -> None:
        # two call sites: rclpy refuses one site logging at two severities
        if "RANDOM" in note:
            self.get_logger().warning(f"{model}: {note}")
        else:
            self.get_logger().info(f"{model}: {note}")

    # ----------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        """``model``, ``weights``, ``backend``, ... reload the real-time engine while the old one
        keeps serving (see :class:`EngineReloader`); other parameters need a restart."""
        reason = self.reloader.request({p.name: p.value for p in params})
        return SetParametersResult(successful=reason is None, reason=reason or "")

    # ----------------------------------------------------------------- input
    @property
    def stats(self):
        return next(iter(self.cameras.values())).stats

    def _on_image_of(self, cam: Camera):
        def on_image(msg: Image | CompressedImage, info: Any) -> None:  # with message info
            gid, seq = message_source(info)
            if gid is None and seq is not None and cam.stats.matched_publishers != 1:
                seq = None  # no GID (Jazzy): sequence numbers of several publishers interleave
            cam.stats.received_from(gid, seq)
            try:  # field checks here: a bad frame never replaces a good one in the mailbox
                check_image_fields(msg, self.cfg.max_pixels)
            except ImageDecodeError as exc:
                self._count_bad(cam, exc)
                return
            self._worker.offer(msg, key=cam.name)

        return on_image

    def _count_bad(self, cam: Camera, exc: ImageDecodeError) -> None:
        n = cam.stats.count_bad(exc.reason)
        self.get_logger().warning(
            f"camera {cam.label}: dropped bad frame on {self.resolve_topic_name(cam.input_topic)}"
            f" ({exc.reason}, {n} so far; bad frames in all: {cam.stats.bad_total}): {exc}",
            throttle_duration_sec=2.0,
        )

    def _age_ms(self, msg: Any) -> float | None:
        """Age of a frame on the node clock (ms), None when its header has no stamp."""
        stamp = stamp_ns(msg.header)
        if not stamp:
            return None
        return (self.get_clock().now().nanoseconds - stamp) / 1e6

    def wanted_outputs(self, camera: str | None = None) -> set[str]:
        """Pipeline outputs that have at least one subscriber (first camera by default)."""
        cam = self.cameras[camera] if camera is not None else next(iter(self.cameras.values()))
        return cam.wanted_outputs()

    def process_message(
        self, msg: Image | CompressedImage, camera: str | None = None
    ) -> dict[str, float] | None:
        """Check, segment and publish one message of a camera (first by default), in the
        calling thread; returns its stage timings (ms) or None when it was not processed."""
        name = camera if camera is not None else next(iter(self.cameras))
        cam = self.cameras[name]
        try:
            check_image_fields(msg, self.cfg.max_pixels)
        except ImageDecodeError as exc:
            self._count_bad(cam, exc)
            return None
        return self._process_batch({name: msg}).get(name)

    def _process_batch(self, items: dict[Hashable, Any]) -> dict[Hashable, dict[str, float]]:
        """The newest frame of each camera: decode, one engine call, publish per camera."""
        t0 = time.perf_counter()
        deadline = self.cfg.max_frame_age_ms
        frames = []  # (camera, msg, rgb, want)
        for name, msg in items.items():
            cam = self.cameras[name]
            if deadline > 0 and (self._age_ms(msg) or 0.0) > deadline:
                cam.stats.count("dropped_deadline")
                continue
            want = cam.wanted_outputs()
            if not want:
                cam.stats.count("skipped_no_subscribers")
                continue
            try:
                rgb = msg_to_rgb8(msg, checked=True)  # checked once, when it arrived
                if rgb.shape[0] * rgb.shape[1] > self.cfg.max_pixels:  # a compressed payload
                    raise ImageDecodeError(
                        f"decoded {rgb.shape[1]}x{rgb.shape[0]} exceeds max_pixels "
                        f"{self.cfg.max_pixels}",
                        reason="too_large",
                    )
            except ImageDecodeError as exc:
                self._count_bad(cam, exc)
                continue
            frames.append((cam, msg, rgb, want))
        if not frames:
            return {}
        t1 = time.perf_counter()
        # the real-time engine runs for the frames whose outputs someone reads: its own topics,
        # or the panoptic ones when the fusion takes its semantic map
        realtime = [f for f in frames if self._needs_realtime(f[3])]
        with self.pipeline_lock:
            pipeline = self.pipeline
            if self._panoptic_worker is not None:  # their semantic buffers are overwritten now
                for cam, *_ in realtime:
                    self._panoptic_worker.withdraw(cam.name)
            try:
                outs = pipeline.run_batch([f[2] for f in realtime], [f[3] for f in realtime])
            except Exception as exc:
                self._engine_failed(self.semantic_health, [f[0] for f in realtime], exc)
                return {}
        if realtime:
            self._engine_ok(self.semantic_health)
        by_camera = {f[0].name: out for f, out in zip(realtime, outs, strict=True)}
        timings = {}
        for cam, msg, rgb, want in frames:
            ts = time.perf_counter()
            out = by_camera.get(cam.name)
            if out is not None:
                arrays = {k: getattr(out, k) for k in want & ALL_OUTPUTS}
                self._publish(cam, OUTPUT_TOPICS, arrays, msg.header)
            te = time.perf_counter()
            cam.stats.record_frame(  # age at publication, for the deadline check of diagnostics
                total_ms=(te - t0) * 1e3,
                engine_ms=out.timings_ms["engine"] if out is not None else None,
                age_ms=self._age_ms(msg),
            )
            timings[cam.name] = {
                "decode": (t1 - t0) * 1e3,
                **(out.timings_ms if out is not None else {}),
                "publish": (te - ts) * 1e3,
            }
            pan_want = want & PANOPTIC_OUTPUTS
            if pan_want and pipeline.panoptic_engine is not None:
                semantic = None if out is None or self._asp_semantic else out.semantic
                if self._panoptic_worker is not None:  # async: copied only when taken
                    self._panoptic_worker.offer((msg, rgb, semantic), key=cam.name)
                elif cam.frame_index % self.cfg.panoptic.every_n == 0:
                    timings[cam.name].update(
                        self._process_panoptic(cam, (msg, rgb, semantic), pipeline)
                    )
            cam.frame_index += 1
        return timings

    @property
    def _asp_semantic(self) -> bool:
        """The fusion takes the ASP model's own semantic map (``fusion.semantic_source: asp``)."""
        return self.cfg.fusion.semantic_source == "asp"

    def _needs_realtime(self, want: set[str]) -> bool:
        if want & ALL_OUTPUTS:
            return True
        panoptic = self.pipeline.panoptic_engine is not None and bool(want & PANOPTIC_OUTPUTS)
        return panoptic and not self._asp_semantic

    def _engine_failed(self, health: EngineHealth, cams: list[Camera], exc: Exception) -> None:
        """Count the failure on every camera of the batch; log once per burst."""
        for cam in cams:
            cam.stats.record_error(exc)
        if health.failed(exc):
            self.get_logger().error(
                f"{health.role} engine {health.name} failed on "
                f"{', '.join(c.label for c in cams)}: {type(exc).__name__}: {exc} "
                "(further failures are counted, not logged, until a frame succeeds)"
            )

    def _worker_failed(self, exc: Exception) -> None:
        """A failure outside the engine call (decoding, publishing): log it, keep serving."""
        self.get_logger().error(
            f"frame handling failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0
        )

    def _engine_ok(self, health: EngineHealth) -> None:
        ended = health.succeeded()
        if ended:
            self.get_logger().info(
                f"{health.role} engine {health.name} recovered after {ended} failed call(s)"
            )

    def _process_panoptic_items(self, items: dict[Hashable, Any]) -> None:
        for name, item in items.items():
            self._process_panoptic(self.cameras[name], item, self.pipeline)

    def _process_panoptic(self, cam: Camera, item: tuple[Any, Any, Any], pipeline) -> dict:
        """ASP model + fusion on one frame; publishes with that frame's header."""
        msg, rgb, semantic = item
        want = cam.wanted_outputs() & PANOPTIC_OUTPUTS
        if not want or self.panoptic_health is None:
            return {}
        t0 = time.perf_counter()
        try:
            out = pipeline.run_panoptic(rgb, semantic, want)
        except Exception as exc:
            self._engine_failed(self.panoptic_health, [cam], exc)
            return {}
        self._engine_ok(self.panoptic_health)
        t1 = time.perf_counter()
        r = out.result
        arrays = {INSTANCE: r.instance, PANOPTIC: r.panoptic, PANOPTIC_COLOR: out.panoptic_color}
        self._publish(cam, PANOPTIC_TOPICS, arrays, msg.header, want)
        cam.stats.count("panoptic_frames")
        return {
            **out.timings_ms,
            "panoptic_publish": (time.perf_counter() - t1) * 1e3,
            "panoptic_total": (t1 - t0) * 1e3,
        }

    def _publish(
        self,
        cam: Camera,
        topics: dict[str, tuple[str, str]],
        arrays: dict[str, Any],
        header: Any,
        want: set[str] | None = None,
    ) -> None:
        for topic, (key, encoding) in topics.items():
            array = arrays.get(key)
            if array is not None and (want is None or key in want):
                cam.pubs[topic].publish(array_to_imgmsg(array, encoding, header=header))

    # ----------------------------------------------------------------- diagnostics
    def publish_diagnostics(self) -> None:
        """One status per camera and one per engine on /diagnostics."""
        stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(diagnostic_array(stamp, self.diagnostic_statuses()))

    def diagnostic_statuses(self) -> list:
        """The statuses of the period since the previous call (one per camera and engine)."""
        node = self.get_fully_qualified_name()
        statuses = [self._camera_status(node, cam) for cam in self.cameras.values()]
        statuses.append(self.semantic_health.status(node))
        if self.panoptic_health is not None:
            statuses.append(self.panoptic_health.status(node))
        return statuses

    def _camera_status(self, node: str, cam: Camera):
        """One camera's status; logs what
        :class:`~seg_perception.ros.input_watch.InputWatch` finds wrong with its input."""
        stats, limits = cam.stats, self.cfg.diagnostics
        stats.matched(cam.subscription.get_publisher_count())
        topic = self.resolve_topic_name(cam.input_topic)
        window = stats.window()
        silent = stats.silent_s()
        report = cam.input_watch.check(
            topic,
            window,
            silent,
            limits,
            self.cfg.input_qos,
            lambda: publishers_of(self, topic),
        )
        for line in report.warnings:
            self.get_logger().warning(f"camera {cam.label}: {line}")
        for line in report.infos:
            self.get_logger().info(f"camera {cam.label}: {line}")
        return camera_status(
            node,
            cam.name,
            stats,
            thresholds=limits,
            deadline_ms=self.cfg.max_frame_age_ms,
            input_topic=topic,
            engine_name=self.semantic_health.name,
            window=window,
            silent_s=silent,
            publishers=report.publishers,
        )

    def shutdown(self) -> None:
        """Stop the worker threads and release the engines (an engine still inside a call of a
        worker that did not stop in time is left to the process exit)."""
        self.reloader.stop()
        stopped = self._worker.stop(timeout=1.0)
        if stopped:
            self.pipeline.engine.close()
        if self._panoptic_worker is not None:
            stopped = self._panoptic_worker.stop(timeout=1.0) and stopped
        if stopped and self.pipeline.panoptic_engine is not None:
            self.pipeline.panoptic_engine.close()


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``seg_node`` executable. SIGINT and SIGTERM end it with status 0."""
    large_image_transport()  # before the DDS participant exists
    rclpy.init(args=args)  # installs the SIGINT and SIGTERM handlers that stop spin()
    node = None
    code = 0
    try:
        node = SegNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (cfgmod.ConfigError, EngineError, FileNotFoundError, ValueError) as exc:
        print(f"[seg_node] cannot start: {exc}", file=sys.stderr)
        code = 2
    except Exception:
        # a signal can shut the context down while spin() builds its next wait set (RCLError
        # "the given context is not valid"): that is a normal stop, anything else is not
        if rclpy.ok():
            raise
    finally:
        # Ctrl-C under `ros2 launch` reaches the node twice (terminal + launch): a second signal
        # must not interrupt the cleanup with a KeyboardInterrupt traceback.
        rclpy.uninstall_signal_handlers()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
