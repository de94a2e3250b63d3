"""``seg-perception soak``: synthetic camera streams into one ``seg_node`` for minutes.

The node is started as the launch file starts it, serving ``--cameras`` cameras (parameter
``cameras: cam0,cam1,...``: camera ``cam0`` reads ``cam0/image``). One publisher per camera sends
pre-rendered synthetic street scenes (:func:`seg_perception.data.synth.generate_frame`, cycled) at
``--fps`` with header stamp = now and frame_id ``<camera>_optical``; the driver subscribes to each
camera's ``segmentation/semantic`` and pairs answers with sent frames by stamp.

Reported: the node's RSS (``VmRSS`` of /proc/<pid>/status) at the start, after the warm-up, every
``--rss-period`` seconds and at the end; latency = receipt time - header stamp (wall clock, both on
this machine) as p50/p95/p99; drop ratio per camera = 1 - answered / sent (the node keeps only the
newest frame of each camera, so a slow engine drops, it never queues). Each camera also reports the
node's own counters and ``lost_before_node``: frames sent that never reached the node's
subscription callback (best-effort DDS or its reader queue), which the node cannot count. The
machine (CPU, cores, features, library versions) is printed first and written under ``"machine"``.

Goal (meant for ``--minutes 10``): RSS growth after the warm-up <= 2 %, p99 <= 2 x p50, no crash,
and every camera answered with its own headers only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seg_perception.config import hw_argument
from seg_perception.stress.common import add_node_arguments

if TYPE_CHECKING:
    from seg_perception.stress.soak_streams import CameraStreams

RSS_GROWTH_GOAL = 0.02
TAIL_RATIO_GOAL = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cameras", type=int, default=4, help="camera streams (4)")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second per camera (30)")
    parser.add_argument("--minutes", type=float, default=10.0, help="duration in minutes (10)")
    parser.add_argument(
        "--camera", type=hw_argument, default=(256, 512), help="camera image HxW (256x512)"
    )
    parser.add_argument("--network", default="64x128", help="network input HxW (64x128)")
    parser.add_argument(
        "--rss-period", type=float, default=30.0, help="seconds between RSS samples (30)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=30.0,
        help="warm-up seconds before the RSS baseline (30; at most a third of the run)",
    )
    parser.add_argument("--frames", type=int, default=8, help="distinct frames per camera (8)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic scene sequence (0)")

    add_node_arguments(
        parser,
        startup_help="seconds for the node to start and answer every camera (180)",
        out_help="keep the node log in this folder",
    )


def run(args: argparse.Namespace) -> int:
    from seg_perception.config import parse_hw, parse_key_values
    from seg_perception.stress.common import report_goals, write_json

    result = soak(
        cameras=args.cameras,
        fps=args.fps,
        minutes=args.minutes,
        height=args.camera[0],
        width=args.camera[1],
        network=parse_hw(args.network),
        rss_period=args.rss_period,
        warmup=args.warmup,
        frames=args.frames,
        seed=args.seed,
        startup_timeout=args.startup_timeout,
        engine_cache=args.engine_cache,
        overrides=parse_key_values(args.set, "--set"),
        out_dir=args.out,
    )
    write_json(args.json, result)
    return report_goals(result["failed_goals"], "soak")


def _check(
    cameras: int,
    fps: float,
    minutes: float,
    height: int,
    width: int,
    frames: int,
    rss_period: float,
    warmup: float,
) -> None:
    problems = []
    if not rss_period > 0 or warmup < 0:
        problems.append(f"--rss-period must be > 0 and --warmup >= 0, got {rss_period}, {warmup}")
    if not 1 <= cameras <= 16:
        problems.append(f"--cameras must be 1..16, got {cameras}")
    if not 0 < fps <= 240:
        problems.append(f"--fps must be in (0, 240], got {fps}")
    if not 0 < minutes <= 24 * 60:
        problems.append(f"--minutes must be in (0, 1440], got {minutes}")
    if not (16 <= height <= 4096 and 16 <= width <= 8192):
        problems.append(f"--camera must be 16..4096 x 16..8192, got {height}x{width}")
    if not 1 <= frames <= 256:
        problems.append(f"--frames must be 1..256, got {frames}")
    if problems:
        raise ValueError("; ".join(problems))


def soak(
    *,
    cameras: int = 4,
    fps: float = 30.0,
    minutes: float = 10.0,
    height: int = 256,
    width: int = 512,
    network: tuple[int, int] = (64, 128),
    rss_period: float = 30.0,
    warmup: float = 30.0,
    frames: int = 8,
    seed: int = 0,
    startup_timeout: float = 180.0,
    engine_cache: str | None = None,
    overrides: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the soak session; returns the JSON result (see the module docstring)."""
    import os

    from seg_perception.data.synth import generate_frame
    from seg_perception.machine import machine_header, machine_record
    from seg_perception.stress.common import (
        SMALL_NODE_PARAMS,
        DiagnosticsWatcher,
        NodeProcess,
        RosClient,
        StressError,
        handshake,
        write_params_file,
    )
    from seg_perception.stress.soak_streams import CameraStreams, camera_counters

    _check(cameras, fps, minutes, height, width, frames, rss_period, warmup)
    print(machine_header(), flush=True)
    names = [f"cam{i}" for i in range(cameras)]
    duration = minutes * 60.0
    warmup_s = min(warmup, duration / 3.0)
    tmp = tempfile.TemporaryDirectory(prefix="seg_soak_")
    out = Path(out_dir) if out_dir else Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    params = {
        **SMALL_NODE_PARAMS,
        "cameras": ",".join(names),
        "network_height": network[0],
        "network_width": network[1],
        "engine_cache": str(engine_cache or Path(tmp.name) / "engines"),
        **(overrides or {}),
    }
    pfile = write_params_file(Path(tmp.name) / "soak.yaml", params)
    images = [
        generate_frame(seed=seed, index=i, height=height, width=width).image for i in range(frames)
    ]
    base = f"/seg_soak_{os.getpid()}"
    t_start = time.monotonic()
    client = RosClient(f"seg_soak_{os.getpid()}")
    streams = CameraStreams(client, base, names, images)
    diag = DiagnosticsWatcher(client.sub)
    node = NodeProcess(pfile, namespace=base, log_path=out / "seg_node.log")
    crashes: list[str] = []
    samples: list[dict[str, Any]] = []
    counters: dict[str, dict[str, int]] = {}
    try:
        try:
            for c in names:
                handshake(
                    partial(streams.send_handshake, c),
                    partial(streams.handshake_answered, c),
                    node.alive,
                    timeout=startup_timeout,
                    what=f"soak camera {c} ({node.log_path})",
                )
        except StressError as exc:
            crashes.append(str(exc))
        if not crashes:
            print(
                f"[soak] {cameras} camera(s) x {fps:g} fps, {height}x{width} -> network "
                f"{network[0]}x{network[1]}, {minutes:g} min; node pid {node.pid}",
                flush=True,
            )
            before = camera_counters(diag, streams)
            crashes += _publish(streams, node, fps, duration, warmup_s, rss_period, samples)
            counters = camera_counters(diag, streams)
            for c, v in counters.items():  # frames of the run that reached the node's callback
                v["received_during_run"] = v["frames_received"] - before[c]["frames_received"]
    finally:
        streams.stop()
        code = node.stop()
        client.close()
    if code != 0 or node.has_traceback():
        crashes.append(
            f"seg_node exit code {code}" + (", traceback" if node.has_traceback() else "")
        )
    result = _result(
        streams,
        samples,
        crashes,
        counters,
        warmup_s=warmup_s,
        exit_code=code,
        config={
            "cameras": cameras,
            "fps": fps,
            "minutes": minutes,
            "height": height,
            "width": width,
            "network": list(network),
            "seed": seed,
        },
    )
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    result["machine"] = machine_record()
    if crashes:
        result["node_log_tail"] = node.log_tail()
    if out_dir:
        result["logs"] = str(out)
    tmp.cleanup()
    return result


def _publish(
    streams: CameraStreams,
    node: Any,
    fps: float,
    duration: float,
    warmup_s: float,
    rss_period: float,
    samples: list[dict[str, Any]],
) -> list[str]:
    """Publish for ``duration`` seconds, sampling RSS; returns crash descriptions."""
    from seg_perception.stats import percentiles

    due = sorted(
        {0.0, warmup_s, *(k * rss_period for k in range(1, int(duration // rss_period) + 1))}
    )
    due = [t for t in due if t < duration]
    streams.start(fps)
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        if not node.alive():
            return [f"seg_node exited with code {node.proc.poll()} after {elapsed:.1f} s"]
        end = elapsed >= duration
        if end or (due and elapsed >= due[0]):
            if not end:
                due.pop(0)
            sent, answered = streams.totals()
            rss = node.rss_kib()
            samples.append(
                {"t_s": round(elapsed, 2), "rss_kib": rss, "sent": sent, "answered": answered}
            )
            with streams.lock:
                lat = [v for c in streams.names for v in streams.latency[c][-2000:]]
            p = percentiles(lat)
            print(
                f"[soak] t={elapsed:7.1f} s  RSS {(rss or 0) / 1024:7.1f} MiB  sent {sent}  "
                f"answered {answered}  p50 {p['p50']:.1f} ms  p99 {p['p99']:.1f} ms (recent)",
                flush=True,
            )
        if end:
            break
        time.sleep(0.05)
    streams.stop()
    # drain: the frames in flight get their answers (stop when none came for 0.5 s, 5 s at most)
    drain_until = time.monotonic() + 5.0
    while time.monotonic() < drain_until and time.monotonic() - streams.last_answer < 0.5:
        time.sleep(0.05)
    return []


def _result(
    streams: CameraStreams,
    samples: list[dict[str, Any]],
    crashes: list[str],
    counters: dict[str, dict[str, int]],
    *,
    warmup_s: float,
    exit_code: int,
    config: dict[str, Any],
) -> dict[str, Any]:
    from seg_perception.stats import percentiles
    from seg_perception.stress.common import format_table

    per_cam: dict[str, dict[str, Any]] = {}
    for c in streams.names:
        sent, answered = streams.sent[c], streams.answered[c]
        per_cam[c] = {
            "sent": sent,
            "answered": answered,
            "drop_ratio": round(1.0 - answered / sent, 4) if sent else 1.0,
            "foreign_answers": streams.foreign[c],
            # sent but never seen by the node (lost in DDS or in its reader queue): not counted
            # by the node's own drop counters
            "lost_before_node": (
                sent - counters[c]["received_during_run"] if c in counters else None
            ),
            "latency_ms": percentiles(streams.latency[c]),
            "node": counters.get(c, {}),
        }
    sent = sum(v["sent"] for v in per_cam.values())
    answered = sum(v["answered"] for v in per_cam.values())
    lat = percentiles([v for c in streams.names for v in streams.latency[c]])
    rss = [s for s in samples if s["rss_kib"]]
    baseline = next((s for s in rss if s["t_s"] >= warmup_s), None)
    growth = None
    if baseline is not None and rss:
        growth = round((rss[-1]["rss_kib"] - baseline["rss_kib"]) / baseline["rss_kib"], 4)
    failed = list(crashes)
    if growth is None:
        failed.append("no RSS sample after the warm-up")
    elif growth > RSS_GROWTH_GOAL:
        failed.append(f"RSS grew {growth:.1%} after the warm-up (goal <= {RSS_GROWTH_GOAL:.0%})")
    if not answered or lat["p99"] > TAIL_RATIO_GOAL * lat["p50"]:
        failed.append(
            f"latency p99 {lat['p99']:.1f} ms > {TAIL_RATIO_GOAL:g} x p50 {lat['p50']:.1f} ms"
        )
    silent = [c for c, v in per_cam.items() if not v["answered"]]
    if silent:
        failed.append(f"camera(s) without answers: {', '.join(silent)}")
    foreign = {c: v["foreign_answers"] for c, v in per_cam.items() if v["foreign_answers"]}
    if foreign:
        failed.append(f"answers with another camera's header: {foreign}")
    rows = [
        (
            c,
            v["sent"],
            v["answered"],
            f"{v['drop_ratio']:.3f}",
            v["latency_ms"]["p50"],
            v["latency_ms"]["p95"],
            v["latency_ms"]["p99"],
            v["node"].get("dropped_stale", "-"),
            "-" if v["lost_before_node"] is None else v["lost_before_node"],
        )
        for c, v in per_cam.items()
    ]
    print(
        format_table(
            (
                "camera",
                "sent",
                "answered",
                "drop",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "node stale",
                "not received",
            ),
            rows,
        )
    )
    print(
        f"[soak] overall drop {1 - answered / sent if sent else 1:.3f}  latency p50/p95/p99 "
        f"{lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms  RSS growth after warm-up "
        + ("n/a" if growth is None else f"{growth:+.2%}"),
        flush=True,
    )
    return {
        "rss_growth_ratio": growth,
        "latency_ms": lat,
        "drop_ratio": round(1.0 - answered / sent, 4) if sent else 1.0,
        "drop_ratio_per_camera": {c: v["drop_ratio"] for c, v in per_cam.items()},
        "rss_samples": samples,
        "rss_baseline": baseline,
        "warmup_s": round(warmup_s, 2),
        "sent": sent,
        "answered": answered,
        "cameras": per_cam,
        "crashes": len(crashes),
        "crash_details": crashes,
        "node_exit_code": exit_code,
        "config": config,
        "failed_goals": failed,
        "goal_met": not failed,
    }
