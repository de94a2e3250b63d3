"""ResNet backbones with an optional width multiplier.

``build_resnet(depth=d)`` is torchvision's ``resnet{d}(weights=None)`` unchanged (same module tree
and state-dict keys, so ImageNet checkpoints and every full-width model keep loading).
``build_resnet(depth=18|34, width=w)`` with ``w < 1`` is the same BasicBlock network with every
stage ``w`` times as wide (:class:`NarrowResNet`).

The width multiplier is OUR reduction to fit the CPU and the shipped-weights budget (issue 6),
not something any of the papers use: ShelfNet and the ASP model are specified on full-width
ResNets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["DEPTHS", "NarrowResNet", "build_resnet", "scale_channels", "stage_widths"]

# depth -> (block kind, blocks per stage), as in He et al. / torchvision
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
BASE_WIDTHS = (64, 128, 256, 512)


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded (half up) to a multiple of 8, at least 8; exact at width 1.

    The one rounding rule of every width switch of the package (ResNet, DRN-D-22, GUN heads).
    """
    if width == 1.0:
        return channels
    return max(8, 8 * int(channels * width / 8 + 0.5))


def stage_widths(width: float) -> tuple[int, int, int, int]:
    """Stage widths ``64 * width * 2^i`` rounded to a multiple of 8 (min 8), i = 0..3."""
    return tuple(scale_channels(c, width) for c in BASE_WIDTHS)  # type: ignore[return-value]


def _downsample(
    in_channels: int, out_channels: int, stride: int, norm_layer: Callable[[int], nn.Module]
) -> nn.Sequential | None:
    """torchvision's projection shortcut (1x1 conv + norm) where shape changes, else None."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        norm_layer(out_channels),
    )


class NarrowResNet(nn.Module):
    """A BasicBlock ResNet with arbitrary stage widths and torchvision's attribute names.

    ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc`` exist as in
    ``torchvision.models.ResNet`` (``fc`` is an ``Identity``), so ``IntermediateLayerGetter``,
    ``BackboneWithFPN`` and ShelfNet's ``ResNetFeatures`` take it as they take a torchvision
    ResNet. ``inplanes`` equals the last stage width as on a built torchvision ResNet.

    Shapes: ``x (N, 3, H, W)`` -> ``layer1 (N, c0, H/4, W/4)``, ``layer2 (N, c1, H/8, W/8)``,
    ``layer3 (N, c2, H/16, W/16)``, ``layer4 (N, c3, H/32, W/32)`` with
    ``(c0, c1, c2, c3) = stage_channels``; ``forward(x)`` returns the pooled ``(N, c3)``.
    """

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        channels: tuple[int, int, int, int],
        *,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        from torchvision.models.resnet import BasicBlock  # lazy: DRN/GUN import scale_channels

        super().__init__()
        norm = norm_layer if norm_layer is not None else nn.BatchNorm2d
        self.stage_channels = tuple(channels)
        stem = channels[0]  # torchvision's stem is as wide as stage 1 (64)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = stem
        for i, (n, out_ch) in enumerate(zip(blocks, channels, strict=True)):
            stride = 1 if i == 0 else 2
            layers: list[nn.Module] = [
                BasicBlock(
                    in_ch,
                    out_ch,
                    stride,
                    _downsample(in_ch, out_ch, stride, norm),
                    norm_layer=norm,
                )
            ]
            layers += [BasicBlock(out_ch, out_ch, norm_layer=norm) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            in_ch = out_ch
        self.inplanes = in_ch
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        # torchvision's initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet(
    *,
    depth: int,
    width: float = 1.0,
    norm_layer: Callable[[int], nn.Module] | None = None,
) -> nn.Module:
    """A ResNet-``depth`` with no pretrained weights; ``stage_channels`` set on the result.

    Args:
        depth: 18, 34 (BasicBlock) or 50, 101 (Bottleneck).
        width: stage width multiplier in ``(0, 1]``. ``1.0`` returns exactly torchvision's
            ``resnet{depth}(weights=None, norm_layer=...)``; ``< 1`` (depths 18/34 only) returns a
            :class:`NarrowResNet` with stage widths :func:`stage_widths` (``0.5`` ->
            32/64/128/256).
        norm_layer: normalisation factory ``channels -> module`` (default ``BatchNorm2d``).

    Returns a module with ``stage_channels`` = output channels of ``layer1..layer4``
    (64/128/256/512 for 18/34, 256/512/1024/2048 for 50/101 at width 1).
    """
    if depth not in DEPTHS:
        raise ValueError(f"build_resnet: depth must be one of {sorted(DEPTHS)}, got {depth!r}")
    if not 0.0 < width <= 1.0:
        raise ValueError(f"build_resnet: width must be in (0, 1], got {width!r}")
    kind, blocks = DEPTHS[depth]
    if width == 1.0:
        kwargs = {} if norm_layer is None else {"norm_layer": norm_layer}
        from torchvision import models

        net = getattr(models, f"resnet{depth}")(weights=None, **kwargs)
        expansion = 4 if kind == "bottleneck" else 1
        net.stage_channels = tuple(c * expansion for c in BASE_WIDTHS)
        return net
    if kind != "basic":
        raise ValueError(
            f"build_resnet: width < 1 needs a BasicBlock depth (18 or 34), got depth={depth} "
            f"with width={width}"
        )
    return NarrowResNet(blocks, stage_widths(width), norm_layer=norm_layer)
