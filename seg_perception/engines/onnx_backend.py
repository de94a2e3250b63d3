"""ONNX Runtime backend: an exported ONNX artefact run through the configured providers.

Providers are tried in the configured order (short names ``tensorrt``, ``cuda``, ``cpu`` or ORT's
full names): the TensorRT EP gets fp16/int8, its engine cache and timing cache under the cache dir
and an optimisation profile for batch ``1..max_batch``; the CUDA EP its device; the CPU EP the
intra-op thread count. A provider this onnxruntime build lacks is skipped with a warning (and
listed in :attr:`OnnxEngine.skipped_providers`); an unknown name is an error.

I/O binding: the input is bound from host memory and every output with a static shape (given the
batch) is bound to a preallocated host array that the next call reuses, so ORT writes the result
straight into it; outputs with data-dependent shapes (the panoptic model's ``K``) are bound to
ORT-allocated memory and copied once. Both work for the CPU, CUDA and TensorRT EPs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg_perception.engines.base import (
    EngineError,
    OutputBuffers,
    TensorSpec,
    WarmupMixin,
    check_images,
)

__all__ = [
    "GRAPH_OPTIMIZATION_LEVELS",
    "METADATA_PREFIX",
    "PROVIDER_ALIASES",
    "OnnxEngine",
    "artefact_num_classes",
    "provider_options",
    "read_metadata",
    "resolve_providers",
    "write_metadata",
]

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
METADATA_PREFIX = "seg_perception."
_ORT_TYPES = {
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bool)": "bool",
}


# ---------------------------------------------------------------------------------- pure helpers
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
    """ORT provider options for ``provider`` (all values strings, as ORT takes them)."""
    if provider == "TensorrtExecutionProvider":
        opts = {
            "device_id": str(device_id),
            "trt_fp16_enable": str(precision == "fp16"),
            # int8 artefacts are QDQ models (explicit quantisation): TensorRT takes the scales
            # from the Q/DQ nodes, no calibration table is needed.
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


def write_metadata(model: Any, values: Mapping[str, object]) -> None:
    """Set ``seg_perception.*`` metadata properties on an ``onnx.ModelProto`` (in place)."""
    keep = [p for p in model.metadata_props if p.key not in {METADATA_PREFIX + k for k in values}]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in values.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = METADATA_PREFIX + k, str(v)


def read_metadata(custom: Mapping[str, str]) -> dict[str, str]:
    n = len(METADATA_PREFIX)
    return {k[n:]: v for k, v in custom.items() if k.startswith(METADATA_PREFIX)}


def artefact_num_classes(path: str | os.PathLike[str]) -> int | None:
    """Class count of an ONNX export without our metadata: the channel dimension feeding the
    graph's ``ArgMax`` over axis 1 (the class axis of ``(N, K, h, w)`` logits), from ONNX shape
    inference. ``None`` if the graph has no such ArgMax or its width is not static."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes: dict[str, list[int | None]] = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for node in model.graph.node:
        if node.op_type != "ArgMax":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        shape = shapes.get(node.input[0])
        if shape and len(shape) == 4 and axis in (1, -3) and shape[1]:
            return int(shape[1])
    return None


# ---------------------------------------------------------------------------------- engine
class OnnxEngine(WarmupMixin):
    """Engine over an ONNX export form (uint8 NHWC ``image`` in, named outputs out).

    Args:
        path: the ``.onnx`` artefact.
        providers: provider names in order of preference.
        threads: intra-op threads (0 = onnxruntime default).
        graph_optimization: one of :data:`GRAPH_OPTIMIZATION_LEVELS`.
        precision: ``fp32``; ``int8`` (a QDQ model, see ``quantize.py``); ``fp16`` only through
            the TensorRT EP.
        num_classes: classes of the label table; checked against the artefact.
        input_hw: expected network input ``(H, W)``; checked against the artefact.
        max_batch: the most images one call takes (capped by a static batch dimension).
        expected_outputs: output names the artefact must have.
        cache_dir: where the TensorRT EP keeps its engine and timing caches.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] = ("cpu",),
        threads: int = 0,
        graph_optimization: str = "all",
        precision: str = "fp32",
        num_classes: int | None = None,
        input_hw: tuple[int, int] | None = None,
        max_batch: int = 16,
        expected_outputs: Sequence[str] = (),
        cache_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.name = name or f"onnxruntime:{self.path.name}"
        if not self.path.is_file():
            raise EngineError(f"ONNX file {self.path} not found")
        if graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise EngineError(
                f"graph optimisation level {graph_optimization!r}; valid: "
                f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        usable, self.skipped_providers = resolve_providers(
            providers, ort.get_available_providers(), ort.get_all_providers()
        )
        for p in self.skipped_providers:
            log.warning("onnxruntime provider %s is not available in this build; skipped", p)
        if not usable:
            raise EngineError(
                f"none of the onnxruntime providers {list(providers)} is available here; "
                f"available: {', '.join(ort.get_available_providers())}"
            )
        if precision not in ("fp32", "bf16", "fp16", "int8"):
            raise EngineError(f"engine {self.name}: unknown precision {precision!r}")
        if precision == "bf16" or (
            precision == "fp16" and "TensorrtExecutionProvider" not in usable
        ):
            raise EngineError(
                f"engine {self.name}: precision {precision} is not available with onnxruntime "
                f"providers {usable} (fp16 needs the TensorRT EP; bf16 runs with backend torch)"
            )
        self.precision = precision
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
        # Idle intra-op threads must not spin: the node runs two sessions (real-time net and
        # the asynchronous ASP model) on the same cores, and a spinning idle pool starves the
        # busy one.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._max_batch_requested = max_batch
        try:
            self.session = self._open(ort, so, usable, cache_dir)
        except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile, ...
            raise EngineError(
                f"ONNX file {self.path} cannot be loaded by onnxruntime: "
                f"{type(exc).__name__}: {str(exc).strip()[:500]}"
            ) from None
        self.providers: list[str] = self.session.get_providers()
        meta = read_metadata(self.session.get_modelmeta().custom_metadata_map)
        self._check(meta, input_hw, num_classes, expected_outputs)

    def _open(
        self,
        ort: Any,
        so: Any,
        usable: list[str],
        cache_dir: str | os.PathLike[str] | None,
    ) -> Any:
        if usable == ["CPUExecutionProvider"]:
            return ort.InferenceSession(str(self.path), sess_options=so, providers=usable)
        # GPU providers: the TensorRT EP's optimisation profile needs the input's name and shape.
        import onnx

        graph_input = onnx.load(str(self.path), load_external_data=False).graph.input[0]
        dims = graph_input.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
        cache = Path(cache_dir) if cache_dir is not None else None
        opts = [
            provider_options(
                p,
                precision=self.precision,
                cache_dir=cache,
                input_name=graph_input.name,
                input_shape=shape,
                max_batch=self._max_batch_requested,
            )
            for p in usable
        ]
        return ort.InferenceSession(
            str(self.path), sess_options=so, providers=usable, provider_options=opts
        )

    def _check(
        self,
        meta: dict[str, str],
        input_hw: tuple[int, int] | None,
        num_classes: int | None,
        expected_outputs: Sequence[str],
    ) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EngineError(
                f"ONNX file {self.path}: expected one input 'image', got {[i.name for i in inputs]}"
            )
        inp = inputs[0]
        shape = list(inp.shape)
        ok = (
            inp.type == "tensor(uint8)"
            and len(shape) == 4
            and shape[3] == 3
            and all(isinstance(d, int) for d in shape[1:3])
        )
        if not ok:
            raise EngineError(
                f"ONNX file {self.path}: input {inp.name!r} must be uint8 (N, H, W, 3) with a "
                f"static H and W, got {inp.type} {shape}"
            )
        self.input_name = inp.name
        self.input_hw = (int(shape[1]), int(shape[2]))
        if input_hw is not None and tuple(input_hw) != self.input_hw:
            raise EngineError(
                f"ONNX file {self.path}: input size {self.input_hw[0]}x{self.input_hw[1]} "
                f"differs from the configured {input_hw[0]}x{input_hw[1]}; re-export it"
            )
        static_batch = shape[0] if isinstance(shape[0], int) else None
        self.max_batch = static_batch or max(1, self._max_batch_requested)
        k = int(meta["num_classes"]) if "num_classes" in meta else artefact_num_classes(self.path)
        if num_classes is not None and k is not None and k != num_classes:
            raise EngineError(
                f"ONNX file {self.path}: the model predicts {k} classes but the label table has "
                f"{num_classes}"
            )
        self.num_classes = int(num_classes if num_classes is not None else (k or 0))
        self.metadata = meta
        outs = self.session.get_outputs()
        missing = [n for n in expected_outputs if n not in {o.name for o in outs}]
        if missing:
            raise EngineError(
                f"ONNX file {self.path}: missing output(s) {missing}; it has "
                f"{[o.name for o in outs]}"
            )
        batch_sym = shape[0]
        self.inputs = (
            TensorSpec(inp.name, tuple(d if d is not None else "?" for d in shape), "uint8"),
        )
        self.outputs = tuple(
            TensorSpec(
                o.name,
                tuple(d if d is not None else "?" for d in o.shape),
                _ORT_TYPES.get(o.type, o.type),
            )
            for o in outs
        )
        self._batch_symbol = batch_sym
        self._binding = self.session.io_binding()
        self._buffers = OutputBuffers()

    def _static_shape(self, spec: TensorSpec, n: int) -> tuple[int, ...] | None:
        dims: list[int] = []
        for i, d in enumerate(spec.shape):
            if isinstance(d, int):
                dims.append(d)
            elif i == 0 and d == self._batch_symbol:
                dims.append(n)
            else:
                return None
        return tuple(dims)

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(
            images, input_hw=self.input_hw, max_batch=self.max_batch, engine=self.name
        )
        n = images.shape[0]
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        b.bind_cpu_input(self.input_name, images)
        result: dict[str, np.ndarray] = {}
        dynamic: list[str] = []
        for spec in self.outputs:
            shape = self._static_shape(spec, n)
            if shape is None or spec.dtype not in _ORT_TYPES.values():
                b.bind_output(spec.name, "cpu")
                dynamic.append(spec.name)
                continue
            buf = self._buffers.get(spec.name, shape, spec.dtype)
            b.bind_output(spec.name, "cpu", 0, buf.dtype, list(shape), buf.ctypes.data)
            result[spec.name] = buf
        try:
            self.session.run_with_iobinding(b)
        except Exception as exc:
            raise EngineError(
                f"engine {self.name}: onnxruntime failed on a batch of {n}: {exc}"
            ) from None
        if dynamic:
            values = dict(zip([s.name for s in self.outputs], b.get_outputs(), strict=True))
            for name in dynamic:
                result[name] = self._buffers.store(name, values[name].numpy())
        return {s.name: result[s.name] for s in self.outputs}

    def close(self) -> None:
        self._buffers.clear()
        self._binding = None
        self.session = None
