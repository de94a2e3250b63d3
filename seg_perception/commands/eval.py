"""``seg-perception eval``: offline evaluation of a ROS 2 bag or of a Cityscapes-format folder
(see :mod:`seg_perception.eval.evaluate`), optionally with a test-time procedure of the papers
(``--tta``; offline only, the node never runs one)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seg_perception.choices import TTA_MODES
from seg_perception.cli_paths import ExistingBag, ExistingDir, ExistingFile, OutputDir
from seg_perception.config import add_key_value_option, parse_key_values, split_key_values
from seg_perception.errors import SegError


class EvalArgumentError(SegError, ValueError):
    """A combination of eval options that does not go together."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bag", action=ExistingBag, help="ROS 2 bag (directory, .mcap or .db3)")
    source.add_argument(
        "--cityscapes-root",
        action=ExistingDir,
        help="a Cityscapes-format folder: leftImg8bit/SPLIT/<city>/*_leftImg8bit.png with "
        "gtFine/SPLIT/<city>/*_gtFine_labelIds.png and *_instanceIds.png (the official names)",
    )
    parser.add_argument(
        "--split", default="val", help="--cityscapes-root: the split to evaluate (default val)"
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=0,
        help="--cityscapes-root: only the first N frames in name order (default 0 = all)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time procedure of the real-time net: multistep (RelationNet's 4-step shifted "
        "testing, shelfnet only) or multiscale-flip (ShelfNet's scales 0.5-1.75 with flip); "
        "offline only, the node never uses one (default none)",
    )
    parser.add_argument(
        "--camera-topic",
        default=None,
        help="Image or CompressedImage topic (default: the single Image topic not under gt/)",
    )
    parser.add_argument(
        "--gt-semantic-topic", default=None, help="trainId ground truth (default <ns>/gt/semantic)"
    )
    parser.add_argument(
        "--gt-instance-topic",
        default=None,
        help="Cityscapes instanceId ground truth (default <ns>/gt/instance)",
    )
    parser.add_argument(
        "--config", default=None, action=ExistingFile, help="node parameter file (default: shipped)"
    )
    add_key_value_option(
        parser,
        "--set",
        help="override parameters, e.g. --set backend=torch threads=1 (YAML values; repeatable)",
    )
    parser.add_argument("--out", required=True, action=OutputDir, help="output directory")
    parser.add_argument(
        "--cityscapes",
        action="store_true",
        help="also export predictions and ground truth in the Cityscapes layout to OUT/cityscapes "
        "(semantic and instance predictions, COCO-panoptic PNG + JSON of prediction and ground "
        "truth): what the official cityscapesscripts evaluations read",
    )
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="--bag: do not write OUT/outputs.mcap (the camera and every segmentation topic, "
        "1-2 GB per 200 frames at 512x1024): metrics and report only, for sweeps of settings",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--live",
        action="store_true",
        help="evaluate a running seg_node: play the bag into it over DDS, score its outputs and "
        "report frames answered / dropped and end-to-end latency",
    )
    parser.add_argument(
        "--rate", type=float, default=1.0, help="--live: playback speed factor (default 1.0)"
    )
    parser.add_argument(
        "--pace",
        action="store_true",
        help="--live: closed loop: send each frame once the node answered the previous one "
        "(semantic and panoptic), so the bag goes at the rate this machine sustains",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=180.0,
        help="--live: seconds to wait for seg_node to come up (default 180)",
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set`` items -> ``{key: YAML value}``."""
    return parse_key_values(items, "--set")


def run_live(args: argparse.Namespace) -> int:
    from seg_perception.eval.live import evaluate_live

    if args.cityscapes_root is not None or args.tta != "none" or args.cityscapes or args.no_record:
        raise EvalArgumentError(
            "--live evaluates the running node on a bag: it takes --bag, and neither --tta (the "
            "node never runs a test-time procedure) nor --cityscapes nor --no-record (the node's "
            "outputs are what it scores)"
        )

    overrides = split_key_values(args.set, "--set")  # as given: the node takes `-p key:=value`
    try:
        metrics = evaluate_live(
            args.bag,
            args.out,
            config_path=args.config,
            overrides=overrides,
            camera_topic=args.camera_topic,
            gt_semantic_topic=args.gt_semantic_topic,
            gt_instance_topic=args.gt_instance_topic,
            rate=args.rate,
            pace=args.pace,
            startup_timeout=args.startup_timeout,
        )
    except KeyboardInterrupt:
        print("seg-perception eval --live: interrupted", file=sys.stderr)
        return 130
    rt = metrics["realtime"]
    lat = rt["latency_ms"]
    line = (
        f"frames published {rt['published']}, answered {rt['answered']}, "
        f"dropped {rt['dropped']}, mIoU {metrics['semantic']['miou']}"
    )
    if lat:
        line += f", end-to-end latency p50 {lat['p50']:.1f} ms p95 {lat['p95']:.1f} ms"
    print(f"{line}; report: {args.out}/report.html")
    return 0 if rt["answered"] else 1


def run(args: argparse.Namespace) -> int:
    if getattr(args, "live", False):
        return run_live(args)
    from seg_perception.config import load_config
    from seg_perception.eval.evaluate import build_pipeline
    from seg_perception.labels import load_label_table

    cityscapes_dir = Path(args.out) / "cityscapes" if args.cityscapes else None
    if args.no_record and args.bag is None:
        raise EvalArgumentError(
            "--no-record skips the outputs bag of a --bag evaluation; a --cityscapes-root "
            "evaluation writes none"
        )
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
        if args.bag is not None:
            from seg_perception.data.bag_io import bag_topics
            from seg_perception.eval.bag_topics import resolve_topics

            # the cheap checks first: topics before building engines
            resolve_topics(
                args.bag,
                bag_topics(args.bag),
                camera_topic=args.camera_topic,
                gt_semantic_topic=args.gt_semantic_topic,
                gt_instance_topic=args.gt_instance_topic,
                need_instance=cfg.panoptic.enabled,
            )
        else:
            from seg_perception.data.cityscapes import find_cityscapes_frames

            find_cityscapes_frames(  # the folder first, before building engines
                args.cityscapes_root,
                args.split,
                with_instances=cfg.panoptic.enabled,
                strict=True,
            )
        labels = load_label_table(cfg.labels)
        pipeline = build_pipeline(cfg, labels, tta=args.tta)
        if args.bag is not None:
            from seg_perception.eval.evaluate import evaluate_bag

            metrics = evaluate_bag(
                args.bag,
                args.out,
                pipeline,
                camera_topic=args.camera_topic,
                gt_semantic_topic=args.gt_semantic_topic,
                gt_instance_topic=args.gt_instance_topic,
                progress=not args.no_progress,
                cityscapes_dir=cityscapes_dir,
                record=not args.no_record,
            )
        else:
            from seg_perception.eval.evaluate import evaluate_cityscapes

            metrics = evaluate_cityscapes(
                args.cityscapes_root,
                args.split,
                args.out,
                pipeline,
                max_frames=args.max_frames,
                progress=not args.no_progress,
                cityscapes_dir=cityscapes_dir,
            )
    except KeyboardInterrupt:
        print(f"seg-perception eval: interrupted; partial report in {args.out}", file=sys.stderr)
        return 130
    sem = metrics["semantic"]
    line = f"frames {metrics['frames']['processed']}, mIoU {sem['miou']}"
    if "instance_iou" in metrics:
        line += f", iIoU {metrics['instance_iou']['iiou']}"
    if "panoptic" in metrics:
        line += f", PQ {metrics['panoptic']['all']['pq']}"
    if "mask_ap" in metrics:
        line += f", mask AP {metrics['mask_ap']['ap']}"
    print(f"{line}; report: {args.out}/report.html")
    return 0
