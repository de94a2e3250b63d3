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

Multi-camera calls on the CPU EP (``threads >= 2``, a batch of ``n >= threads`` images, only
static output shapes) run on ``threads`` concurrent single-thread lanes
(:mod:`~seg_perception.engines.ort_lanes`): 4 cameras take ~5 % less time than 4 single-image
calls on 2 idle cores, up to ~25 % while other processes compete for the cores. The lanes
share a second session of the model with one intra-op thread, opened on the first such call
(or by :meth:`OnnxEngine.warmup` when ``max_batch >= threads``); it holds the weights once more
in memory. The values equal single-image calls. Single images and smaller batches keep the
``threads``-thread session; CUDA / TensorRT EPs always run a batch as one call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg_perception.choices import PRECISIONS
from seg_perception.engines.base import (
    EngineError,
    OutputBuffers,
    TensorSpec,
    WarmupMixin,
    check_images,
)
from seg_perception.engines.ort_lanes import LaneRunner, split_batch
from seg_perception.engines.ort_providers import (
    PROVIDER_ALIASES,
    provider_options,
    resolve_providers,
    session_options,
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
        if precision not in PRECISIONS:
            raise EngineError(f"engine {self.name}: unknown precision {precision!r}")
        if precision == "bf16" or (
            precision == "fp16" and "TensorrtExecutionProvider" not in usable
        ):
            raise EngineError(
                f"engine {self.name}: precision {precision} is not available with onnxruntime "
                f"providers {usable} (fp16 needs the TensorRT EP; bf16 runs with backend torch)"
            )
        self.precision = precision
        so = session_options(ort, threads, graph_optimization)
        self._max_batch_requested = max_batch
        self._lanes: LaneRunner | None = None
        # threads=0: ORT's pool spans the cores; one lane per core this process may use
        lanes = int(threads) if threads > 0 else len(os.sched_getaffinity(0))
        if usable == ["CPUExecutionProvider"] and lanes >= 2:
            lane_so = session_options(ort, 1, graph_optimization)
            self._lanes = LaneRunner(
                lambda: ort.InferenceSession(str(self.path), lane_so, providers=usable), lanes
            )
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

    def _run(self, images: np.ndarray, out: dict[str, np.ndarray], dynamic: list[str]) -> None:
        """One call of the main session: ``images`` -> the arrays in ``out`` (bound in place)
        and ORT-allocated ``dynamic`` outputs (read with ``self._binding.get_outputs()``)."""
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        b.bind_cpu_input(self.input_name, images)
        for spec in self.outputs:
            if spec.name in dynamic:
                b.bind_output(spec.name, "cpu")
            else:
                buf = out[spec.name]
                b.bind_output(spec.name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        self.session.run_with_iobinding(b)

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(
            images, input_hw=self.input_hw, max_batch=self.max_batch, engine=self.name
        )
        n = images.shape[0]
        result: dict[str, np.ndarray] = {}
        dynamic: list[str] = []
        for spec in self.outputs:
            shape = self._static_shape(spec, n)
            if shape is None or spec.dtype not in _ORT_TYPES.values():
                dynamic.append(spec.name)
            else:
                result[spec.name] = self._buffers.get(spec.name, shape, spec.dtype)
        try:
            if self._lanes is not None and n >= self._lanes.lanes and not dynamic:
                chunks, (a, b) = split_batch(n, self._lanes.lanes)
                self._lanes.run(self.input_name, images, result, chunks)
                if b > a:  # the remainder on the multi-thread session, see ort_lanes
                    self._run(images[a:b], {k: v[a:b] for k, v in result.items()}, [])
            else:
                self._run(images, result, dynamic)
        except Exception as exc:
            raise EngineError(
                f"engine {self.name}: onnxruntime failed on a batch of {n}: {exc}"
            ) from None
        if dynamic:
            outs = self._binding.get_outputs()
            values = dict(zip([s.name for s in self.outputs], outs, strict=True))
            for name in dynamic:
                result[name] = self._buffers.store(name, values[name].numpy())
        return {s.name: result[s.name] for s in self.outputs}

    @property
    def lane_session(self) -> Any:
        """The lanes' single-thread session (module docstring); ``None`` until the first batch
        that uses it, and always on GPU providers or with one thread."""
        return None if self._lanes is None else self._lanes.session

    def warmup(self, runs: int = 1) -> None:
        """``runs`` single black frames; where batches of ``max_batch`` take the lanes, also one
        batch of ``threads`` frames: the lane session opens before the first real batch."""
        super().warmup(runs)
        if self._lanes is not None and self.max_batch >= self._lanes.lanes:
            self.infer(np.zeros((self._lanes.lanes, *self.input_hw, 3), dtype=np.uint8))

    def close(self) -> None:
        if self._lanes is not None:
            self._lanes.close()
        self._buffers.clear()
        self._binding = None
        self.session = None
