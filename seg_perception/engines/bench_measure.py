"""Measurement parts of ``seg-perception bench engines`` (and ``bench train``): interleaved
timing, the machine's 3x3-convolution ceiling, FLOP counting and a small mIoU for agreement."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "CEILING_SHAPE",
    "NUM_CLASSES",
    "CeilingConv",
    "ceiling_gflops",
    "count_gflops",
    "counted_gflops",
    "miou",
    "round_robin",
]

CEILING_SHAPE = (256, 128, 256)  # channels, height, width
NUM_CLASSES = 19


def round_robin(
    calls: dict[str, Callable[[], object]], runs: int, *, warmup: int = 1, pause: float = 0.02
) -> dict[str, list[float]]:
    """Time every call ``runs`` times, interleaved (run ``i`` of each call, then run ``i + 1``),
    so that load from other processes on this shared machine hits all of them alike. A short
    pause before each timed call lets the previous library's spinning worker threads go idle."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


class CeilingConv:
    """The ceiling workload: fp32 3x3 conv, 256 -> 256 channels, 128x256, NHWC (oneDNN)."""

    def __init__(self) -> None:
        import torch

        c, h, w = CEILING_SHAPE
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(1, c, h, w, generator=gen).to(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
        self.conv = conv.to(memory_format=torch.channels_last)
        self.gflop = 2.0 * c * c * 9 * h * w / 1e9

    def __call__(self) -> object:
        import torch

        with torch.inference_mode():
            return self.conv(self.x)


def ceiling_gflops(runs: int = 5) -> float:
    """This machine's fp32 3x3-conv rate in GFLOP/s (median of ``runs``)."""
    conv = CeilingConv()
    times = round_robin({"ceiling": conv}, runs, warmup=2, pause=0.0)["ceiling"]
    return conv.gflop / float(np.median(times))


def miou(pred: np.ndarray, ref: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Mean IoU of ``pred`` against ``ref`` over the classes present in either (255 ignored)."""
    from seg_perception.metrics import SemanticMetrics

    metrics = SemanticMetrics(num_classes, labels=None)
    metrics.update(pred, ref)
    return metrics.compute()["miou"]


def counted_gflops(fn: Callable[[], object]) -> float:
    """Conv/matmul GFLOPs (2 per multiply-add) that ``fn()`` runs, backward passes included,
    counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def count_gflops(module_fn: Callable[[], Any], hw: tuple[int, int]) -> float:
    """Conv/matmul GFLOPs of one ``(1, 3, H, W)`` forward, counted on the meta device."""
    import torch

    net = module_fn().eval().to("meta")
    x = torch.empty(1, 3, *hw, device="meta")

    def forward() -> object:
        with torch.inference_mode():
            return net.forward_ids(x) if hasattr(net, "forward_ids") else net(x)

    # Meta tensors hold no values: a data-dependent size (GUN's bilinear ids blend the pixels
    # that ``nonzero`` lists) is taken as its maximum; that part has no conv or matmul anyway.
    from torch.fx.experimental import _config as fx_config

    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        return counted_gflops(forward)
