"""``seg-perception demo``: the package end to end on synthetic street scenes.

1. a synthetic camera bag is generated once and cached;
2. ``seg_node`` starts as its own process, exactly as ``ros2 launch`` would start it;
3. the bag's camera topic is played into it over DDS, paced by default (each frame once the node
   answered the previous one, so a 2-core machine shows panoptic results on every frame);
4. a live evaluation (:func:`seg_perception.eval.live.evaluate_live`) records every output topic
   into an MCAP bag and scores the answered frames against the bag's ground truth (report.md /
   report.html, metrics.json); the demo adds a contact sheet (input | semantic colour | panoptic
   colour | overlay) and prints the headline numbers (mIoU, PQ, FPS, drops).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from seg_perception.cli_paths import ExistingFile, OutputDir
from seg_perception.config import hw_argument

NAMESPACE = "/camera"
SHEET = ("segmentation/semantic_color", "segmentation/panoptic_color", "segmentation/overlay")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=40, help="synthetic frames (default 40)")
    parser.add_argument("--fps", type=float, default=10.0, help="camera rate of the bag (10)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (1.0)")
    parser.add_argument(
        "--no-pace",
        dest="pace",
        action="store_false",
        help="play at the recorded rate even where the node cannot keep up (default: paced, "
        "each frame sent once the node answered the previous one, semantic and panoptic)",
    )
    parser.add_argument(
        "--camera", type=hw_argument, default=(1024, 2048), help="frame HxW (1024x2048)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--config",
        default=None,
        action=ExistingFile,
        help="parameter file (default: shipped seg.yaml)",
    )
    parser.add_argument(
        "--out", default="demo_out", action=OutputDir, help="output folder (default demo_out)"
    )
    parser.add_argument(
        "--cache",
        default=".cache/seg_perception",
        action=OutputDir,
        help="where the synthetic bag is cached",
    )
    parser.add_argument("--startup-timeout", type=float, default=180.0)


def _synthetic_bag(args: argparse.Namespace) -> Path:
    from seg_perception.data.bag_io import write_synth_bag
    from seg_perception.data.synth import generate_frames

    height, width = args.camera
    name = f"synth_s{args.seed}_n{args.frames}_{height}x{width}_{args.fps:g}fps"
    path = Path(args.cache) / name
    if path.exists():
        print(f"[demo] using cached synthetic bag {path}")
        return path
    print(f"[demo] generating {args.frames} synthetic frames -> {path}")
    frames = generate_frames(args.frames, seed=args.seed, height=height, width=width)
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


def _sheet_rows(outputs_bag: Path, camera_topic: str) -> list[list[np.ndarray]]:
    """Up to 4 frames of (camera | semantic colour | panoptic colour | overlay) from the
    recorded outputs, preferring frames that have every image."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from seg_perception.codec import imgmsg_to_array, stamp_ns
    from seg_perception.data.bag_io import read_bag_messages

    ns = camera_topic.rsplit("/", 1)[0]
    wanted = [camera_topic, *(f"{ns}/{t}" for t in SHEET)]
    by_stamp: dict[int, dict[str, np.ndarray]] = {}
    for topic, _, _, raw in read_bag_messages(outputs_bag, topics=wanted):
        msg = deserialize_message(raw, Image)
        by_stamp.setdefault(stamp_ns(msg.header), {})[topic] = imgmsg_to_array(msg)
    answered = sorted(s for s, imgs in by_stamp.items() if len(imgs) > 1)
    complete = [s for s in answered if len(by_stamp[s]) == len(wanted)]
    shown = complete or answered
    if not shown:
        return []
    picks = sorted({shown[int(i)] for i in np.linspace(0, len(shown) - 1, min(4, len(shown)))})
    rows = []
    for s in picks:
        cam = by_stamp[s][camera_topic]
        rows.append([by_stamp[s].get(t, np.full_like(cam, 64)) for t in wanted])
    return rows


def run(args: argparse.Namespace) -> int:
    from seg_perception.atomic import write_text_atomic
    from seg_perception.config import default_config_path, load_config, resolve_path
    from seg_perception.eval.live import evaluate_live
    from seg_perception.ros.bridge import loopback_env

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bag = _synthetic_bag(args)
    config = Path(args.config) if args.config else default_config_path()
    cfg = load_config(config)
    overrides: dict[str, str] = {}
    weights = (cfg.semantic_weights(), cfg.panoptic.weights)
    missing = [w for w in weights if not resolve_path(w).is_file()]
    if missing:
        overrides["allow_random_weights"] = "true"
        print("[demo] " + "!" * 70)
        print(f"[demo] no trained weights at {', '.join(missing)}: RANDOM WEIGHTS,")
        print("[demo] so the segmentation is noise. The data flow, topics and timing are real.")
        print("[demo] " + "!" * 70)
    os.environ.update(loopback_env())
    print(f"[demo] seg_node on {NAMESPACE}, live evaluation of {bag} -> {out_dir}")
    if not missing:
        print(f"[demo] trained weights: {', '.join(str(resolve_path(w)) for w in weights)}")
    if args.pace:
        print(
            "[demo] paced: each frame is sent once seg_node answered the previous one (semantic "
            "and panoptic), so every frame shows both; --no-pace plays at the recorded rate"
        )
    metrics = evaluate_live(
        bag,
        out_dir,
        config_path=config,
        overrides=overrides,
        camera_topic=f"{NAMESPACE}/image",
        rate=args.rate,
        pace=args.pace,
        startup_timeout=args.startup_timeout,
    )
    rt = metrics["realtime"]
    lat = rt.get("latency_ms") or {}
    # paced: the wall time the node took; else the bag's duration at the playback rate
    duration_s = rt["wall_s"] if args.pace else rt["published"] / (args.fps * args.rate)
    summary = {
        "frames_in": rt["published"],
        "frames_out": rt["answered"],
        "frames_dropped": rt["dropped"],
        "panoptic_frames": rt.get("panoptic_answered"),
        "output_fps": rt["answered"] / duration_s if duration_s else None,
        "paced": args.pace,
        "latency_ms": {"p50": lat.get("p50"), "p95": lat.get("p95")},
        "miou": metrics.get("semantic", {}).get("miou"),
        "pq": (metrics.get("panoptic") or {}).get("all", {}).get("pq"),
        "random_weights": bool(missing),
        "bag": str(bag),
        "outputs_bag": str(out_dir / "outputs.mcap"),
        "report": str(out_dir / "report.html"),
    }
    rows = _sheet_rows(out_dir / "outputs.mcap", f"{NAMESPACE}/image")
    if rows:
        _contact_sheet(out_dir / "contact_sheet.png", rows)
        summary["contact_sheet"] = str(out_dir / "contact_sheet.png")
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))

    def pct(v: float | None) -> str:
        return "n/a" if v is None or v != v else f"{100 * v:.1f} %"

    print("[demo] ---------------------------------------------------------------")
    print(
        f"[demo] frames in {summary['frames_in']}, out {summary['frames_out']}, dropped "
        f"{summary['frames_dropped']} (latest-frame policy), panoptic results "
        f"{summary['panoptic_frames']}"
    )
    if lat:
        print(
            f"[demo] end-to-end latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms; "
            f"output {summary['output_fps']:.1f} FPS"
            + (" (paced: what this machine sustains)" if args.pace else "")
        )
    print(
        f"[demo] mIoU {pct(summary['miou'])}, PQ {pct(summary['pq'])} (answered frames vs "
        "the synthetic ground truth)"
    )
    if missing:
        print("[demo] NOTE: random weights (no trained model yet): the scores are meaningless")
    print(
        f"[demo] report: {out_dir / 'report.html'}  outputs: {out_dir / 'outputs.mcap'}  "
        f"contact sheet: {summary.get('contact_sheet')}"
    )
    return 0 if rt["answered"] else 1
