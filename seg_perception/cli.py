"""``seg-perception <command>``: the package's command line.

Each command lives in its own module and exposes ``add_arguments(parser)`` and ``run(args)``;
this file only lists them. Command modules keep heavy imports (torch, rclpy) inside ``run`` so
that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from seg_perception.errors import SegError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "seg_perception.commands.demo",
        "synthetic bag -> seg_node -> recorded outputs + contact sheet",
    ),
    "synth": (
        "seg_perception.commands.synth",
        "generate synthetic street scenes (bag or Cityscapes)",
    ),
    "bench": (
        "seg_perception.commands.bench",
        "benchmarks that print tables (node, fusion, engines, train)",
    ),
    "build-engine": (
        "seg_perception.commands.build_engine",
        "build the node's TensorRT engine (or int8 ONNX model) ahead of time, for provisioning",
    ),
    "eval": (
        "seg_perception.commands.eval",
        "offline evaluation of a ROS 2 bag or a Cityscapes folder: metrics, report, exports",
    ),
    "export": ("seg_perception.commands.export", "export a network to ONNX, as the node runs it"),
    "models": ("seg_perception.commands.models", "list the networks: switches, parameters, GFLOPs"),
    "train": (
        "seg_perception.commands.train",
        "train a network from a recipe (config/train/*.yaml)",
    ),
    "play": (
        "seg_perception.commands.play",
        "publish a bag's messages over DDS at the recorded timing",
    ),
    "info": (
        "seg_perception.commands.info",
        "this machine (CPU features, CUDA), versions, ROS/DDS setup and the choices made here",
    ),
    "params": (
        "seg_perception.commands.params",
        "list the node parameters with defaults and descriptions",
    ),
    "fuzz": (
        "seg_perception.commands.fuzz",
        "malformed and good frames into a seg_node subprocess: crashes, answers, counted drops",
    ),
    "soak": (
        "seg_perception.commands.soak",
        "synthetic camera streams into seg_node for minutes: RSS growth, latency, drops",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seg-perception",
        description="Semantic and panoptic segmentation for ROS 2: tools around seg_node.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # expected failures: the message and exit 2; anything else is a bug and keeps its traceback
    # (ValueError stays here while library code still raises it for bad user input)
    except (SegError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError) as exc:
        print(f"seg-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
