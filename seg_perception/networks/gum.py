"""Guided Upsampling Module (GUN paper, section 4): upsampling steered by a guidance offset table.

Usable by any network: ``guided_upsample(logits, offsets, size=..., mode=...)`` is eq. 2
(nearest) / eq. 4 (bilinear) on ``torch.nn.functional.grid_sample``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _sampling_grid(offsets: Tensor, in_hw: tuple[int, int], *, shift: float = 0.0) -> Tensor:
    """Regular upsampling grid + guidance offsets, in ``grid_sample``'s normalised coordinates.

    Eq. 1 maps target pixel ``x_t`` to source ``x_s``; we use pixel centres,
    ``x_s = (x_t + 0.5) * w / W - 0.5`` (the ``align_corners=False`` convention of
    ``F.interpolate``), and add the offset ``p`` (pixels of the ``w``-wide input map).
    ``grid_sample(align_corners=False)`` reads a normalised ``g`` at pixel ``((g + 1) * w - 1)/2``,
    so ``g = (2 * x_t + 1) / W - 1 + 2 * p / w``: the output's pixel-centre grid plus ``2p/w``.
    ``shift`` moves every source point by that many input pixels up and left (in the constant
    grid, so it costs nothing per frame). Returns ``(N, H, W, 2)`` (x, y).
    """
    H, W = offsets.shape[-2:]
    h, w = in_hw
    offsets = offsets.float()  # bf16/fp16 coordinates near +-1 are coarser than a pixel
    dt, dev = offsets.dtype, offsets.device
    gx = (torch.arange(W, dtype=dt, device=dev) * 2 + 1) / W - 1 - 2 * shift / w
    gy = (torch.arange(H, dtype=dt, device=dev) * 2 + 1) / H - 1 - 2 * shift / h
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
        # ATen's grid-sampler backward directly (what autograd would call for each mode), so the
        # two sampling forwards that an autograd.grad re-run would build are never computed.
        inp, grid = ctx.saved_tensors
        g_inp = g_grid = None
        if ctx.needs_input_grad[0]:
            g_inp = _grid_sample_backward(grad_out, inp, grid, "nearest", (True, False))[0]
        if ctx.needs_input_grad[1]:
            g_grid = _grid_sample_backward(grad_out, inp, grid, "bilinear", (False, True))[1]
        return g_inp, g_grid


_INTERPOLATION = {"bilinear": 0, "nearest": 1}  # ATen's GridSamplerInterpolation
_BORDER = 1  # ATen's GridSamplerPadding.Border


def _grid_sample_backward(
    grad_out: Tensor, inp: Tensor, grid: Tensor, mode: str, mask: tuple[bool, bool]
) -> tuple[Tensor, Tensor]:
    """``(d input, d grid)`` of ``grid_sample(inp, grid, mode, "border", align_corners=False)``
    for ``grad_out``; only the parts ``mask`` asks for are computed."""
    return torch.ops.aten.grid_sampler_2d_backward(
        grad_out, inp, grid, _INTERPOLATION[mode], _BORDER, False, list(mask)
    )


def _check_offsets(offsets: Tensor, size: tuple[int, int]) -> None:
    if offsets.dim() != 4 or offsets.shape[1] != 2 or tuple(offsets.shape[-2:]) != tuple(size):
        raise ValueError(
            f"guided_upsample: offsets must be (N, 2, {size[0]}, {size[1]}), "
            f"got {tuple(offsets.shape)}"
        )


def _fp32(logits: Tensor) -> Tensor:
    if logits.dtype in (torch.bfloat16, torch.float16):
        return logits.float()  # sample in fp32 (autocast): reduced-precision grids are too coarse
    return logits


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
    _check_offsets(offsets, size)
    logits = _fp32(logits)
    grid = _sampling_grid(offsets, (logits.shape[-2], logits.shape[-1]))
    if mode == "bilinear":
        return F.grid_sample(logits, grid, "bilinear", "border", align_corners=False)
    needs_grad = torch.is_grad_enabled() and (logits.requires_grad or grid.requires_grad)
    if needs_grad and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        return _NearestStraightThrough.apply(logits, grid)
    return F.grid_sample(logits, grid, "nearest", "border", align_corners=False)


def guided_ids(
    logits: Tensor, offsets: Tensor, *, size: tuple[int, int], mode: str = "nearest"
) -> tuple[Tensor, Tensor]:
    """Class ids and confidence of :func:`guided_upsample` without the ``(N, K, H, W)`` logits.

    ``logits`` ``(N, K, h, w)`` + ``offsets`` ``(N, 2, H, W)`` -> ``(ids uint8 (N, H, W),
    confidence float (N, H, W))``: ids equal ``guided_upsample(logits, offsets, size=size,
    mode=mode).argmax(1)`` (up to exact ties).

    * ``"nearest"`` (eq. 2): every output pixel copies one low-res logit vector, so the argmax
      and the max softmax probability are taken at low resolution and sampled with the grid.
    * ``"bilinear"`` (eq. 4): an output pixel blends the logit vectors of its 2x2 source cells.
      Where all four cells have the same argmax ``c``, the blend's argmax is ``c`` too (a convex
      combination of vectors that each peak at ``c``), so those pixels copy the id and the max
      softmax probability of the block's top-left cell. Only the pixels whose block disagrees
      (object boundaries: 6-12 % of a 512x1024 street frame at stride 16) get the blend,
      computed on that sparse list, and its max softmax probability as confidence (the blend's
      everywhere would cost a full-resolution softmax). One two-channel ``GridSample`` (the
      block's id, or -1 where it disagrees, and the confidence) as in the nearest mode, then
      the sparse blend: in ONNX Runtime ~15x cheaper than ``GridSample`` of all K channels.
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"guided_ids: invalid mode={mode!r}; valid: nearest, bilinear")
    _check_offsets(offsets, size)
    low = _fp32(logits)
    n, k, h, w = low.shape
    amax = low.argmax(1, keepdim=True).to(low.dtype)
    conf = low.softmax(1).amax(1, keepdim=True)
    if mode == "nearest":
        grid = _sampling_grid(offsets, (h, w))
        nearest = F.grid_sample(
            torch.cat([amax, conf], 1), grid, "nearest", "border", align_corners=False
        )
        return nearest[:, 0].round().to(torch.uint8), nearest[:, 1]
    # Per low-res cell (i, j): does the 2x2 block (i..i+1, j..j+1) hold more than one argmax?
    # The last row / column repeat (border clamping gives those pixels one source row / column).
    # A block's code is its top-left cell's argmax where the four agree, -1 where they do not
    # (those pixels get the blend's argmax below).
    a = F.pad(amax, (0, 1, 0, 1), mode="replicate")
    top = a[:, :, :-1, :-1]
    mixed = (top != a[:, :, :-1, 1:]) | (top != a[:, :, 1:, :-1]) | (top != a[:, :, 1:, 1:])
    code = torch.where(mixed, -1.0, top)
    # Source points half a low-res pixel up-left: nearest rounding becomes the floor of the
    # true source point, i.e. the block's top-left cell (an exact .5 tie may round down: that
    # block still holds both source cells).
    grid = _sampling_grid(offsets, (h, w), shift=0.5)
    block = F.grid_sample(
        torch.cat([code, conf], 1), grid, "nearest", "border", align_corners=False
    )
    ids = block[:, 0].round().reshape(-1)
    conf_flat = block[:, 1].reshape(-1)
    todo = (ids < 0).nonzero().squeeze(1)
    # Eq. 4 on the listed pixels: source point (the shifted grid's plus half a pixel) clamped to
    # the map (padding "border"), its 2x2 cells and bilinear weights, the K-vectors gathered
    # from a (N*h*w, K) table.
    g = grid.reshape(-1, 2)[todo]
    x = ((g[:, 0] + 1.0) * (0.5 * w)).clamp(0.0, w - 1.0)
    y = ((g[:, 1] + 1.0) * (0.5 * h)).clamp(0.0, h - 1.0)
    x0, y0 = x.floor(), y.floor()
    fx, fy = (x - x0).unsqueeze(1), (y - y0).unsqueeze(1)
    x0i, y0i = x0.long(), y0.long()
    x1i, y1i = (x0i + 1).clamp(max=w - 1), (y0i + 1).clamp(max=h - 1)
    base = torch.div(todo, size[0] * size[1], rounding_mode="floor") * (h * w)
    table = low.permute(0, 2, 3, 1).reshape(n * h * w, k)
    blend = (
        table[base + y0i * w + x0i] * ((1.0 - fx) * (1.0 - fy))
        + table[base + y0i * w + x1i] * (fx * (1.0 - fy))
        + table[base + y1i * w + x0i] * ((1.0 - fx) * fy)
        + table[base + y1i * w + x1i] * (fx * fy)
    )
    best = blend.amax(1, keepdim=True)
    ids = ids.index_put((todo,), blend.argmax(1).to(ids.dtype))
    conf_flat = conf_flat.index_put((todo,), 1.0 / (blend - best).exp().sum(1))
    return ids.view(n, *size).to(torch.uint8), conf_flat.view(n, *size)


class GuidedLogits(NamedTuple):
    """Nearest-mode GUM logits not yet sampled: ``low`` ``(N, K, h, w)`` fp32 and the sampling
    ``grid`` ``(N, H, W, 2)``. A training loss that needs only the log-probability of each
    pixel's target class reads it through :meth:`target_log_prob` (the ``(N, K, H, W)`` logits
    are never built in forward); :meth:`materialise` gives the logits of
    ``guided_upsample(..., mode="nearest")``. Both back-propagate alike: exactly to ``low``, and
    to the offsets through the bilinear straight-through gradient."""

    low: Tensor
    grid: Tensor

    @property
    def shape(self) -> torch.Size:
        """The shape of the materialised logits, ``(N, K, H, W)``."""
        return torch.Size((*self.low.shape[:2], *self.grid.shape[1:3]))

    def materialise(self) -> Tensor:
        return _NearestStraightThrough.apply(self.low, self.grid)

    def target_log_prob(self, target: Tensor) -> Tensor:
        """``log_softmax(materialise(), 1)`` at class ``target`` ``(N, H, W)`` (int64 in
        ``0 .. K-1``) of every pixel, ``(N, H, W)``."""
        return _GuidedTargetLogProb.apply(self.low, self.grid, target)


def guided_logits(logits: Tensor, offsets: Tensor, *, size: tuple[int, int]) -> GuidedLogits:
    """The nearest-mode :func:`guided_upsample` of ``logits`` by ``offsets``, left unsampled."""
    _check_offsets(offsets, size)
    logits = _fp32(logits)
    return GuidedLogits(logits, _sampling_grid(offsets, (logits.shape[-2], logits.shape[-1])))


def _nearest_source(grid: Tensor, in_hw: tuple[int, int]) -> Tensor:
    """``(N, H*W)`` int64: the flat low-res index that nearest ``grid_sample`` copies to each
    output pixel (the same kernel sampling a map of indices, so the same rounding)."""
    h, w = in_hw
    index_map = torch.arange(h * w, dtype=torch.float32, device=grid.device).view(1, 1, h, w)
    src = F.grid_sample(
        index_map.expand(grid.shape[0], 1, h, w), grid, "nearest", "border", align_corners=False
    )
    return src.flatten(1).long()


class _GuidedTargetLogProb(torch.autograd.Function):
    """:meth:`GuidedLogits.target_log_prob`. Nearest sampling copies whole low-res logit
    vectors, so the log-softmax is taken at low resolution and read at (target, source pixel).
    Backward: to ``low``, ``sum over the pixels p sampling j of w_p ([c = y_p] - softmax_cj)``
    (two scatter-adds); to the grid, the bilinear straight-through gradient of the full-res logit
    gradient ``w_p ([c = y_p] - softmax_c(source of p))``, read from a low-resolution table
    (:func:`_target_grid_grad`): no ``(N, K, H, W)`` tensor is built in either direction."""

    @staticmethod
    def forward(ctx, low: Tensor, grid: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        n, h, w = low.shape[0], low.shape[2], low.shape[3]
        with torch.autocast(low.device.type, enabled=False):
            src = _nearest_source(grid, (h, w))
            logp = F.log_softmax(low.float(), dim=1).contiguous()
            flat_target = target.reshape(n, -1)
            pos = flat_target * (h * w) + src
            out = logp.view(n, -1).gather(1, pos)
        ctx.save_for_backward(low, grid, logp, src, pos, flat_target)
        return out.view_as(target)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        low, grid, logp, src, pos, target = ctx.saved_tensors
        n, k, h, w = low.shape
        g = grad.reshape(n, -1).float()
        prob = logp.exp()
        g_low = g_grid = None
        if ctx.needs_input_grad[0]:
            per_source = g.new_zeros(n, h * w).scatter_add_(1, src, g)
            per_target = g.new_zeros(n, k * h * w).scatter_add_(1, pos, g)
            g_low = per_target.view(n, k, h, w) - prob * per_source.view(n, 1, h, w)
        if ctx.needs_input_grad[1]:
            if h >= 2 and w >= 2:
                g_grid = _target_grid_grad(low, prob, grid, src, target, g)
            else:  # a one-pixel-wide map has no bilinear cell: ATen on the full-size gradient
                sampled = prob.view(n, k, h * w).gather(2, src.unsqueeze(1).expand(n, k, -1))
                full = sampled.mul_(-g.unsqueeze(1))
                full.scatter_add_(1, target.unsqueeze(1), g.unsqueeze(1))
                g_grid = _grid_sample_backward(
                    full.view(n, k, *grid.shape[1:3]), low, grid, "bilinear", (False, True)
                )[1]
        return g_low, g_grid, None


# Which neighbour (dy, dx) of the nearest source s each corner of a bilinear cell is, for each
# position r = 2 * ry + rx of s in its cell (rx, ry in {0, 1}); the corners in nw, ne, sw, se
# order; a neighbour is numbered (dy + 1) * 3 + (dx + 1).
_CELL_NEIGHBOURS = [
    [(j - ry + 1) * 3 + (i - rx + 1) for j in (0, 1) for i in (0, 1)]
    for ry in (0, 1)
    for rx in (0, 1)
]


def _target_grid_grad(
    low: Tensor, prob: Tensor, grid: Tensor, src: Tensor, target: Tensor, g: Tensor
) -> Tensor:
    """The straight-through grid gradient of :class:`_GuidedTargetLogProb` without the
    ``(N, K, H, W)`` tensor: ``(N, H, W, 2)``, what ATen's bilinear ``grid_sampler_2d_backward``
    (border padding, ``align_corners=False``) gives for the full-size logit gradient
    ``G[c, p] = g_p ([c = y_p] - softmax_c(s_p))``.

    That backward sums over the classes ``sum_c G[c, p] U_c(q)`` for the four corners ``q`` of
    pixel ``p``'s bilinear cell; it equals ``g_p A(y_p, s_p, q)`` with
    ``A(y, s, q) = U_y(q) - sum_c softmax_c(s) U_c(q)``. The nearest source ``s_p`` is itself a
    corner of that cell, so ``q`` is one of its 3x3 neighbours: ``A`` is a low-resolution table
    (``N x K x 4 positions x h x w x 4 corners``, ~0.6 M values for GUN's 256x512 crops) read
    once per pixel. Coordinates as ATen: clipped to the border, the border itself counting as
    outside (zero gradient along that axis); ``low``: ``(N, K, h, w)`` with ``h, w >= 2``.
    """
    n, k, h, w = low.shape
    hw = h * w
    ix = grid[..., 0].reshape(n, -1).add(1).mul_(w).sub_(1).div_(2)  # pixel coordinates
    iy = grid[..., 1].reshape(n, -1).add(1).mul_(h).sub_(1).div_(2)
    gx = ((ix > 0) & (ix < w - 1)).to(g.dtype).mul_(g).mul_(w / 2)  # d ix / d grid, clipped
    gy = ((iy > 0) & (iy < h - 1)).to(g.dtype).mul_(g).mul_(h / 2)
    x0 = ix.clamp_(0, w - 1).floor().clamp_(max=w - 2)  # the cell's top-left corner
    y0 = iy.clamp_(0, h - 1).floor().clamp_(max=h - 2)
    fx, fy = ix.sub_(x0), iy.sub_(y0)
    s = src.to(g.dtype)  # exact below 2**24 low-res pixels (4096 x 4096)
    sy = s.div(w).floor_()
    position = (s - sy * w).sub_(x0).add_(sy.sub_(y0).mul_(2))  # r = 2 ry + rx
    padded = F.pad(low.float(), (1, 1, 1, 1))
    shifted = torch.stack(
        [padded[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], 2
    )  # (N, K, 9, h, w): U_c at each neighbour of every pixel
    table = shifted - (prob.unsqueeze(2) * shifted).sum(1, keepdim=True)
    neighbours = torch.tensor(_CELL_NEIGHBOURS, device=low.device).view(-1)
    table = table[:, :, neighbours].view(n, k, 4, 4, h, w).permute(3, 0, 1, 2, 4, 5)
    table = table.reshape(4, -1)  # (corner, flat (image, y, r, s))
    index = target.reshape(n, -1).mul(4).add_(position.long()).mul_(hw).add_(src)
    index += torch.arange(n, device=low.device).mul_(k * 4 * hw).unsqueeze(1)
    a_nw, a_ne, a_sw, a_se = (corner.take(index).view(n, -1) for corner in table)
    out = torch.empty(*grid.shape, dtype=g.dtype, device=g.device)
    torch.mul(
        (a_ne - a_nw).mul_(1 - fy).add_((a_se - a_sw).mul_(fy)), gx, out=out[..., 0].view(n, -1)
    )
    torch.mul(
        a_sw.sub_(a_nw).mul_(1 - fx).add_(a_se.sub_(a_ne).mul_(fx)), gy, out=out[..., 1].view(n, -1)
    )
    return out
