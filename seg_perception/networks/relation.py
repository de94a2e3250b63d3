"""RelationNet building blocks, usable with any segmentation network.

From "RelationNet: Learning Deep-Aligned Representation for Semantic Image Segmentation"
(Zhuang et al.; ``shared/papers/relationnet.txt``):

- :class:`RelationModule`: left-right bidirectional GRU over every row, then an up-down
  bidirectional GRU over every column of the result (Sec. II-A2).
- :func:`correlation_features`: the pad / shift / crop / concatenate operation of Fig. 3.
- :class:`SimilaritySubnet` + :func:`scl_targets`: the similarity-estimation subnet (training only)
  and the binary same-class targets of the spatial correlation loss (Sec. II-A3, II-B2).
- :class:`DeformConv2d`, :class:`DeformConvBlock`, :func:`make_stage_deformable`: deformable
  convolutions with zero-initialised offsets (Sec. II-A1).
- :class:`MultiStepTest`: multi-step (shift) testing instead of interpolation (Sec. II-C, Fig. 5).

Geometry convention used throughout: a feature map of output stride ``s`` produced by a chain of
"same"-padded convs / pools has its sample ``u`` centred on input pixel ``s * u`` (a ``k x k``
stride-``s`` conv with padding ``(k - 1) / 2`` centres output ``u`` on input ``s * u``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

__all__ = [
    "DeformConv2d",
    "DeformConvBlock",
    "MultiStepTest",
    "RelationModule",
    "SimilaritySubnet",
    "correlation_features",
    "make_stage_deformable",
    "neighbour_offsets",
    "scl_targets",
    "upsample_stride_aligned",
]


# --------------------------------------------------------------------------- geometry helpers
def neighbour_offsets(neighbourhood: int = 3) -> list[tuple[int, int]]:
    """Offsets ``(dy, dx)`` of a ``neighbourhood x neighbourhood`` window, row-major.

    For 3 this is ``[(-1,-1), (-1,0), (-1,1), (0,-1), (0,0), (0,1), (1,-1), (1,0), (1,1)]``; the
    centre ``(0, 0)`` is included because Eq. (6) compares "a pixel ... with the nearby 9 pixels
    including itself". Index ``k`` of every ``K`` axis below follows this order.
    """
    if neighbourhood < 1 or neighbourhood % 2 == 0:
        raise ValueError(f"neighbourhood must be an odd integer >= 1, got {neighbourhood}")
    r = neighbourhood // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def upsample_stride_aligned(x: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of a stride-``stride`` map whose sample ``u`` sits on pixel ``stride*u``.

    ``(N, C, h, w) -> (N, C, size[0], size[1])``; output pixel ``i`` reads map coordinate
    ``i / stride`` (ONNX ``Resize`` "asymmetric" mode), clamped at the last sample. Built from a
    replicate pad and an ``align_corners=True`` resize so that it exports to plain ONNX ops.
    """
    if stride == 1:
        return x[..., : size[0], : size[1]]
    h, w = x.shape[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(stride * h + 1, stride * w + 1), mode="bilinear", align_corners=True)
    # Pixels past stride*h (only when size exceeds the covered extent) repeat the last sample.
    pad_h = max(0, size[0] - (stride * h + 1))
    pad_w = max(0, size[1] - (stride * w + 1))
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x[..., : size[0], : size[1]]


# --------------------------------------------------------------------------- relation module
class RelationModule(nn.Module):
    """Bidirectional GRU over rows (left-right), then over columns (up-down) of the result.

    Sec. II-A2: "left-right bidirectional GRU is followed by up-down bidirectional GRU".
    ``(N, in_channels, H, W) -> (N, 2 * hidden, H, W)``; ``out_channels = 2 * hidden`` (forward
    and backward states concatenated). Every output depends on every input position: the row
    pass spreads a pixel along its row, the column pass spreads each row position along its
    column.
    """

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 1:
            raise ValueError(
                f"RelationModule: in_channels and hidden must be >= 1, got {in_channels}, {hidden}"
            )
        self.in_channels = in_channels
        self.out_channels = 2 * hidden
        self.row_gru = nn.GRU(in_channels, hidden, batch_first=True, bidirectional=True)
        self.col_gru = nn.GRU(2 * hidden, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h, w, c)  # one sequence per row, along W
        rows, _ = self.row_gru(rows)  # (N*H, W, 2h)
        cols = rows.reshape(n, h, w, -1).permute(0, 2, 1, 3).reshape(n * w, h, -1)
        cols, _ = self.col_gru(cols)  # (N*W, H, 2h), one sequence per column, along H
        return cols.reshape(n, w, h, -1).permute(0, 3, 2, 1).contiguous()


# --------------------------------------------------------------------------- similarity / SCL
def correlation_features(x: Tensor, *, neighbourhood: int = 3) -> Tensor:
    """Pair every position with each neighbour: the shift-feature operation of Fig. 3.

    ``x``: ``(N, C, H, W)`` -> ``(N, K, 2C, H, W)`` with ``K = neighbourhood**2`` and neighbours
    in the row-major order of :func:`neighbour_offsets` (centre included, ``k = K // 2``). For
    neighbour ``k`` with offset ``(dy, dx)``::

        out[n, k, :C, i, j] = x[n, :, i, j]                 # the centre ("anchor") features
        out[n, k, C:, i, j] = x[n, :, i + dy, j + dx]        # the shifted features, 0 outside

    Built as in Fig. 3: zero-pad the map by ``neighbourhood // 2`` (the "anchor feature", 6x6
    for a 4x4 map), shift it by ``(dy, dx)``, crop back to ``H x W`` and concatenate with the
    centre features.
    """
    offsets = neighbour_offsets(neighbourhood)
    r = neighbourhood // 2
    h, w = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r))
    pairs = [
        torch.cat((x, padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]), dim=1)
        for dy, dx in offsets
    ]
    return torch.stack(pairs, dim=1)


def scl_targets(
    labels: Tensor, neighbourhood: int = 3, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Same-class targets of the spatial correlation loss for every pixel and neighbour.

    ``labels``: integer ``(N, H, W)`` (trainIds at the resolution of the features the
    :class:`SimilaritySubnet` sees). Returns ``(same, valid)``, both ``(N, K, H, W)`` in the
    neighbour order of :func:`neighbour_offsets`:

    - ``same`` float32, 1 where ``labels[i, j] == labels[i + dy, j + dx]`` (Eq. 4's positive set),
      0 elsewhere;
    - ``valid`` bool, False where either pixel is ``ignore_index`` or the neighbour falls outside
      the image (the zero padding of Fig. 3 carries no label).
    """
    if labels.dim() != 3:
        raise ValueError(f"scl_targets: labels must be (N, H, W), got shape {tuple(labels.shape)}")
    offsets = neighbour_offsets(neighbourhood)
    r = neighbourhood // 2
    n, h, w = labels.shape
    padded = labels.new_full((n, h + 2 * r, w + 2 * r), ignore_index)
    padded[:, r : r + h, r : r + w] = labels
    shifted = torch.stack(
        [padded[:, r + dy : r + dy + h, r + dx : r + dx + w] for dy, dx in offsets], dim=1
    )
    centre = labels.unsqueeze(1)
    valid = (centre != ignore_index) & (shifted != ignore_index)
    same = ((centre == shifted) & valid).float()
    return same, valid


class SimilaritySubnet(nn.Module):
    """Predicts, per pixel and neighbour, whether the two share a class (training only).

    ``(N, C, H, W)`` features -> logits ``(N, K, H, W)`` of ``P(X_mn, X_m+dw,n+dh)`` (apply a
    sigmoid), neighbour order of :func:`neighbour_offsets`. The same two-layer 1x1 classifier
    scores every ``[centre, neighbour]`` pair of :func:`correlation_features`. The paper removes
    the subnet at test time ("In testing phase, the similarity estimation subnet is removed"), so
    it is kept outside the networks and never exported.
    """

    def __init__(self, in_channels: int, *, hidden: int = 64, neighbourhood: int = 3) -> None:
        super().__init__()
        self.neighbourhood = neighbourhood
        self.num_neighbours = len(neighbour_offsets(neighbourhood))
        self.classifier = nn.Sequential(
            nn.Conv2d(2 * in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        pairs = correlation_features(features, neighbourhood=self.neighbourhood)
        n, k, c2, h, w = pairs.shape
        logits = self.classifier(pairs.reshape(n * k, c2, h, w))
        return logits.reshape(n, k, h, w)


# --------------------------------------------------------------------------- deformable convs
class DeformConv2d(nn.Module):
    """Drop-in for a "same"-padded ``nn.Conv2d`` (odd kernel) with learned sampling offsets.

    ``(N, C_in, H, W) -> (N, C_out, H', W')`` as the plain conv. The offsets ``(N, 2*k*k, H', W')``
    come from a 3x3 conv whose weight and bias start at zero, so a fresh layer equals the plain
    convolution and learns to deform from there.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"DeformConv2d: kernel_size must be odd, got {kernel_size}")
        self.stride = stride
        self.dilation = dilation
        self.padding = dilation * (kernel_size - 1) // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.offset = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, 3, stride, 1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)  # type: ignore[arg-type]  # bias=True above

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> DeformConv2d:
        """A deformable copy of ``conv`` (same weight, stride, dilation; groups must be 1)."""
        k = conv.kernel_size[0]
        if (
            conv.groups != 1
            or conv.kernel_size != (k, k)
            or conv.padding != (conv.dilation[0] * (k - 1) // 2,) * 2
        ):
            raise ValueError(f"DeformConv2d.from_conv: need a square 'same' conv, got {conv}")
        new = cls(
            conv.in_channels,
            conv.out_channels,
            k,
            stride=conv.stride[0],
            dilation=conv.dilation[0],
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None and new.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return deform_conv2d(
            x,
            self.offset(x),
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )


class DeformConvBlock(nn.Sequential):
    """``DeformConv2d -> BatchNorm2d -> ReLU``; ``(N, C_in, H, W) -> (N, C_out, H/s, W/s)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__(
            DeformConv2d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def make_stage_deformable(stage: nn.Sequential) -> nn.Sequential:
    """Replace ``conv2`` of every residual block of a torchvision ResNet stage, in place.

    Follows Sec. II-A1: "The second convolutions in Block 6, 7 are replaced with deformable
    convolution" -- Blocks 6 and 7 are the last stages of ResNet38; for a torchvision ResNet the
    counterpart is ``layer4`` (and optionally ``layer3``), whose ``conv2`` is the second
    convolution of both ``BasicBlock`` and ``Bottleneck``. Weights are copied, offsets start at 0,
    so the stage computes exactly what it did before.
    """
    for i, block in enumerate(stage):
        conv = getattr(block, "conv2", None)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"make_stage_deformable: block {i} has no Conv2d 'conv2': {block}")
        block.conv2 = DeformConv2d.from_conv(conv)
    return stage


# --------------------------------------------------------------------------- multi-step testing
class MultiStepTest(nn.Module):
    """Multi-step (shift) testing, Sec. II-C / Fig. 5: denser predictions without interpolation.

    The wrapped ``net`` predicts at output stride ``s`` (``stride`` or ``net.output_stride``):
    ``net.forward_lowres(x)`` if it has one, else ``net(x)``, must return ``(N, C, ceil(H/s),
    ceil(W/s))`` whose sample ``u`` is centred on input pixel ``s*u``. With ``steps = k`` per axis
    (``s % k == 0``) and sub-stride step ``f = s / k``:

    - shifts: for ``a, b`` in ``0..k-1`` the net runs on the image moved up by ``a*f`` and left by
      ``b*f`` pixels, ``x_ab[i, j] = x[i + a*f, j + b*f]`` (replicate padding at the bottom/right),
      so its sample ``(u, v)`` now sits on pixel ``(s*u + a*f, s*v + b*f)``; ``k*k`` runs in all;
    - interleave: ``dense[k*u + a, k*v + b] = y_ab[u, v]``, a ``(N, C, k*ceil(H/s), k*ceil(W/s))``
      map whose sample ``p`` sits on pixel ``f*p`` -- a stride-``f`` prediction;
    - output: if ``f == 1`` the dense map cropped to ``H x W`` (every pixel predicted, no
      interpolation); else :func:`upsample_stride_aligned` from stride ``f``.

    The paper's "4-steps testing" at stride 8 reads as ``steps=2`` (2 x 2 = 4 shifted runs).
    ``forward(x) -> logits (N, C, H, W)``; ``forward_ids`` as the semantic export contract.
    """

    def __init__(self, net: nn.Module, *, steps: int = 2, stride: int | None = None) -> None:
        super().__init__()
        stride = int(stride if stride is not None else getattr(net, "output_stride", 0))
        if stride < 1:
            raise ValueError("MultiStepTest: give stride= or wrap a net with an output_stride")
        if steps < 1 or stride % steps != 0:
            raise ValueError(
                f"MultiStepTest: steps must divide the output stride {stride}, got steps={steps}"
            )
        self.net = net
        self.steps = steps
        self.stride = stride
        self.output_stride = 1

    def _lowres(self, x: Tensor) -> Tensor:
        fn: Callable[[Tensor], Tensor] = getattr(self.net, "forward_lowres", self.net)
        return fn(x)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        k, s = self.steps, self.stride
        f = s // k
        hl, wl = -(-h // s), -(-w // s)
        padded = F.pad(x, (0, s - f, 0, s - f), mode="replicate")
        rows = []
        for a in range(k):
            cols = []
            for b in range(k):
                y = self._lowres(padded[:, :, a * f : a * f + h, b * f : b * f + w])
                if y.shape[-2:] != (hl, wl):
                    raise ValueError(
                        f"MultiStepTest: net output {tuple(y.shape[-2:])} for input {(h, w)}; "
                        f"expected ceil(H/{s}), ceil(W/{s}) = {(hl, wl)}"
                    )
                cols.append(y)
            rows.append(torch.stack(cols, dim=-1))  # (N, C, hl, wl, k_b)
        grid = torch.stack(rows, dim=-3)  # (N, C, hl, k_a, wl, k_b)
        dense = grid.reshape(n, grid.shape[1], hl * k, wl * k)
        return upsample_stride_aligned(dense, f, (h, w))

    @torch.no_grad()
    def forward_ids(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(ids uint8 (N, H, W), confidence float32 (N, H, W))`` from :meth:`forward`."""
        conf, ids = torch.softmax(self.forward(x), dim=1).max(dim=1)
        return ids.to(torch.uint8), conf.float()
