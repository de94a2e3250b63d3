"""PyTorch backend: runs a network's export form eagerly on CPU or CUDA."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from seg_perception.engines.base import EngineError


class TorchEngine:
    """Engine over an export-form module (uint8 NHWC image in, ``class_ids``/``confidence`` out)."""

    def __init__(
        self,
        module: nn.Module,
        *,
        input_hw: tuple[int, int],
        num_classes: int,
        device: str = "cpu",
        threads: int = 0,
        name: str = "torch",
    ) -> None:
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise EngineError(
                f"parameter 'device': invalid torch device {device!r}: {exc}"
            ) from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"parameter 'device' is {device!r} but CUDA is not available")
        if threads > 0:
            torch.set_num_threads(threads)
        self.module = module.eval().to(self.device)
        self.name = name
        self.input_hw = input_hw
        self.num_classes = num_classes
        self._out: dict[str, np.ndarray] = {}

    def _out_buffer(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        buf = self._out.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._out[key] = np.empty(shape, dtype=dtype)
        return buf

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        h, w = self.input_hw
        if images.ndim != 4 or images.shape[1:] != (h, w, 3) or images.dtype != np.uint8:
            raise EngineError(
                f"engine {self.name}: expected uint8 images of shape (N, {h}, {w}, 3), got "
                f"{images.dtype} {images.shape}"
            )
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            outputs = self.module(x)
        result = {}
        for key, tensor in zip(("class_ids", "confidence"), outputs, strict=True):
            arr = tensor.cpu().numpy()
            buf = self._out_buffer(key, arr.shape, arr.dtype)
            np.copyto(buf, arr)
            result[key] = buf
        return result

    def warmup(self, runs: int = 1) -> None:
        h, w = self.input_hw
        dummy = np.zeros((1, h, w, 3), dtype=np.uint8)
        for _ in range(runs):
            self.infer(dummy)

    def close(self) -> None:
        self._out.clear()
