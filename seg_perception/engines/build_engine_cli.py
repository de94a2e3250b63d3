"""Building engines, and ``seg-perception build-engine`` on top of it.

``seg-perception build-engine --model X.onnx [--precision fp16|int8 --calib PATH]`` builds (or
finds in the cache) the TensorRT engine of an ONNX export without running it, and prints its path.
``--backend onnxruntime --precision int8`` writes the QDQ int8 model for onnxruntime instead.

TensorRT build (TensorRT 10 API): ``OnnxParser`` -> network -> builder config with fp32 / fp16 /
int8, one optimisation profile for batch ``1..max_batch`` (opt = ``max_batch``: the node hands all
its cameras to every call), a timing cache kept across builds (per TensorRT version and GPU), and
for int8 either the Q/DQ scales of an explicitly quantised model or entropy calibration
(``IInt8EntropyCalibrator2``) on images from a folder, a bag's camera topic or the synthetic
generator, with a calibration cache. Engines are cached under
:class:`~seg_perception.engines.cache.EngineKey`: ONNX content hash, TensorRT version, GPU compute
capability, precision, input shape range and calibration data hash; a file whose key record or
hash does not match is rebuilt, never deserialised.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seg_perception.atomic import write_bytes_atomic
from seg_perception.cli_paths import ExistingFile, OutputDir, OutputFile, existing_path_or
from seg_perception.engines.base import EngineError
from seg_perception.engines.cache import default_cache_dir, record, verify
from seg_perception.engines.calibration import (
    CalibrationError,
    batches_sha256,
    calibration_batches,
)
from seg_perception.engines.tensorrt_backend import (
    Profile,
    cuda_torch,
    engine_key,
    is_qdq_model,
    onnx_input,
    profile_shapes,
    require_tensorrt,
    trt_dims,
)
from seg_perception.machine import INT8_MODES

if TYPE_CHECKING:
    import tensorrt as trt
    from typing_extensions import Buffer

__all__ = ["add_arguments", "build_serialized_engine", "load_or_build", "run"]

log = logging.getLogger(__name__)

CALIB_BATCH = 8


def _make_calibrator(
    batches: list[np.ndarray], cache_path: Path, device: int
) -> trt.IInt8EntropyCalibrator2:
    require_tensorrt()
    import tensorrt as trt

    torch = cuda_torch()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds uint8 NHWC batches from device memory; caches the scales in ``cache_path``."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.device_batch = torch.empty(
                batches[0].shape, dtype=torch.uint8, device=f"cuda:{device}"
            )

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        # The stubs type get_batch as never returning None, but None is TensorRT's documented
        # "no more batches" answer (IInt8Calibrator docs and samples).
        def get_batch(self, names: list[str]) -> list[int] | None:  # type: ignore[override]
            if self.index >= len(batches):
                return None
            self.device_batch.copy_(torch.from_numpy(batches[self.index]))
            self.index += 1
            return [int(self.device_batch.data_ptr())] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Buffer) -> None:
            write_bytes_atomic(cache_path, bytes(cache))

    return EntropyCalibrator()


def build_serialized_engine(
    onnx_path: Path,
    *,
    precision: str,
    profile: Profile,
    input_name: str,
    calib_batches: list[np.ndarray] | None = None,
    calib_cache: Path | None = None,
    timing_cache: Path | None = None,
    workspace_bytes: int = 4 << 30,
    device: int = 0,
) -> bytes:
    """Parse ``onnx_path`` and build a serialised engine (raises :class:`EngineError`)."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"ONNX file {onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    calibrator = None  # referenced here until the build ends (the config does not own it)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    opt = builder.create_optimization_profile()
    opt.set_shape(input_name, trt_dims(profile.min), trt_dims(profile.opt), trt_dims(profile.max))
    config.add_optimization_profile(opt)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels use fp16
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if calib_batches:  # implicit quantisation; a QDQ model carries its own scales
            if calib_cache is None:
                raise EngineError("int8 calibration needs a calibration cache path")
            shape = calib_batches[0].shape
            calib_profile = builder.create_optimization_profile()
            calib_profile.set_shape(input_name, trt_dims(shape), trt_dims(shape), trt_dims(shape))
            config.set_calibration_profile(calib_profile)
            calibrator = _make_calibrator(calib_batches, calib_cache, device)
            config.int8_calibrator = calibrator
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    del calibrator
    if serialized is None:
        raise EngineError(f"ONNX file {onnx_path}: TensorRT failed to build a {precision} engine")
    if timing_cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def load_or_build(
    onnx_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str],
    precision: str = "fp16",
    max_batch: int = 1,
    calib_images: Sequence[np.ndarray] | None = None,
    device: int = 0,
    workspace_bytes: int = 4 << 30,
) -> Path:
    """The cached engine for these inputs, built (and recorded) if absent or not matching."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineError(f"ONNX file {onnx_path} not found")
    require_tensorrt()
    import tensorrt as trt

    torch = cuda_torch()
    input_name, shape = onnx_input(onnx_path)
    profile = profile_shapes(shape, max_batch)
    batches: list[np.ndarray] | None = None
    calib_hash = ""
    if precision == "int8" and not is_qdq_model(onnx_path):
        if not calib_images:
            raise EngineError(
                f"ONNX file {onnx_path}: int8 needs calibration images (--calib) or a QDQ model"
            )
        hw = (profile.opt[1], profile.opt[2])
        batch = min(CALIB_BATCH, profile.max[0], len(calib_images))
        batches = calibration_batches(calib_images, batch_size=batch, input_hw=hw)
        calib_hash = batches_sha256(batches)
    major, minor = torch.cuda.get_device_capability(device)
    key = engine_key(
        onnx_path,
        precision=precision,
        profile=profile,
        input_name=input_name,
        tensorrt_version=str(trt.__version__),
        compute_capability=f"{major}.{minor}",
        calib_sha256=calib_hash,
    )
    root = Path(cache_dir) / "tensorrt"
    path = root / key.file_name()
    reason = verify(path, key.as_dict())
    if reason is None:
        return path
    log.info("building TensorRT engine: %s", reason)
    data = build_serialized_engine(
        onnx_path,
        precision=precision,
        profile=profile,
        input_name=input_name,
        calib_batches=batches,
        calib_cache=root / f"calib-{key.onnx_sha256[:16]}-{calib_hash[:16]}.cache",
        timing_cache=root / f"timing-trt{trt.__version__}-sm{major}{minor}.cache",
        workspace_bytes=workspace_bytes,
        device=device,
    )
    write_bytes_atomic(path, data)
    record(path, key.as_dict())
    return path


# ------------------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, action=ExistingFile, help="ONNX export (.onnx) to build from"
    )
    parser.add_argument(
        "--precision", default="fp16", choices=("fp32", "fp16", "int8"), help="default fp16"
    )
    parser.add_argument(
        "--backend",
        default="tensorrt",
        choices=("tensorrt", "onnxruntime"),
        help="tensorrt: build a TensorRT engine (GPU); onnxruntime: write the int8 QDQ model",
    )
    parser.add_argument(
        "--calib",
        default=None,
        action=existing_path_or("synthetic"),
        help="int8 calibration images: a folder, a bag (.mcap/.db3/bag folder) or 'synthetic'",
    )
    parser.add_argument("--calib-topic", default=None, help="camera topic of the --calib bag")
    parser.add_argument(
        "--int8-mode",
        default="auto",
        choices=("auto", *INT8_MODES),
        help="onnxruntime int8: auto (follow this CPU), u8s8 (CPUs with VNNI) or "
        "u8s8_reduce_range (7-bit weights, for x86 CPUs without VNNI); default auto",
    )
    parser.add_argument("--calib-count", type=int, default=64, help="calibration images (64)")
    parser.add_argument(
        "--max-batch", type=int, default=1, help="most cameras per call (profile 1..N)"
    )
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace")
    parser.add_argument(
        "--cache-dir",
        default=None,
        action=OutputDir,
        help=f"engine cache (default {default_cache_dir()})",
    )
    parser.add_argument(
        "--output", default=None, action=OutputFile, help="also copy the result to this path"
    )


def _build(args: argparse.Namespace) -> Path:
    from seg_perception.engines.calibration import calibration_images

    onnx_path = Path(args.model)
    if not onnx_path.is_file():
        raise EngineError(f"ONNX file {onnx_path} not found")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    _, shape = onnx_input(onnx_path)
    hw = (int(shape[1]), int(shape[2])) if len(shape) == 4 else (0, 0)
    need_calib = args.precision == "int8" and not is_qdq_model(onnx_path)
    images = (
        calibration_images(args.calib, input_hw=hw, count=args.calib_count, topic=args.calib_topic)
        if need_calib
        else None
    )
    if args.backend == "onnxruntime":
        if args.precision != "int8":
            raise EngineError(
                f"--backend onnxruntime builds int8 models only; {args.precision} runs the ONNX "
                f"file {onnx_path} as it is"
            )
        if images is None:
            return onnx_path  # already a QDQ model
        from seg_perception.engines.factory import ensure_int8_onnx

        return ensure_int8_onnx(onnx_path, cache_dir=cache, images=images, mode=args.int8_mode)
    return load_or_build(
        onnx_path,
        cache_dir=cache,
        precision=args.precision,
        max_batch=args.max_batch,
        calib_images=images,
        device=args.device,
        workspace_bytes=int(args.workspace_gib * (1 << 30)),
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = _build(args)
    except (EngineError, CalibrationError) as exc:
        print(f"seg-perception build-engine: error: {exc}", file=sys.stderr)
        return 2
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
        print(f"{path} -> {out}")
    else:
        print(path)
    return 0
