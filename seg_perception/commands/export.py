"""``seg-perception export``: a network's export form as ONNX, the very file the node runs.

The export is the node's own (same cache key, same metadata), then copied to ``--out``; an
engine built later from the configuration (``build-engine``) is found by the node.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from seg_perception.cli_paths import OutputFile
from seg_perception.commands.engine_args import add_engine_arguments, spec_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser)
    parser.add_argument("--out", required=True, action=OutputFile, help="ONNX file to write")


def run(args: argparse.Namespace) -> int:
    import logging

    from seg_perception.atomic import atomic_path
    from seg_perception.engines import factory

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec, note = spec_from_args(args, backend="onnxruntime")
    path = factory.export(spec)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        shutil.copyfile(path, tmp)
    h, w = spec.input_hw
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {spec.model}, {note}, input 'image' "
        f"uint8 (N, {h}, {w}, 3), outputs {', '.join(spec.outputs)}"
    )
    return 0
