"""``seg_node``: camera images in, segmentation images out.

A thin adapter in the ros2/examples style: messages -> arrays -> :class:`Pipeline` -> arrays ->
messages. Every output carries the input header and the input resolution. Input uses sensor-data
QoS and a latest-frame policy: the subscription callback only parks the newest message in a
one-slot mailbox; a worker thread processes whatever is newest when it is free, so a slow engine
never builds a queue and replaced frames are counted as dropped.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from seg_perception import config as cfgmod
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
from seg_perception.ros.diagnostics import NodeStats, build_diagnostics
from seg_perception.ros.image_codec import ImageDecodeError, array_to_imgmsg, msg_to_rgb8
from seg_perception.ros.topics import LABELS_TOPIC, OUTPUT_TOPICS, PANOPTIC_TOPICS
from seg_perception.ros.worker import LatestWorker

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
_ROS_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
# parameters every rclpy node may receive; they are not ours to validate
_BUILTIN_PARAMS = ("use_sim_time", "start_type_description_service")


def _own_params(params: dict[str, Any]) -> dict[str, Any]:
    """Drop the parameters every rclpy node may receive (use_sim_time, qos_overrides.*)."""
    return {
        k: v
        for k, v in params.items()
        if k not in _BUILTIN_PARAMS and not k.startswith("qos_overrides.")
    }


class SegNode(Node):
    """The segmentation node. Raises ``ConfigError`` / ``EngineError`` when it cannot start."""

    def __init__(self, *, params_files: tuple[str, ...] = (), **node_kwargs: Any) -> None:
        super().__init__(cfgmod.NODE_NAME, **node_kwargs)
        files = {
            p: cfgmod.validate(_own_params(cfgmod.read_params_file(p)), source=p, partial=True)
            for p in params_files
        }  # errors name the file and the key
        self.cfg = self._declare_and_read_parameters()
        self._check_params_files_applied(files)
        self.labels = load_label_table(self.cfg.labels)
        log = self.get_logger()
        self.engine_state = "warming"

        def log_note(model: str, note: str) -> None:
            (log.warning if "RANDOM" in note else log.info)(f"{model}: {note}")

        self.pipeline = build_pipeline(self.cfg, self.labels, on_note=log_note)
        self.engine_state = "loaded"
        pan = self.cfg.panoptic
        self.stats = NodeStats()
        self._frame_index = 0

        topics = {**OUTPUT_TOPICS, **(PANOPTIC_TOPICS if pan.enabled else {})}
        self._pubs = {topic: self.create_publisher(Image, topic, OUTPUT_QOS) for topic in topics}
        self._labels_pub = self.create_publisher(String, LABELS_TOPIC, LATCHED_QOS)
        self._labels_pub.publish(String(data=self.labels.to_json()))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.cfg.diagnostics_period_s, self._publish_diagnostics)

        if self.cfg.input_transport == "compressed":
            self._input_topic = "image/compressed"
            msg_type: type = CompressedImage
        else:
            self._input_topic = "image"
            msg_type = Image
        self.create_subscription(
            msg_type, self._input_topic, self._on_image, qos_profile_sensor_data
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = LatestWorker(
            "seg_worker",
            self.process_message,
            on_replaced=self._count_stale,
            on_error=self._engine_failed,
        )
        self._panoptic_worker = (
            LatestWorker("seg_panoptic", self._process_panoptic, on_error=self._engine_failed)
            if pan.enabled and pan.mode == "async"
            else None
        )
        log.info(
            f"{self.cfg.model} on {self.cfg.backend}/{self.cfg.device} at "
            f"{self.cfg.network_height}x{self.cfg.network_width}; listening on "
            f"{self.resolve_topic_name(self._input_topic)}"
        )

    # ----------------------------------------------------------------- parameters
    def _declare_and_read_parameters(self) -> cfgmod.SegConfig:
        default_path = cfgmod.default_config_path()
        defaults = cfgmod.validate(cfgmod.read_params_file(default_path), source=str(default_path))
        types = cfgmod.SegConfig.field_types()
        values = {}
        for key in cfgmod.SegConfig.names():
            descriptor = ParameterDescriptor(
                name=key,
                type=_ROS_TYPES[types[key]],
                description=cfgmod.SegConfig.description(key),
            )
            param = self.declare_parameter(key, defaults.get(key), descriptor)
            values[key] = param.value
        overrides = getattr(self, "_parameter_overrides", {})
        unknown = sorted(
            n
            for n in overrides
            if n not in values and n not in _BUILTIN_PARAMS and not n.startswith("qos_overrides.")
        )
        if unknown:
            raise cfgmod.ConfigError(
                f"node parameters: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(cfgmod.SegConfig.names())}"
            )
        return cfgmod.validate(values, source="node parameters")

    def _check_params_files_applied(self, files: dict[str, dict[str, Any]]) -> None:
        """Every ``--params-file`` must be valid and must reach this node.

        rcl applies a file's ``seg_node:`` section only to a node in the root namespace; under a
        namespace it would silently keep the defaults. Say so instead, naming the file.
        """
        overrides = getattr(self, "_parameter_overrides", {})
        for path, params in files.items():
            missing = sorted(k for k in params if k not in overrides)
            if missing:
                raise cfgmod.ConfigError(
                    f"{path}: parameters {', '.join(missing)} did not reach node "
                    f"{self.get_fully_qualified_name()}: the file's node key does not match its "
                    "namespace; use '/**/seg_node:' as the top-level key"
                )

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        names = ", ".join(p.name for p in params)
        return SetParametersResult(
            successful=False,
            reason=f"{names}: changing parameters at run time is not supported; "
            "restart the node with the new value",
        )

    # ----------------------------------------------------------------- input
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stats.received += 1
        self._worker.offer(msg)

    def _count_stale(self, _msg: Any) -> None:
        self.stats.dropped_stale += 1

    def _engine_failed(self, exc: Exception) -> None:
        self.stats.engine_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        self.get_logger().error(f"frame failed: {self.stats.last_error}", throttle_duration_sec=5.0)

    def wanted_outputs(self) -> set[str]:
        """Pipeline outputs that have at least one subscriber."""
        topics = {**OUTPUT_TOPICS, **PANOPTIC_TOPICS}
        return {topics[t][0] for t, p in self._pubs.items() if p.get_subscription_count()}

    def process_message(self, msg: Image | CompressedImage) -> dict[str, float] | None:
        """Decode, segment and publish one message; returns stage timings (ms)."""
        t0 = time.perf_counter()
        try:
            pixels = int(getattr(msg, "height", 0)) * int(getattr(msg, "width", 0))
            if pixels > self.cfg.max_pixels:
                raise ImageDecodeError(
                    f"{msg.width}x{msg.height} = {pixels} pixels exceeds max_pixels "
                    f"{self.cfg.max_pixels}",
                    reason="too_large",
                )
            rgb = msg_to_rgb8(msg)
        except ImageDecodeError as exc:
            self.stats.count_bad(exc.reason)
            self.get_logger().warning(
                f"dropped bad frame on {self._input_topic}: {exc} "
                f"(bad frames so far: {self.stats.bad_total})",
                throttle_duration_sec=2.0,
            )
            return None
        t1 = time.perf_counter()
        want = self.wanted_outputs()
        if not want:
            self.stats.skipped_no_subscribers += 1
            return None
        out = self.pipeline.run(rgb, want)
        t2 = time.perf_counter()
        self._publish(OUTPUT_TOPICS, {k: getattr(out, k) for k in want & ALL_OUTPUTS}, msg.header)
        t3 = time.perf_counter()
        timings = {"decode": (t1 - t0) * 1e3, **out.timings_ms, "publish": (t3 - t2) * 1e3}
        self.stats.record_frame(total_ms=(t3 - t0) * 1e3, engine_ms=out.timings_ms["engine"])
        pan_want = want & PANOPTIC_OUTPUTS
        if pan_want and self.pipeline.panoptic_engine is not None:
            semantic = out.semantic if self.cfg.fusion.semantic_source == "realtime" else None
            if self._panoptic_worker is not None:  # async: copy what the next frame overwrites
                self._panoptic_worker.offer(
                    (msg, rgb, None if semantic is None else semantic.copy())
                )
            elif self._frame_index % self.cfg.panoptic.every_n == 0:
                timings.update(self._process_panoptic((msg, rgb, semantic)))
        self._frame_index += 1
        return timings

    def _process_panoptic(self, item: tuple[Any, Any, Any]) -> dict[str, float]:
        """ASP model + fusion on one frame; publishes with that frame's header."""
        msg, rgb, semantic = item
        want = self.wanted_outputs() & PANOPTIC_OUTPUTS
        if not want:
            return {}
        t0 = time.perf_counter()
        out = self.pipeline.run_panoptic(rgb, semantic, want)
        t1 = time.perf_counter()
        r = out.result
        self._publish(
            PANOPTIC_TOPICS,
            {INSTANCE: r.instance, PANOPTIC: r.panoptic, PANOPTIC_COLOR: out.panoptic_color},
            msg.header,
            want,
        )
        self.stats.panoptic_frames += 1
        return {
            **out.timings_ms,
            "panoptic_publish": (time.perf_counter() - t1) * 1e3,
            "panoptic_total": (t1 - t0) * 1e3,
        }

    def _publish(
        self,
        topics: dict[str, tuple[str, str]],
        arrays: dict[str, Any],
        header: Any,
        want: set[str] | None = None,
    ) -> None:
        for topic, (key, encoding) in topics.items():
            array = arrays.get(key)
            if array is not None and (want is None or key in want):
                self._pubs[topic].publish(array_to_imgmsg(array, encoding, header=header))

    # ----------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(
            build_diagnostics(
                self.get_clock().now().to_msg(),
                f"{self.get_fully_qualified_name()}",
                self.stats,
                engine_state=self.engine_state,
                engine_name=self.pipeline.engine.name,
                input_topic=self.resolve_topic_name(self._input_topic),
            )
        )

    def shutdown(self) -> None:
        """Stop the worker threads and release the engines."""
        self._worker.stop()
        if self._panoptic_worker is not None:
            self._panoptic_worker.stop()
        self.pipeline.engine.close()
        if self.pipeline.panoptic_engine is not None:
            self.pipeline.panoptic_engine.close()


def params_files_from_args(args: list[str]) -> tuple[str, ...]:
    """The ``--params-file`` paths of a ROS command line (after ``--ros-args``)."""
    return tuple(args[i + 1] for i, a in enumerate(args[:-1]) if a == "--params-file")


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``seg_node`` executable."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = SegNode(params_files=params_files_from_args(sys.argv if args is None else args))
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (cfgmod.ConfigError, EngineError, FileNotFoundError, ValueError) as exc:
        print(f"[seg_node] cannot start: {exc}", file=sys.stderr)
        code = 2
    finally:
        # Ctrl-C under `ros2 launch` reaches the node twice (terminal + launch): a second SIGINT
        # must not interrupt the cleanup with a KeyboardInterrupt traceback.
        rclpy.uninstall_signal_handlers()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
