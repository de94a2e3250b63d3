"""``seg-perception eval --live``: evaluate the running node, not a pipeline in this process.

``seg_node`` starts as its own process in the camera topic's namespace; the bag's camera topic
is played into it over DDS at the recorded timing (times ``rate``); its outputs are recorded and
paired with the bag's ground truth by header stamp. The metrics are those of the offline
evaluation (:mod:`.evaluate`), computed on the frames the node answered, plus real-time figures:
frames published / answered / dropped (the node keeps the latest frame only) and the end-to-end
latency (publish of the camera frame -> receipt of its semantic output, wall clock).

Written to ``out_dir``: ``outputs.mcap`` (camera as published + the node's outputs, bag time =
receipt wall time), ``metrics.json``, ``report.md`` / ``report.html``, ``seg_node.log``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from seg_perception.atomic import write_text_atomic
from seg_perception.codec import image_from_ros, msg_to_rgb8, stamp_ns
from seg_perception.data.bag_io import BagError, bag_topics, read_bag_messages
from seg_perception.errors import SegError
from seg_perception.eval.bag_topics import IMAGE, resolve_topics
from seg_perception.eval.scoring import NUM_SAMPLES, Accumulators, json_safe
from seg_perception.ros.dds import large_image_transport
from seg_perception.stats import percentiles
from seg_perception.topics import (
    LABELS_TOPIC,
    OUTPUT_TOPICS,
    PANOPTIC_TOPIC,
    PANOPTIC_TOPICS,
    SEMANTIC_TOPIC,
)

__all__ = ["evaluate_live", "semantic_by_stamp", "typed_overrides"]

DRAIN_TIMEOUT_S = 30.0  # after the last frame: wait this long at most for the node to answer
QUIET_S = 2.0  # ... and stop once no output arrived for this long
PACE_TIMEOUT_S = 60.0  # paced play: send the next frame after this long without an answer


class LiveEvalError(SegError, RuntimeError):
    """The node under evaluation did not come up (exited, or not ready in time)."""


def typed_overrides(overrides: dict[str, str]) -> dict[str, Any]:
    """String overrides (as ``-p key:=value`` takes them) -> YAML-typed values for load_config:
    the configuration the live node runs with, for comparing it with an offline run."""
    import yaml

    return {k: yaml.safe_load(str(v)) for k, v in overrides.items()}


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def evaluate_live(
    bag: str | Path,
    out_dir: str | Path,
    *,
    config_path: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    camera_topic: str | None = None,
    gt_semantic_topic: str | None = None,
    gt_instance_topic: str | None = None,
    rate: float = 1.0,
    pace: bool = False,
    startup_timeout: float = 180.0,
    write_report: bool = True,
) -> dict[str, Any]:
    """Play ``bag`` into a ``seg_node`` subprocess and score its outputs; returns the metrics.

    ``overrides``: node parameters (``{"backend": "torch"}``), passed to the node as ``-p`` and
    used (YAML-typed) for the label table and topic checks here. ``pace``: closed loop, each
    frame is published once the node answered the previous one (its semantic and, with the
    panoptic model enabled, panoptic output; at most :data:`PACE_TIMEOUT_S` later), at the
    recorded timing at the fastest: the bag goes at the rate this machine sustains and every frame
    is answered. ``metrics["frames"]`` gains ``published``, ``answered`` and ``dropped``;
    ``metrics["realtime"]`` holds the same counts, ``latency_ms`` (end to end: ``p50``, ``p95``,
    ``mean``, ``n``), ``paced`` and ``wall_s`` (first frame published -> last output received).
    """
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from seg_perception.config import default_config_path, load_config
    from seg_perception.data.bag_io import OutputBag
    from seg_perception.labels import load_label_table
    from seg_perception.ros.bridge import (
        Received,
        TopicRecorder,
        play_messages,
        start_node,
        stop_process,
    )
    from seg_perception.ros.compat import SpinThread

    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    params = {k: _ros_value(v) for k, v in (overrides or {}).items()}
    config = Path(config_path) if config_path else default_config_path()
    cfg = load_config(config, typed_overrides(params))
    panoptic = bool(cfg.panoptic.enabled)
    topics = resolve_topics(
        bag,
        bag_topics(bag),
        camera_topic=camera_topic,
        gt_semantic_topic=gt_semantic_topic,
        gt_instance_topic=gt_instance_topic,
        need_instance=panoptic,
    )
    if topics.camera_type != IMAGE and cfg.input_transport != "compressed":
        raise ValueError(
            f"{bag}: camera topic {topics.camera} is {topics.camera_type}; set "
            "input_transport=compressed for the node (or choose a raw Image topic)"
        )
    labels = load_label_table(cfg.labels)
    ns = topics.namespace
    camera = list(read_bag_messages(bag, [topics.camera]))
    if not camera:
        raise BagError(f"{bag}: no messages on {topics.camera}")
    # ground truth kept serialised until scoring: one decoded frame at a time
    gt_raw: dict[str, dict[int, bytes]] = {topics.gt_semantic: {}}
    if topics.gt_instance:
        gt_raw[topics.gt_instance] = {}
    for topic, _, _, raw in read_bag_messages(bag, list(gt_raw)):
        gt_raw[topic][stamp_ns(deserialize_message(raw, Image).header)] = raw

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "seg_node.log"
    outputs = {**OUTPUT_TOPICS, **(PANOPTIC_TOPICS if panoptic else {})}
    out_topics = {f"{ns}/{t}": IMAGE for t in outputs}
    sem_topic, pan_topic = f"{ns}/{SEMANTIC_TOPIC}", f"{ns}/{PANOPTIC_TOPIC}"

    lock = threading.Lock()
    published: dict[int, int] = {}  # header stamp -> wall ns published
    received: dict[str, dict[int, tuple[int, bytes]]] = {t: {} for t in out_topics}
    last_rx = [time.monotonic()]
    labels_seen = threading.Event()
    writer = OutputBag(out / "outputs.mcap", "mcap", overwrite=True)
    writer.add_connection(topics.camera, topics.camera_type)
    for t in out_topics:
        writer.add_connection(t, IMAGE)

    def sink(item: Received) -> None:
        if item.topic.endswith(LABELS_TOPIC):
            labels_seen.set()
            return
        key = stamp_ns(deserialize_message(item.rawdata, Image).header)
        with lock:
            received[item.topic][key] = (item.wall_ns, item.rawdata)
            writer.write(item.topic, item.wall_ns, item.rawdata)
            last_rx[0] = time.monotonic()

    def on_publish(topic: str, wall_ns: int, raw: bytes) -> None:
        msg = deserialize_message(raw, type_by_topic)
        with lock:
            published[stamp_ns(msg.header)] = wall_ns
            writer.write(topic, wall_ns, raw)

    from sensor_msgs.msg import CompressedImage

    type_by_topic = Image if topics.camera_type == IMAGE else CompressedImage
    proc = start_node(config, namespace=ns, params=params, log_path=log_path)
    large_image_transport()  # this process's participant: camera-sized messages over SHM
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("seg_eval_live", context=context)
    spin = SpinThread.of(node, name="seg_eval_live")
    TopicRecorder(node, out_topics, sink)
    latched = QoSProfile(
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    TopicRecorder(node, {f"{ns}/{LABELS_TOPIC}": "std_msgs/msg/String"}, sink, qos=latched)
    ok = False
    try:
        deadline = time.monotonic() + startup_timeout
        while not labels_seen.wait(0.2):  # the node latches its labels once its engine is up
            if proc.poll() is not None:
                raise LiveEvalError(
                    f"seg_node exited with code {proc.returncode} before it was ready; "
                    f"{log_path}:\n" + log_path.read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                raise LiveEvalError(
                    f"seg_node not ready after {startup_timeout:.0f} s ({log_path})"
                )
        from tqdm import tqdm

        def answered_last() -> None:  # the pacing gate
            if not published:
                return
            with lock:
                last_stamp = max(published)
            wanted = [sem_topic, pan_topic] if panoptic else [sem_topic]
            until = time.monotonic() + PACE_TIMEOUT_S
            while time.monotonic() < until and proc.poll() is None:
                with lock:
                    if all(last_stamp in received[t] for t in wanted):
                        return
                time.sleep(0.01)

        with tqdm(total=len(camera), desc="[live] playing", unit="frame") as bar:

            def publish_and_count(topic: str, wall_ns: int, raw: bytes) -> None:
                on_publish(topic, wall_ns, raw)
                bar.update(1)

            play_messages(
                node,
                camera,
                rate=rate,
                on_publish=publish_and_count,
                wait_subscribers=10.0,
                gate=answered_last if pace else None,
            )
        last = max(published)
        until = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < until:
            with lock:
                done = last in received[sem_topic] and (
                    not panoptic or time.monotonic() - last_rx[0] > QUIET_S
                )
                quiet = time.monotonic() - last_rx[0] > max(QUIET_S, 2.0 / rate)
            if done or (quiet and received[sem_topic]):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        ok = True
    finally:
        node_code = stop_process(proc)
        spin.stop()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        if ok:
            writer.close()
        else:
            writer.abort()

    semantic = received[sem_topic]
    answered = sorted(set(semantic) & set(published))
    camera_raw = {
        stamp_ns(deserialize_message(raw, type_by_topic).header): raw for _, _, _, raw in camera
    }
    acc = Accumulators(labels, panoptic)
    e2e = [(semantic[s][0] - published[s]) / 1e6 for s in answered]
    acc.timings["total"].extend(e2e)  # the report's latency histogram: end to end here
    for s in answered:
        pred = image_from_ros(deserialize_message(semantic[s][1], Image))
        acc.frames += 1
        g = gt_raw[topics.gt_semantic].get(s)
        if g is None:
            continue
        g_sem = image_from_ros(deserialize_message(g, Image))
        if g_sem.shape != pred.shape:
            raise BagError(
                f"{bag}: ground truth {topics.gt_semantic} at stamp {s} is "
                f"{g_sem.shape[1]}x{g_sem.shape[0]} but the node's output is "
                f"{pred.shape[1]}x{pred.shape[0]}"
            )
        pan = g_inst = None
        if panoptic and s in received[pan_topic] and topics.gt_instance:
            pan = image_from_ros(deserialize_message(received[pan_topic][s][1], Image))
            gi = gt_raw[topics.gt_instance].get(s)
            g_inst = image_from_ros(deserialize_message(gi, Image)) if gi is not None else None
        # the node publishes no fused semantic map: the fusion block stays empty (null)
        acc.update(pred, g_sem, None, pan, g_inst)
        if len(acc.samples) < NUM_SAMPLES:
            rgb = msg_to_rgb8(deserialize_message(camera_raw[s], type_by_topic))
            acc.samples.append({"rgb": rgb, "gt": g_sem, "pred": pred})

    metrics = json_safe(acc.compute(total_frames=len(camera)))
    realtime = {
        "rate": rate,
        "paced": pace,
        "wall_s": (
            (max(w for t in received.values() for w, _ in t.values()) - min(published.values()))
            / 1e9
            if published and any(received.values())
            else None
        ),
        "published": len(published),
        "answered": len(answered),
        "dropped": len(published) - len(answered),
        "latency_ms": percentiles(e2e) if e2e else None,
        "panoptic_answered": len(received[pan_topic]) if panoptic else None,
        "node_exit_code": node_code,
    }
    metrics["frames"].update(
        published=realtime["published"], answered=realtime["answered"], dropped=realtime["dropped"]
    )
    metrics["realtime"] = json_safe(realtime)
    metrics["topics"] = {
        "camera": topics.camera,
        "gt_semantic": topics.gt_semantic,
        "gt_instance": topics.gt_instance,
        "outputs": sorted(out_topics),
    }
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
    if write_report:
        from seg_perception.eval.report import write_report as _write

        _write(out, metrics, acc)
    return metrics


def semantic_by_stamp(outputs_bag: str | Path, topic: str) -> dict[int, np.ndarray]:
    """The ``mono8`` images of ``topic`` in an ``outputs.mcap``, keyed by header stamp (ns)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    out: dict[int, np.ndarray] = {}
    for _, _, _, raw in read_bag_messages(outputs_bag, [topic]):
        msg = deserialize_message(raw, Image)
        out[stamp_ns(msg.header)] = image_from_ros(msg)
    return out
