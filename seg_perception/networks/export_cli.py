"""``seg-perception export``: a network's export form as ONNX (opset >= 17)."""

from __future__ import annotations

import argparse
from pathlib import Path

from seg_perception.cli_paths import ExistingFile, OutputFile
from seg_perception.config import add_key_value_option, parse_key_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="gun | shelfnet | panoptic_asp")
    parser.add_argument("--weights", action=ExistingFile, help="weights file (.safetensors / .pt)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="export seeded random weights (no --weights; for tests and timing)",
    )
    parser.add_argument("--out", required=True, action=OutputFile, help="ONNX file to write")
    parser.add_argument("--input", default="512x1024", help="input HxW (default 512x1024)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--layout",
        choices=("nhwc", "nchw"),
        default="nhwc",
        help="uint8 image layout of the graph input (semantic nets)",
    )
    add_key_value_option(
        parser, "--switch", help="builder switches, e.g. --switch backbone=resnet50 width=0.5"
    )


def parse_switches(items: list[str]) -> dict[str, object]:
    return parse_key_values(items, "--switch")


def run(args: argparse.Namespace) -> int:
    import torch

    from seg_perception.config import parse_hw
    from seg_perception.networks import build_model
    from seg_perception.networks.export import export_onnx

    if args.opset < 17:
        raise ValueError(f"--opset must be >= 17, got {args.opset}")
    if not args.weights and not args.random_weights:
        raise ValueError("give --weights FILE (or --random-weights for an untrained graph)")
    if args.weights and not Path(args.weights).is_file():
        raise FileNotFoundError(f"--weights: file not found: {args.weights}")
    h, w = parse_hw(args.input)
    switches = parse_switches(args.switch)
    torch.manual_seed(0)
    # with --weights the file's stored switches (a CPU-sized net) build the net it was trained as
    weights = {"weights": args.weights} if args.weights else {}
    if args.model == "panoptic_asp":
        from seg_perception.networks.panoptic_export import export_panoptic_onnx

        model = build_model(
            args.model, min_size=min(h, w), max_size=max(h, w), **weights, **switches
        )
        path = export_panoptic_onnx(model.eval(), args.out, input_hw=(h, w), opset=args.opset)
    else:
        model = build_model(args.model, **weights, **switches)
        path = export_onnx(
            model.eval(), args.out, input_hw=(h, w), opset=args.opset, layout=args.layout
        )
    print(
        f"wrote {path} ({Path(path).stat().st_size / 1e6:.1f} MB), input 'image' uint8 "
        f"{h}x{w}, model {args.model}"
    )
    return 0
