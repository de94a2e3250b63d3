"""PyTorch backend: runs a network's export form eagerly on CPU or CUDA.

``torch.inference_mode``, channels-last weights (the uint8 NHWC input permuted to NCHW is already
channels-last in memory, so oneDNN / cuDNN run NHWC kernels without a layout change), optional
autocast: ``bf16`` on CPU (oneDNN uses AVX512-BF16 / AMX where the CPU has them) and ``fp16`` or
``bf16`` on CUDA. Floating outputs are returned as float32 whatever the compute precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from seg_perception.engines.base import (
    SEMANTIC_OUTPUTS,
    EngineError,
    OutputBuffers,
    TensorSpec,
    WarmupMixin,
    check_images,
)

__all__ = ["TORCH_PRECISIONS", "TorchEngine", "cpu_flags", "cpu_has_native_bf16"]

TORCH_PRECISIONS = ("fp32", "bf16", "fp16")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products natively (AVX512-BF16 or AMX-BF16) and
    oneDNN's bf16 path is enabled in this torch build."""
    flags = cpu_flags()
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    return native and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class TorchEngine(WarmupMixin):
    """Engine over an export-form module (uint8 NHWC ``image`` in, named outputs out).

    Args:
        module: e.g. :class:`~seg_perception.networks.export.SemanticExport`; its outputs (a
            tensor or a tuple) are matched to ``output_names`` in order.
        input_hw: network input ``(H, W)``.
        num_classes: classes of the label table the outputs use.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        threads: CPU threads (``torch.set_num_threads``; 0 keeps the library default).
        name: engine name used in messages.
        precision: ``"fp32"``, ``"bf16"`` (CPU with native bf16, or CUDA) or ``"fp16"`` (CUDA).
        channels_last: convert 4-d weights to channels-last memory format.
        max_batch: the most images one ``infer`` call takes.
        output_names: names of the module's outputs (semantic: ``class_ids``, ``confidence``).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        input_hw: tuple[int, int],
        num_classes: int,
        device: str = "cpu",
        threads: int = 0,
        name: str = "torch",
        precision: str = "fp32",
        channels_last: bool = True,
        max_batch: int = 16,
        output_names: Sequence[str] = SEMANTIC_OUTPUTS,
    ) -> None:
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise EngineError(
                f"parameter 'device': invalid torch device {device!r}: {exc}"
            ) from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"parameter 'device' is {device!r} but CUDA is not available")
        if precision not in TORCH_PRECISIONS:
            raise EngineError(
                f"engine {name}: precision {precision!r} is not available with the torch backend;"
                f" valid: {', '.join(TORCH_PRECISIONS)} (int8 runs through onnxruntime/tensorrt)"
            )
        if precision == "fp16" and self.device.type != "cuda":
            raise EngineError(
                f"engine {name}: precision fp16 needs a CUDA device (device is {device!r}); "
                f"use bf16 on CPU"
            )
        if precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            raise EngineError(
                f"engine {name}: precision bf16 on CPU needs AVX512-BF16 or AMX-BF16, which this "
                f"CPU lacks (flags checked in /proc/cpuinfo); use fp32"
            )
        if max_batch < 1:
            raise EngineError(f"engine {name}: max_batch must be >= 1, got {max_batch}")
        if threads > 0:
            torch.set_num_threads(threads)
        self.module = module.eval().to(self.device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.name = name
        self.precision = precision
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.num_classes = num_classes
        self.max_batch = max_batch
        self.output_names = tuple(output_names)
        h, w = self.input_hw
        self.inputs = (TensorSpec("image", ("batch", h, w, 3), "uint8"),)
        if self.output_names == SEMANTIC_OUTPUTS:
            self.outputs: tuple[TensorSpec, ...] = (
                TensorSpec("class_ids", ("batch", h, w), "uint8"),
                TensorSpec("confidence", ("batch", h, w), "float32"),
            )
        else:  # generic export forms (panoptic): shapes are known after a run
            self.outputs = tuple(TensorSpec(n, ("?",), "?") for n in self.output_names)
        self._buffers = OutputBuffers()

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(
            images, input_hw=self.input_hw, max_batch=self.max_batch, engine=self.name
        )
        with torch.inference_mode(), self._autocast():
            x = torch.from_numpy(images).to(self.device)
            outputs = self.module(x)
        if isinstance(outputs, Tensor):
            outputs = (outputs,)
        if len(outputs) != len(self.output_names):
            raise EngineError(
                f"engine {self.name}: the module returned {len(outputs)} outputs, expected "
                f"{len(self.output_names)} ({', '.join(self.output_names)})"
            )
        result = {}
        for key, tensor in zip(self.output_names, outputs, strict=True):
            if tensor.is_floating_point() and tensor.dtype != torch.float32:
                tensor = tensor.float()
            result[key] = self._buffers.store(key, tensor.detach().cpu().numpy())
        return result

    def close(self) -> None:
        self._buffers.clear()
