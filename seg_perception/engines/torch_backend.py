"""PyTorch backend: runs a network's export form eagerly on CPU or CUDA.

``torch.inference_mode``, channels-last weights (the uint8 NHWC input permuted to NCHW is already
channels-last in memory, so oneDNN / cuDNN run NHWC kernels without a layout change), optional
autocast: ``bf16`` on CPU (oneDNN uses AVX512-BF16 / AMX; refused on CPUs without them, see
:func:`seg_perception.machine.cpu_bf16_refusal`) and ``fp16`` or ``bf16`` on CUDA. Floating
outputs are returned as float32 whatever the compute precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

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
from seg_perception.machine import cpu_bf16_refusal, detect, has_bf16

__all__ = ["TORCH_PRECISIONS", "TorchEngine"]

TORCH_PRECISIONS = ("fp32", "bf16", "fp16")


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
        precision: ``"fp32"``, ``"bf16"`` (CUDA, or a CPU with AVX512-BF16 / AMX-BF16: refused
            on other CPUs, where it is emulated, slower than fp32 and less exact) or ``"fp16"``
            (CUDA).
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
            instead = "bf16 or fp32" if has_bf16(detect().features) else "fp32"
            raise EngineError(
                f"engine {name}: precision fp16 needs a CUDA device (device is {device!r}); "
                f"use {instead} on this CPU"
            )
        if precision == "bf16" and self.device.type == "cpu":
            machine = detect()
            refusal = cpu_bf16_refusal(machine.features, machine.cpu_model)
            if refusal:
                raise EngineError(f"engine {name}: {refusal}")
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
