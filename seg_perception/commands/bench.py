"""``seg-perception bench <what>``: benchmarks that print tables (never asserted in tests).

* ``engines``: every backend and precision for GUN, ShelfNet-18/50 against this machine's
  measured conv ceiling (:mod:`seg_perception.commands.bench_engines`).
* ``train``: the trainer's step for each synthetic recipe: seconds per iteration, achieved
  GFLOP/s and its ratio to the conv ceiling measured in the same run
  (:mod:`seg_perception.commands.bench_train`).
* ``fusion``: the fusion paper's heuristic vs the simple baseline at 1024x2048 on corrupted
  synthetic ground truth (:mod:`seg_perception.eval.fusion_bench`).
* ``node``: per-frame cost of each node stage at camera 1024x2048 / network 512x1024, measured on
  the node's own processing path (decode, pre-process, engine, post-process, colourise, publish)
  with a real subscriber on every output, and ``overhead_ratio`` = (all but engine) / engine.

Every benchmark prints the machine above its table and writes it into its JSON under
``"machine"`` (:func:`seg_perception.machine.machine_record`): CPU, cores, features, versions.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from seg_perception.cli_paths import OutputFile
from seg_perception.config import ConfigError, parse_hw
from seg_perception.machine import machine_header, machine_record

NODE_STAGES = ("decode", "preprocess", "engine", "postprocess", "colorize", "publish")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    node = sub.add_parser("node", help="per-stage cost of the node's frame path")
    node.add_argument("--frames", type=int, default=20, help="timed frames (default 20)")
    node.add_argument("--camera", default="1024x2048", help="camera HxW (default 1024x2048)")
    node.add_argument("--network", default="512x1024", help="network HxW (default 512x1024)")
    node.add_argument(
        "--json", default=None, action=OutputFile, help="also write the results as JSON here"
    )
    from seg_perception.commands import bench_engines

    engines = sub.add_parser("engines", help="backends x precisions: latency, GFLOP/s, ceiling")
    bench_engines.add_arguments(engines)
    from seg_perception.commands import bench_train

    train = sub.add_parser("train", help="training step per recipe: s/iteration, GFLOP/s, ceiling")
    bench_train.add_arguments(train)
    fusion = sub.add_parser("fusion", help="fusion heuristic vs baseline: time, mIoU, PQ")
    fusion.add_argument("--frames", type=int, default=10, help="frames per count (default 10)")
    fusion.add_argument("--counts", default="5,20,50", help="instance counts (default 5,20,50)")
    fusion.add_argument("--camera", default="1024x2048", help="camera HxW (default 1024x2048)")
    fusion.add_argument(
        "--json", default=None, action=OutputFile, help="also write the results as JSON here"
    )


def bench_node(frames: int, camera_hw: tuple[int, int], network_hw: tuple[int, int]) -> dict:
    import rclpy
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from seg_perception.codec import array_to_imgmsg
    from seg_perception.data.synth import generate_frame
    from seg_perception.ros.bridge import loopback_env
    from seg_perception.ros.node import OUTPUT_QOS, OUTPUT_TOPICS, SegNode

    os.environ.update(loopback_env())
    rclpy.init()
    try:
        node = SegNode(
            parameter_overrides=[
                Parameter("allow_random_weights", value=True),
                Parameter("panoptic.enabled", value=False),  # this table is the semantic frame path
                Parameter("network_height", value=network_hw[0]),
                Parameter("network_width", value=network_hw[1]),
            ]
        )
        listener = rclpy.create_node("bench_listener")
        for topic in OUTPUT_TOPICS:
            listener.create_subscription(Image, topic, lambda _m: None, OUTPUT_QOS)
        deadline = time.monotonic() + 10
        while len(node.wanted_outputs()) < len(OUTPUT_TOPICS) and time.monotonic() < deadline:
            time.sleep(0.05)
        frame = generate_frame(seed=0, index=0, height=camera_hw[0], width=camera_hw[1])
        msg = array_to_imgmsg(frame.image, "rgb8")
        node.process_message(msg)  # warm caches and buffers
        rows = [node.process_message(msg) for _ in range(frames)]
        node.shutdown()
        node.destroy_node()
        listener.destroy_node()
    finally:
        rclpy.try_shutdown()
    med = {s: float(np.median([r[s] for r in rows])) for s in NODE_STAGES}
    overhead = sum(v for k, v in med.items() if k != "engine")
    return {
        "camera_hw": list(camera_hw),
        "network_hw": list(network_hw),
        "frames": frames,
        "median_ms": med,
        "p95_ms": {s: float(np.percentile([r[s] for r in rows], 95)) for s in NODE_STAGES},
        "overhead_ms": overhead,
        "overhead_ratio": overhead / med["engine"],
        "machine": machine_record(),
    }


def print_node_table(result: dict) -> None:
    print(machine_header())
    print(
        f"node stages, camera {result['camera_hw']}, network {result['network_hw']}, "
        f"{result['frames']} frames"
    )
    print(f"| {'stage':<12} | {'median ms':>9} | {'p95 ms':>8} |")
    print(f"|{'-' * 14}|{'-' * 11}|{'-' * 10}|")
    for s in NODE_STAGES:
        print(f"| {s:<12} | {result['median_ms'][s]:9.2f} | {result['p95_ms'][s]:8.2f} |")
    print(f"| {'overhead':<12} | {result['overhead_ms']:9.2f} | {'':>8} |")
    print(f"overhead_ratio = {result['overhead_ratio']:.3f}  (goal <= 0.10)")


def run(args: argparse.Namespace) -> int:
    if args.what == "engines":
        from seg_perception.commands import bench_engines

        return int(bench_engines.run(args) or 0)
    if args.what == "train":
        from seg_perception.commands import bench_train

        return bench_train.run(args)
    if args.what == "node":
        result = bench_node(args.frames, parse_hw(args.camera), parse_hw(args.network))
        print_node_table(result)
    elif args.what == "fusion":
        from seg_perception.eval.fusion_bench import print_fusion_table, run_fusion_bench

        h, w = parse_hw(args.camera)
        counts = tuple(int(c) for c in args.counts.split(","))
        result = run_fusion_bench(counts, frames=args.frames, height=h, width=w)
        print_fusion_table(result)
    else:  # pragma: no cover - argparse restricts the choices
        raise ConfigError(f"unknown benchmark {args.what!r}")
    if args.json:
        from seg_perception.atomic import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(result, indent=2))
    return 0
