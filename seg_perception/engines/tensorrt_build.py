"""Building TensorRT engines (``seg-perception build-engine`` and the node, through
:func:`seg_perception.engines.factory.prepare`).

Strongly typed networks, TensorRT 10.x and 11.x alike: ``OnnxParser`` -> a network created with
``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (TensorRT 11 is always strongly typed and keeps
the flag only for compatibility) -> builder config with the workspace, one optimisation profile
for batch ``1..max_batch`` (opt = ``max_batch``: the node hands all its cameras to every call) and
a timing cache kept across builds (per TensorRT version and GPU). There are no precision flags
and no calibrator -- TensorRT 11 removed ``BuilderFlag.FP16/INT8/BF16``, ``int8_calibrator`` and
the ``IInt8Calibrator`` family: every layer runs in the type its ONNX tensors have. The ONNX
graph therefore carries the precision (:func:`~seg_perception.engines.factory.prepare` makes it):

* fp32: the export form;
* fp16: its fp16 form (:mod:`seg_perception.engines.fp16`; input normalisation, the head and
  GUN's sampling grid stay fp32). TF32 is switched off for these engines so that the layers kept
  fp32 really run in fp32 (TF32 has fp16's 10-bit mantissa);
* int8: explicit quantization, the symmetric Q/DQ graph of the onnxruntime quantiser
  (:mod:`seg_perception.engines.quantize`, mode ``s8s8_symmetric``) -- the calibration happened
  when its scales were computed; layers without Q/DQ run in fp32 (TF32 off, as for fp16).

Engines are cached under :class:`~seg_perception.engines.cache.EngineKey`: ONNX content hash
(which covers the fp16 conversion and the int8 scales), TensorRT version, GPU compute capability,
precision and input shape range; a file whose key record or hash does not match -- an engine of
another TensorRT version or GPU among them -- is rebuilt, never deserialised.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from seg_perception.atomic import write_bytes_atomic
from seg_perception.engines.base import EngineError
from seg_perception.engines.cache import record, verify
from seg_perception.engines.tensorrt_backend import (
    Profile,
    cuda_torch,
    engine_key,
    onnx_input,
    profile_shapes,
    require_tensorrt,
    trt_dims,
)

__all__ = ["build_serialized_engine", "load_or_build", "onnx_precision"]

log = logging.getLogger(__name__)


def onnx_precision(path: Path) -> str:
    """The precision the ONNX graph at ``path`` carries (``fp32``, ``fp16`` or ``int8``)."""
    import onnx

    from seg_perception.engines.fp16 import graph_precision

    try:
        return graph_precision(onnx.load(str(path), load_external_data=False))
    except Exception as exc:
        raise EngineError(f"ONNX file {path} cannot be read: {exc}") from None


def build_serialized_engine(
    onnx_path: Path,
    *,
    precision: str,
    profile: Profile,
    input_name: str,
    timing_cache: Path | None = None,
    workspace_bytes: int = 4 << 30,
) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialised engine (raises
    :class:`EngineError`). ``precision`` is what the graph carries: it only decides TF32."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"ONNX file {onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision != "fp32":
        # the layers a reduced-precision graph keeps fp32 (head, sampling grid, stem) must not
        # run in TF32, whose 10-bit mantissa is fp16's
        config.clear_flag(trt.BuilderFlag.TF32)
    opt = builder.create_optimization_profile()
    opt.set_shape(input_name, trt_dims(profile.min), trt_dims(profile.opt), trt_dims(profile.max))
    config.add_optimization_profile(opt)
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"ONNX file {onnx_path}: TensorRT failed to build a {precision} engine")
    if timing_cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def load_or_build(
    onnx_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str],
    precision: str = "fp32",
    max_batch: int = 1,
    device: int = 0,
    workspace_bytes: int = 4 << 30,
) -> Path:
    """The cached engine of the ONNX graph at ``onnx_path``, built (and recorded) if absent or
    not matching. The graph must carry ``precision`` (fp16 types or Q/DQ nodes; see
    :func:`seg_perception.engines.factory.prepare`, which makes such graphs)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineError(f"ONNX file {onnx_path} not found")
    require_tensorrt()
    import tensorrt as trt

    carried = onnx_precision(onnx_path)
    if carried != precision:
        raise EngineError(
            f"ONNX file {onnx_path} carries {carried}, not {precision}: TensorRT engines are "
            f"strongly typed and take the precision from the graph (the {precision} graph comes "
            f"from seg-perception build-engine --precision {precision})"
        )
    torch = cuda_torch()
    input_name, shape = onnx_input(onnx_path)
    profile = profile_shapes(shape, max_batch)
    major, minor = torch.cuda.get_device_capability(device)
    key = engine_key(
        onnx_path,
        precision=precision,
        profile=profile,
        input_name=input_name,
        tensorrt_version=str(trt.__version__),
        compute_capability=f"{major}.{minor}",
    )
    root = Path(cache_dir) / "tensorrt"
    path = root / key.file_name()
    reason = verify(path, key.as_dict())
    if reason is None:
        return path
    log.info("building TensorRT engine: %s", reason)
    with torch.cuda.device(device):
        data = build_serialized_engine(
            onnx_path,
            precision=precision,
            profile=profile,
            input_name=input_name,
            timing_cache=root / f"timing-trt{trt.__version__}-sm{major}{minor}.cache",
            workspace_bytes=workspace_bytes,
        )
    write_bytes_atomic(path, data)
    record(path, key.as_dict())
    return path
