"""Small building blocks shared by every network of the package."""

from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> ReLU``; ``(N, C_in, H, W) -> (N, C_out, H/stride, W/stride)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        relu: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
