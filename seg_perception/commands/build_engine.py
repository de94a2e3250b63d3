"""``seg-perception build-engine``: the artefact the node's backend runs, built ahead of time.

From the node's configuration (shipped ``config/seg.yaml``, ``--config``, ``--set``) with
``--backend`` / ``--precision`` on top: a strongly typed TensorRT plan (``--backend tensorrt``,
for vehicle provisioning; TensorRT 10.x and 11.x) or the onnxruntime model. Either way the
precision is in the ONNX graph: fp16 from the export's fp16 form, int8 from its Q/DQ form
calibrated on ``--calib`` (symmetric ``s8s8_symmetric`` for TensorRT and the TensorRT EP). It
lands in the engine cache under the key the node looks up (so a node with the same configuration
starts without building), and with ``--out`` is also copied to a file that the node's
``engine_file`` parameter can name. A ready ONNX file given by ``--set engine_file=X.onnx`` is
built as it is (an fp32 one is converted to the precision asked for).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from seg_perception.cli_paths import OutputFile, existing_path_or
from seg_perception.commands.engine_args import add_engine_arguments, spec_from_args
from seg_perception.config import ConfigError
from seg_perception.engines.spec import CALIB_FRAMES, default
from seg_perception.machine import INT8_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser)
    parser.add_argument(
        "--backend",
        default="tensorrt",
        choices=("tensorrt", "onnxruntime"),
        help="tensorrt: a TensorRT plan (GPU); onnxruntime: the ONNX model (int8: QDQ); "
        "default tensorrt",
    )
    parser.add_argument(
        "--precision", default="fp16", choices=("fp32", "fp16", "int8"), help="default fp16"
    )
    parser.add_argument(
        "--calib",
        default=None,
        action=existing_path_or("synthetic"),
        help="int8 calibration images: a folder, a bag (.mcap/.db3/bag folder) or 'synthetic' "
        "(default, the node's own)",
    )
    parser.add_argument("--calib-topic", default=None, help="camera topic of the --calib bag")
    parser.add_argument(
        "--calib-frames",
        type=int,
        default=CALIB_FRAMES,
        help=f"calibration frames (default {CALIB_FRAMES}, as the node)",
    )
    parser.add_argument(
        "--int8-mode",
        default=default("int8_mode"),
        choices=("auto", *INT8_MODES),
        help="int8 quantisation: auto (TensorRT and the TensorRT EP: s8s8_symmetric; the CPU: "
        "follow it), u8s8 (CPUs with VNNI), u8s8_reduce_range (7-bit weights, x86 CPUs without "
        "VNNI) or s8s8_symmetric (TensorRT's symmetric int8); default auto",
    )
    parser.add_argument(
        "--max-batch", type=int, default=None, help="most cameras per call (default: the cameras)"
    )
    parser.add_argument(
        "--workspace-gib",
        type=float,
        default=default("workspace_gib"),
        help="TensorRT builder workspace",
    )
    parser.add_argument(
        "--out", default=None, action=OutputFile, help="also copy the result to this file"
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from seg_perception.atomic import atomic_path
    from seg_perception.engines import factory

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = dict(
        backend=args.backend,
        precision=args.precision,
        calib=None if args.calib in (None, "synthetic") else args.calib,
        calib_topic=args.calib_topic,
        calib_frames=args.calib_frames,
        int8_mode=args.int8_mode,
        workspace_gib=args.workspace_gib,
    )
    if args.max_batch is not None:
        overrides["max_batch"] = args.max_batch
    spec, _note = spec_from_args(args, **overrides)
    if args.backend == "onnxruntime" and args.precision == "fp16" and not factory.tensorrt_ep(spec):
        raise ConfigError(
            "--backend onnxruntime runs fp16 only through the TensorRT execution provider: "
            "list it (--set providers=tensorrt,cuda,cpu) or build fp32 or int8"
        )
    path = factory.prepare(spec)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            shutil.copyfile(path, tmp)
        print(f"{path} -> {out}")
    else:
        print(path)
    return 0
