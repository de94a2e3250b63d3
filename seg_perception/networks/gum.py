"""Guided Upsampling Module (GUN paper, section 4): upsampling steered by a guidance offset table.

Usable by any network: ``guided_upsample(logits, offsets, size=..., mode=...)`` is eq. 2
(nearest) / eq. 4 (bilinear) on ``torch.nn.functional.grid_sample``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _sampling_grid(offsets: Tensor, in_hw: tuple[int, int]) -> Tensor:
    """Regular upsampling grid + guidance offsets, in ``grid_sample``'s normalised coordinates.

    Eq. 1 maps target pixel ``x_t`` to source ``x_s``; we use pixel centres,
    ``x_s = (x_t + 0.5) * w / W - 0.5`` (the ``align_corners=False`` convention of
    ``F.interpolate``), and add the offset ``p`` (pixels of the ``w``-wide input map).
    ``grid_sample(align_corners=False)`` reads a normalised ``g`` at pixel ``((g + 1) * w - 1)/2``,
    so ``g = (2 * x_t + 1) / W - 1 + 2 * p / w``: the output's pixel-centre grid plus ``2p/w``.
    Returns ``(N, H, W, 2)`` (x, y).
    """
    H, W = offsets.shape[-2:]
    h, w = in_hw
    offsets = offsets.float()  # bf16/fp16 coordinates near +-1 are coarser than a pixel
    dt, dev = offsets.dtype, offsets.device
    gx = (torch.arange(W, dtype=dt, device=dev) * 2 + 1) / W - 1
    gy = (torch.arange(H, dtype=dt, device=dev) * 2 + 1) / H - 1
    base = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # (H, W, 2) as x, y
    # Scale per channel in (N, 2, H, W), then move the channel last: the same products as scaling
    # the (N, H, W, 2) table, but a broadcast over whole planes instead of over pairs (ONNX
    # Runtime's Mul over a trailing dimension of 2 costs ~4 ms per 512x1024 frame, this ~0.3).
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=dt, device=dev).view(1, 2, 1, 1)
    return base.unsqueeze(0) + (offsets * scale).permute(0, 2, 3, 1)


class _NearestStraightThrough(torch.autograd.Function):
    """Nearest sampling (eq. 2) forward; backward: the true gradient w.r.t. the input and the
    bilinear kernel's (eq. 4) gradient w.r.t. the grid. The paper trains the guidance module
    "end-to-end by backpropagation", which eq. 2 alone cannot do (piecewise constant in p_i,
    zero gradient); eq. 4 is "differentiable with respect to U and p_i", so the offsets get
    its slope (straight-through estimator). Forward values are exactly eq. 2's."""

    @staticmethod
    def forward(ctx, inp: Tensor, grid: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(inp, grid)
        return F.grid_sample(inp, grid, "nearest", "border", align_corners=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        inp, grid = ctx.saved_tensors
        g_inp = g_grid = None
        with torch.enable_grad():
            if ctx.needs_input_grad[0]:
                i = inp.detach().requires_grad_(True)
                out = F.grid_sample(i, grid.detach(), "nearest", "border", align_corners=False)
                (g_inp,) = torch.autograd.grad(out, i, grad_out)
            if ctx.needs_input_grad[1]:
                g = grid.detach().requires_grad_(True)
                out = F.grid_sample(inp.detach(), g, "bilinear", "border", align_corners=False)
                (g_grid,) = torch.autograd.grad(out, g, grad_out)
        return g_inp, g_grid


def guided_upsample(
    logits: Tensor, offsets: Tensor, *, size: tuple[int, int], mode: str = "nearest"
) -> Tensor:
    """Guided Upsampling Module: ``(N, C, h, w)`` + offsets ``(N, 2, H, W)`` -> ``(N, C, H, W)``.

    ``offsets[:, 0]`` = p (x), ``offsets[:, 1]`` = q (y), in pixels of the low-res map.
    ``mode="nearest"`` is eq. 2, ``"bilinear"`` eq. 4; out-of-map samples clamp to the border
    (``padding_mode="border"``). Convention: pixel centres, ``align_corners=False`` in both the
    grid and ``grid_sample``. With zero offsets the result equals
    ``F.interpolate(logits, size, mode="bilinear", align_corners=False)`` up to coordinate
    rounding (~1e-6), and bit-exactly ``F.interpolate(..., mode="nearest-exact")`` (which is
    ``mode="nearest"`` for integer factors); only exact .5 ties could differ (``grid_sample``
    rounds half to even, eq. 2 half up). In training, nearest mode back-propagates the bilinear
    gradient to the offsets (straight-through, see ``_NearestStraightThrough``).
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"guided_upsample: invalid mode={mode!r}; valid: nearest, bilinear")
    if offsets.dim() != 4 or offsets.shape[1] != 2 or tuple(offsets.shape[-2:]) != tuple(size):
        raise ValueError(
            f"guided_upsample: offsets must be (N, 2, {size[0]}, {size[1]}), "
            f"got {tuple(offsets.shape)}"
        )
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()  # sample in fp32 (autocast): reduced-precision grids are too coarse
    grid = _sampling_grid(offsets, (logits.shape[-2], logits.shape[-1]))
    if mode == "bilinear":
        return F.grid_sample(logits, grid, "bilinear", "border", align_corners=False)
    needs_grad = torch.is_grad_enabled() and (logits.requires_grad or grid.requires_grad)
    if needs_grad and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        return _NearestStraightThrough.apply(logits, grid)
    return F.grid_sample(logits, grid, "nearest", "border", align_corners=False)
