"""``seg-perception demo``: the package end to end on synthetic street scenes.

1. a synthetic camera bag is generated once and cached;
2. ``seg_node`` starts as its own process, exactly as ``ros2 launch`` would start it;
3. the bag's camera topic is played into it over DDS at the recorded rate;
4. every output topic is recorded into an MCAP bag, next to a contact sheet
   (input | semantic colour | panoptic colour | overlay) and a summary (frames in / out /
   dropped, latency).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

NAMESPACE = "/camera"
OUTPUTS = (
    "segmentation/semantic",
    "segmentation/semantic_color",
    "segmentation/overlay",
    "segmentation/instance",
    "segmentation/panoptic",
    "segmentation/panoptic_color",
)
SHEET = ("segmentation/semantic_color", "segmentation/panoptic_color", "segmentation/overlay")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=40, help="synthetic frames (default 40)")
    parser.add_argument("--fps", type=float, default=10.0, help="camera rate of the bag (10)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (1.0)")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--config", default=None, help="parameter file (default: shipped seg.yaml)")
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument(
        "--cache", default=".cache/seg_perception", help="where the synthetic bag is cached"
    )
    parser.add_argument("--startup-timeout", type=float, default=180.0)


def _synthetic_bag(args: argparse.Namespace) -> Path:
    from seg_perception.data.bag_io import write_synth_bag
    from seg_perception.data.synth import generate_frames

    name = f"synth_s{args.seed}_n{args.frames}_{args.height}x{args.width}_{args.fps:g}fps"
    path = Path(args.cache) / name
    if path.exists():
        print(f"[demo] using cached synthetic bag {path}")
        return path
    print(f"[demo] generating {args.frames} synthetic frames -> {path}")
    frames = generate_frames(args.frames, seed=args.seed, height=args.height, width=args.width)
    return write_synth_bag(
        path,
        frames,
        storage="mcap",
        fps=args.fps,
        namespace=NAMESPACE,
        compressed=False,
        progress=True,
    )


def _contact_sheet(path: Path, rows: list[list[np.ndarray]], width: int = 512) -> None:
    import cv2

    from seg_perception.atomic import write_bytes_atomic

    tiles = []
    for row in rows:
        scaled = [
            cv2.resize(
                img, (width, img.shape[0] * width // img.shape[1]), interpolation=cv2.INTER_AREA
            )
            for img in row
        ]
        tiles.append(np.concatenate(scaled, axis=1))
    sheet = np.concatenate(tiles, axis=0)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    write_bytes_atomic(path, png.tobytes())


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from tqdm import tqdm

    from seg_perception.atomic import write_text_atomic
    from seg_perception.config import default_config_path, load_config, resolve_path
    from seg_perception.data.bag_io import OutputBag, read_bag_messages
    from seg_perception.ros.bridge import (
        Received,
        TopicRecorder,
        loopback_env,
        play_messages,
        start_node,
        stop_process,
    )
    from seg_perception.ros.image_codec import imgmsg_to_array

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bag = _synthetic_bag(args)
    config = Path(args.config) if args.config else default_config_path()
    cfg = load_config(config)
    params = {}
    missing = [w for w in (cfg.weights, cfg.panoptic.weights) if not resolve_path(w).is_file()]
    if missing:
        params["allow_random_weights"] = "true"
        print("[demo] " + "!" * 70)
        print(f"[demo] no trained weights at {', '.join(missing)}: RANDOM WEIGHTS,")
        print("[demo] so the segmentation is noise. The data flow, topics and timing are real.")
        print("[demo] " + "!" * 70)
    camera_topic = f"{NAMESPACE}/image"
    camera = [m for m in read_bag_messages(bag, topics=[camera_topic])]
    if not camera:
        raise ValueError(f"{bag}: no messages on {camera_topic}")

    os.environ.update(loopback_env())
    log_path = out_dir / "seg_node.log"
    proc = start_node(config, namespace=NAMESPACE, params=params, log_path=log_path)
    print(f"[demo] started seg_node (pid {proc.pid}), log: {log_path}")

    rclpy.init()
    node = rclpy.create_node("seg_demo")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    recorded = out_dir / "outputs.mcap"
    writer = OutputBag(recorded, storage="mcap", overwrite=True)
    lock = threading.Lock()
    published_ns: dict[int, int] = {}  # header stamp -> wall time published
    received: dict[str, dict[int, tuple[int, bytes]]] = {t: {} for t in OUTPUTS}
    labels_seen = threading.Event()

    def stamp_of(raw: bytes) -> int:
        msg = deserialize_message(raw, Image)
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def sink(item: Received) -> None:
        if item.topic.endswith("segmentation/labels"):
            labels_seen.set()
        with lock:
            writer.add_connection(item.topic, item.msgtype)
            writer.write(item.topic, item.wall_ns, item.rawdata)
        short = item.topic.removeprefix(NAMESPACE + "/")
        if short in received:
            received[short][stamp_of(item.rawdata)] = (item.wall_ns, item.rawdata)

    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    TopicRecorder(node, {f"{NAMESPACE}/{t}": "sensor_msgs/msg/Image" for t in OUTPUTS}, sink)
    TopicRecorder(
        node,
        {f"{NAMESPACE}/segmentation/labels": "std_msgs/msg/String"},
        sink,
        qos=QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        ),
    )
    code = 0
    try:
        deadline = time.monotonic() + args.startup_timeout
        print("[demo] waiting for seg_node (engine warm-up) ...")
        while not labels_seen.wait(0.2):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"seg_node exited with code {proc.returncode}; see {log_path}:\n"
                    + log_path.read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"seg_node not ready after {args.startup_timeout:.0f} s")
        time.sleep(0.5)  # let discovery of all output subscriptions settle
        bar = tqdm(total=len(camera), desc="[demo] playing", unit="frame")

        def on_publish(topic: str, wall_ns: int, raw: bytes) -> None:
            published_ns[stamp_of(raw)] = wall_ns
            with lock:
                writer.add_connection(topic, "sensor_msgs/msg/Image")
                writer.write(topic, wall_ns, raw)
            bar.update(1)

        play_messages(node, camera, rate=args.rate, on_publish=on_publish)
        bar.close()
        last = max(published_ns)
        wait_until = time.monotonic() + 30.0
        while time.monotonic() < wait_until and last not in received[OUTPUTS[0]]:
            time.sleep(0.1)
        if cfg.panoptic.enabled:  # the asynchronous ASP model finishes the frame it holds
            panoptic = received["segmentation/panoptic"]
            seen, quiet_since = len(panoptic), time.monotonic()
            while time.monotonic() < wait_until and time.monotonic() - quiet_since < 5.0:
                if len(panoptic) != seen:
                    seen, quiet_since = len(panoptic), time.monotonic()
                time.sleep(0.1)
        time.sleep(0.5)
    finally:
        node_code = stop_process(proc)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        writer.close()
    if node_code not in (0, -2, 130):
        print(f"[demo] seg_node exited with code {node_code}; see {log_path}")
        code = 1

    semantic = received[OUTPUTS[0]]
    answered = sorted(set(semantic) & set(published_ns))
    latency = (
        np.array([(semantic[s][0] - published_ns[s]) / 1e6 for s in answered])
        if answered
        else np.zeros(0)
    )
    summary = {
        "frames_in": len(published_ns),
        "frames_out": len(answered),
        "frames_dropped": len(published_ns) - len(answered),
        "latency_ms": {
            "p50": float(np.percentile(latency, 50)) if latency.size else None,
            "p95": float(np.percentile(latency, 95)) if latency.size else None,
        },
        "random_weights": bool(params),
        "bag": str(bag),
        "outputs_bag": str(recorded),
    }
    summary["panoptic_frames"] = len(received["segmentation/panoptic"])
    complete = [s for s in answered if all(s in received[t] for t in SHEET)]
    shown = complete or answered
    if shown:
        picks = sorted({shown[int(i)] for i in np.linspace(0, len(shown) - 1, min(4, len(shown)))})
        camera_by_stamp = {stamp_of(raw): raw for _, _, _, raw in camera}
        rows = []
        for s in picks:
            row = [imgmsg_to_array(deserialize_message(camera_by_stamp[s], Image))]
            for topic in SHEET:
                if s in received[topic]:
                    row.append(imgmsg_to_array(deserialize_message(received[topic][s][1], Image)))
                else:  # no panoptic result for this frame (async / every_n): a grey tile
                    row.append(np.full_like(row[0], 64))
            rows.append(row)
        if rows:
            _contact_sheet(out_dir / "contact_sheet.png", rows)
            summary["contact_sheet"] = str(out_dir / "contact_sheet.png")
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
    lat = summary["latency_ms"]
    print("[demo] ---------------------------------------------------------------")
    print(
        f"[demo] frames in {summary['frames_in']}, out {summary['frames_out']}, "
        f"dropped {summary['frames_dropped']} (latest-frame policy), "
        f"panoptic results {summary['panoptic_frames']}"
    )
    if latency.size:
        print(f"[demo] end-to-end latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms")
    if params:
        print("[demo] NOTE: random weights (no trained model yet): outputs are not meaningful")
    print(
        f"[demo] outputs: {recorded}  contact sheet: {summary.get('contact_sheet')}  "
        f"summary: {out_dir / 'summary.json'}"
    )
    if not answered:
        print("[demo] ERROR: the node answered no frame")
        code = 1
    return code
