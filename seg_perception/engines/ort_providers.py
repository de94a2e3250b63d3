"""ONNX Runtime session configuration: provider names, provider options, session options.

Pure helpers of :mod:`~seg_perception.engines.onnx_backend` (which re-exports them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seg_perception.engines.base import EngineError

__all__ = ["PROVIDER_ALIASES", "provider_options", "resolve_providers", "session_options"]

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def resolve_providers(
    requested: Sequence[str], available: Sequence[str], known: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Map configured provider names to ORT names, in order, without duplicates.

    Returns ``(usable, skipped)``: ``skipped`` are known providers this build lacks. An unknown
    name raises :class:`EngineError` listing the valid ones.
    """
    usable: list[str] = []
    skipped: list[str] = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in known:
            raise EngineError(
                f"unknown onnxruntime provider {name!r}; valid: {', '.join(PROVIDER_ALIASES)} "
                f"or a full name such as {', '.join(PROVIDER_ALIASES.values())}"
            )
        target = usable if full in available else skipped
        if full not in usable and full not in skipped:
            target.append(full)
    return usable, skipped


def _shape_text(name: str, shape: Sequence[int]) -> str:
    return f"{name}:{'x'.join(str(int(d)) for d in shape)}"


def provider_options(
    provider: str,
    *,
    precision: str,
    cache_dir: Path | None,
    input_name: str,
    input_shape: Sequence[int | str],
    max_batch: int,
    device_id: int = 0,
) -> dict[str, str]:
    """ORT provider options for ``provider`` (all values strings, as ORT takes them).

    ``precision``: what the model carries -- the TensorRT EP gets the same graphs as the
    TensorRT backend (:func:`seg_perception.engines.factory.prepare`): an fp16 graph whose
    numerically sensitive layers are fp32, or a symmetric int8 Q/DQ graph whose scales come from
    the calibration (explicit quantization: no calibration table option).
    ``trt_fp16_enable`` / ``trt_int8_enable`` follow that precision, and only that: the
    onnxruntime TensorRT EP of TensorRT 10 builds weakly typed networks, where these builder flags
    are what permits fp16 kernels for the graph's fp16 layers and int8 Q/DQ layers at all
    (TensorRT refuses Q/DQ layers in a weakly typed network without its INT8 flag; the EP has no
    option for strongly typed networks); with TensorRT 11, which removed the flags and is always
    strongly typed, onnxruntime guards those calls and the graph's types decide. An fp32 model
    gets neither flag, so the EP never lowers a precision the graph does not carry.
    """
    if provider == "TensorrtExecutionProvider":
        opts = {
            "device_id": str(device_id),
            "trt_fp16_enable": str(precision == "fp16"),
            "trt_int8_enable": str(precision == "int8"),
        }
        if cache_dir is not None:
            trt_dir = str(cache_dir / "ort_tensorrt")
            opts.update(
                {
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": trt_dir,
                    "trt_timing_cache_enable": "True",
                    "trt_timing_cache_path": trt_dir,
                }
            )
        if not isinstance(input_shape[0], int):  # dynamic batch: profile 1..max_batch
            rest = [int(d) for d in input_shape[1:]]
            opts["trt_profile_min_shapes"] = _shape_text(input_name, [1, *rest])
            opts["trt_profile_opt_shapes"] = _shape_text(input_name, [max_batch, *rest])
            opts["trt_profile_max_shapes"] = _shape_text(input_name, [max_batch, *rest])
        return opts
    if provider == "CUDAExecutionProvider":
        return {"device_id": str(device_id)}
    return {}


def session_options(ort: Any, threads: int, graph_optimization: str) -> Any:
    """CPU-side session options: ``threads`` intra-op threads (0 = ORT's default), one
    inter-op thread, sequential execution, the graph optimisation level, quiet logs."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(int(threads), 0)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    so.log_severity_level = 3
    # Idle intra-op threads must not spin: the node runs two sessions (real-time net and the
    # asynchronous ASP model) on the same cores, and a spinning idle pool starves the busy one.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so
