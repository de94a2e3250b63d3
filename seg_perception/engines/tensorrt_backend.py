"""TensorRT backend (TensorRT 10.x and 11.x API): run cached engines; the shared pure parts.

* Run: name-based I/O tensors (``set_input_shape`` / ``set_tensor_address``) and
  ``execute_async_v3`` on a CUDA stream with device buffers; data-dependent output shapes (the
  panoptic model's ``K``) go through an ``IOutputAllocator``. Host outputs are pinned buffers
  reused by the next call.
* Pure parts, tested on any machine: :func:`profile_shapes` (optimisation profile for batch
  ``1..max_batch``), :func:`io_tensors` / :func:`check_io` (name-based I/O mapping),
  :func:`engine_key` (the engine cache key).
* Building engines (ONNX parser, strongly typed networks from fp16 / Q/DQ graphs, timing cache,
  engine cache) is in :mod:`seg_perception.engines.tensorrt_build`, used by ``build-engine``.

CUDA memory and streams come from ``torch.cuda`` rather than ``cuda-python`` (``cuda.bindings``):
torch is already a hard dependency and brings the CUDA runtime, its caching allocator serves the
device buffers (shared with the torch backend and the trainer in the same process instead of a
second allocator competing for memory), ``torch.cuda.Stream.cuda_stream`` is the handle
``execute_async_v3`` takes, and pinned host tensors give asynchronous copies. ``cuda.bindings``
would add a second CUDA API with raw error tuples to check at every call and no type information.

This module imports neither ``tensorrt`` nor ``torch`` at import time. It is type-checked with
mypy against ``tensorrt-stubs`` (``test/test_tensorrt_pure.py``), and every TensorRT name it and
the builder use is checked against the real Python API of TensorRT 10.0 to 11.4
(``test/test_tensorrt_api.py``, name lists in ``test/data/tensorrt_api/``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from seg_perception.engines.base import (
    EngineError,
    OutputBuffers,
    TensorSpec,
    WarmupMixin,
    check_images,
)
from seg_perception.engines.cache import EngineKey, sha256_file

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = [
    "TRT_DTYPES",
    "IOTensor",
    "Profile",
    "TensorRTEngine",
    "check_io",
    "cuda_torch",
    "engine_key",
    "io_tensors",
    "onnx_input",
    "profile_shapes",
    "require_tensorrt",
    "tensorrt_available",
    "trt_dims",
]

log = logging.getLogger(__name__)

#: TensorRT ``DataType`` name -> NumPy dtype name (the types an export form uses).
TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


# ------------------------------------------------------------------------------ pure parts
@dataclass(frozen=True)
class Profile:
    """Optimisation-profile shapes of the input tensor."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profile_shapes(
    input_shape: Sequence[int | str | None], max_batch: int, opt_batch: int | None = None
) -> Profile:
    """Profile for an NHWC input ``(batch, H, W, 3)`` whose H, W, C are static.

    A dynamic batch (``-1``, a symbol or ``None``) gets ``1..max_batch`` with ``opt = opt_batch``
    (default ``max_batch``); a static batch ``b`` gets ``b`` for all three.
    """
    dims = list(input_shape)
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise EngineError(
            f"TensorRT profile: input must be (batch, H, W, C) with static H, W, C; got {dims}"
        )
    rest = tuple(int(d) for d in dims[1:])  # type: ignore[arg-type]  # checked above
    b = dims[0]
    if isinstance(b, int) and b > 0:
        return Profile((b, *rest), (b, *rest), (b, *rest))
    if max_batch < 1:
        raise EngineError(f"TensorRT profile: max_batch must be >= 1, got {max_batch}")
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise EngineError(f"TensorRT profile: opt batch {opt} not in 1..{max_batch}")
    return Profile((1, *rest), (opt, *rest), (max_batch, *rest))


@dataclass(frozen=True)
class IOTensor:
    """One I/O tensor of an engine: ``shape`` has ``-1`` for dimensions set at run time."""

    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class EngineLike(Protocol):
    """The part of ``trt.ICudaEngine`` that :func:`io_tensors` reads."""

    @property
    def num_io_tensors(self) -> int: ...

    def get_tensor_name(self, index: int) -> str: ...

    def get_tensor_mode(self, name: str) -> Any: ...

    def get_tensor_dtype(self, name: str) -> Any: ...

    def get_tensor_shape(self, name: str) -> Any: ...


def io_tensors(engine: EngineLike) -> dict[str, IOTensor]:
    """Name -> :class:`IOTensor` for every I/O tensor of ``engine``, in engine order."""
    out: dict[str, IOTensor] = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode: _Named = engine.get_tensor_mode(name)
        dtype: _Named = engine.get_tensor_dtype(name)
        if dtype.name not in TRT_DTYPES:
            raise EngineError(f"TensorRT tensor {name!r} has unsupported type {dtype.name}")
        dims = engine.get_tensor_shape(name)
        shape = tuple(int(dims[k]) for k in range(len(dims)))
        out[name] = IOTensor(name, mode.name == "INPUT", TRT_DTYPES[dtype.name], shape)
    return out


def check_io(
    io: dict[str, IOTensor], *, source: str, expected_outputs: Sequence[str] = ()
) -> tuple[IOTensor, list[IOTensor]]:
    """-> (the one uint8 NHWC input, the outputs); errors name ``source`` and the mismatch."""
    inputs = [t for t in io.values() if t.is_input]
    outputs = [t for t in io.values() if not t.is_input]
    if len(inputs) != 1:
        raise EngineError(f"{source}: expected one input tensor, got {[t.name for t in inputs]}")
    inp = inputs[0]
    if inp.dtype != "uint8" or len(inp.shape) != 4 or inp.shape[3] != 3:
        raise EngineError(
            f"{source}: input {inp.name!r} must be uint8 (N, H, W, 3), got {inp.dtype} "
            f"{list(inp.shape)}"
        )
    missing = [n for n in expected_outputs if n not in {t.name for t in outputs}]
    if missing:
        raise EngineError(
            f"{source}: missing output tensor(s) {missing}; it has {[t.name for t in outputs]}"
        )
    return inp, outputs


def onnx_input(path: Path) -> tuple[str, list[int | str]]:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise EngineError(f"ONNX file {path} cannot be read: {exc}") from None
    inp = graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    return inp.name, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def engine_key(
    onnx_path: Path,
    *,
    precision: str,
    profile: Profile,
    input_name: str,
    tensorrt_version: str,
    compute_capability: str,
) -> EngineKey:
    """The cache key of the engine built from ``onnx_path`` (its content hash) with these
    settings, by this TensorRT version on a GPU of this compute capability."""
    return EngineKey(
        onnx_sha256=sha256_file(onnx_path),
        tensorrt_version=tensorrt_version,
        compute_capability=compute_capability,
        precision=precision,
        input_name=input_name,
        min_shape=profile.min,
        opt_shape=profile.opt,
        max_shape=profile.max,
    )


# ------------------------------------------------------------------------------ TensorRT parts
def tensorrt_available() -> bool:
    """True where the real ``tensorrt`` package imports. ``tensorrt-stubs`` alone installs a
    ``tensorrt/`` folder with only ``.pyi`` files, which imports as an empty namespace package."""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def require_tensorrt() -> None:
    """Raise a clear :class:`EngineError` where the ``tensorrt`` package is missing."""
    if not tensorrt_available():
        raise EngineError(
            "backend tensorrt: the TensorRT Python package is not installed (pip install "
            "tensorrt, on a machine with an NVIDIA GPU)"
        )


def cuda_torch() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise EngineError("backend tensorrt: no CUDA GPU is available")
    return torch


class _OutputMemory:
    """Device memory for outputs whose shape is known only after the run (``K`` detections)."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.buffers: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def reallocate(self, tensor_name: str, size: int) -> int:
        torch = cuda_torch()
        buf = self.buffers.get(tensor_name)
        if buf is None or buf.numel() < size:
            buf = torch.empty(max(size, 1), dtype=torch.uint8, device=f"cuda:{self.device}")
            self.buffers[tensor_name] = buf
        return int(buf.data_ptr())


def _make_output_allocator(memory: _OutputMemory) -> trt.IOutputAllocator:
    require_tensorrt()
    import tensorrt as trt

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)

        def reallocate_output(self, tensor_name: str, memory_: int, size: int, align: int) -> int:
            return memory.reallocate(tensor_name, size)

        def reallocate_output_async(
            self, tensor_name: str, memory_: int, size: int, align: int, stream: int
        ) -> int:
            return memory.reallocate(tensor_name, size)

        def notify_shape(self, tensor_name: str, shape: trt.Dims) -> None:
            memory.shapes[tensor_name] = _as_tuple(shape)

    return OutputAllocator()


class TensorRTEngine(WarmupMixin):
    """Engine over a serialised TensorRT engine file (see :func:`load_or_build`)."""

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        *,
        num_classes: int = 0,
        input_hw: tuple[int, int] | None = None,
        expected_outputs: Sequence[str] = (),
        device: int = 0,
        name: str | None = None,
    ) -> None:
        require_tensorrt()
        import tensorrt as trt

        torch = cuda_torch()
        self.path = Path(engine_path)
        self.name = name or f"tensorrt:{self.path.name}"
        if not self.path.is_file():
            raise EngineError(f"TensorRT engine file {self.path} not found")
        self._torch = torch
        self.device = device
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(
            self.path.read_bytes()
        )
        if engine is None:
            raise EngineError(
                f"TensorRT engine file {self.path} cannot be deserialised (corrupt, or built by "
                f"another TensorRT version / GPU); rebuild it with seg-perception build-engine"
            )
        self.engine: trt.ICudaEngine = engine
        io = io_tensors(engine)
        inp, outs = check_io(
            io, source=f"TensorRT engine {self.path}", expected_outputs=expected_outputs
        )
        self.input_name = inp.name
        self.input_hw = (inp.shape[1], inp.shape[2])
        if input_hw is not None and tuple(input_hw) != self.input_hw:
            raise EngineError(
                f"TensorRT engine {self.path}: input size {self.input_hw} differs from the "
                f"configured {tuple(input_hw)}"
            )
        if inp.shape[0] > 0:  # static batch
            self.max_batch = inp.shape[0]
        else:  # profile 0's max shape
            self.max_batch = int(engine.get_tensor_profile_shape(inp.name, 0)[2][0])
        self.num_classes = num_classes
        self._outputs = outs
        self.inputs = (TensorSpec(inp.name, _spec_shape(inp.shape), inp.dtype),)
        self.outputs = tuple(TensorSpec(t.name, _spec_shape(t.shape), t.dtype) for t in outs)
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device)
        dev = f"cuda:{device}"
        h, w = self.input_hw
        self._host_in = torch.empty((self.max_batch, h, w, 3), dtype=torch.uint8).pin_memory()
        self._dev_in = torch.empty((self.max_batch, h, w, 3), dtype=torch.uint8, device=dev)
        self._dev_out: dict[str, Any] = {}
        self._host_out: dict[str, Any] = {}
        self._memory = _OutputMemory(device)
        self._allocator = _make_output_allocator(self._memory)
        self._buffers = OutputBuffers()

    def _static_output(self, t: IOTensor, shape: tuple[int, ...]) -> Any:
        torch = self._torch
        full = (self.max_batch, *shape[1:]) if t.shape[0] == -1 else shape
        dt = getattr(torch, t.dtype)
        if t.name not in self._dev_out or tuple(self._dev_out[t.name].shape) != full:
            self._dev_out[t.name] = torch.empty(full, dtype=dt, device=f"cuda:{self.device}")
            self._host_out[t.name] = torch.empty(full, dtype=dt).pin_memory()
        return self._dev_out[t.name]

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(
            images, input_hw=self.input_hw, max_batch=self.max_batch, engine=self.name
        )
        torch, ctx = self._torch, self.context
        n = images.shape[0]
        h, w = self.input_hw
        ctx.set_input_shape(self.input_name, (n, h, w, 3))
        self._host_in[:n].numpy()[...] = images
        dynamic: list[IOTensor] = []
        with torch.cuda.stream(self.stream):
            self._dev_in[:n].copy_(self._host_in[:n], non_blocking=True)
            ctx.set_tensor_address(self.input_name, int(self._dev_in.data_ptr()))
            for t in self._outputs:
                shape = _as_tuple(ctx.get_tensor_shape(t.name))
                if any(d < 0 for d in shape):
                    ctx.set_output_allocator(t.name, self._allocator)
                    dynamic.append(t)
                else:
                    ctx.set_tensor_address(t.name, int(self._static_output(t, shape).data_ptr()))
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise EngineError(f"engine {self.name}: execute_async_v3 failed (batch {n})")
            for t in self._outputs:
                if t in dynamic:
                    continue
                self._host_out[t.name][:n].copy_(self._dev_out[t.name][:n], non_blocking=True)
        self.stream.synchronize()
        result: dict[str, np.ndarray] = {}
        for t in self._outputs:
            if t in dynamic:
                shape = self._memory.shapes[t.name]
                count = int(np.prod(shape))
                raw = self._memory.buffers[t.name]
                typed = raw.view(getattr(torch, t.dtype))[:count].reshape(shape)
                result[t.name] = self._buffers.store(t.name, typed.cpu().numpy())
            else:
                result[t.name] = self._host_out[t.name][:n].numpy()
        return result

    def close(self) -> None:
        self._dev_out.clear()
        self._host_out.clear()
        self._buffers.clear()


def trt_dims(shape: Sequence[int]) -> trt.Dims:
    import tensorrt as trt

    return trt.Dims([int(d) for d in shape])


def _as_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """``Dims`` -> ints (the stubs give ``Dims`` ``__len__``/``__getitem__``, no ``__iter__``)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _spec_shape(shape: tuple[int, ...]) -> tuple[int | str, ...]:
    return tuple(d if d >= 0 else "?" for d in shape)
