"""DRN-D-22: Dilated Residual Network, type D, 22 layers (Yu, Koltun & Funkhouser, CVPR 2017).

Layout (channels, stride / dilation), output stride 8 with 512 channels:

============  =======================================  ========  ===============
stage         content                                  channels  stride/dilation
============  =======================================  ========  ===============
``layer0``    conv 7x7 - BN - ReLU                     16        s1
``layer1``    conv 3x3 - BN - ReLU                     16        s1
``layer2``    conv 3x3 - BN - ReLU                     32        s2
``layer3``    2 x BasicBlock                           64        s2
``layer4``    2 x BasicBlock                           128       s2
``layer5``    2 x BasicBlock                           256       d2
``layer6``    2 x BasicBlock                           512       d4
``layer7``    conv 3x3 - BN - ReLU (no residual)       512       d2
``layer8``    conv 3x3 - BN - ReLU (no residual)       512       d1
============  =======================================  ========  ===============

``layer0..layer2`` are the plain-convolution "degridding" stem of type D and ``layer7/8`` the
residual-free degridding tail. The ImageNet classifier (pool + fc) is not part of this module.

``width`` scales every channel count above (``resnet.scale_channels``: multiples of 8, min 8);
this is our reduction to fit the CPU and the shipped-weights budget, not the DRN or GUN papers'.
Width 1 is the paper's network, key for key.

State-dict keys follow the layout of the authors' release (``layer0.0.weight``,
``layer3.0.conv1.weight``, ``layer3.0.downsample.0.weight``, ...), so a DRN-D-22 ImageNet
checkpoint converted to ``.safetensors``/``.pt`` loads with its ``fc.*`` keys dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from seg_perception.networks.export import load_weights
from seg_perception.networks.layers import ConvBNReLU
from seg_perception.networks.resnet import scale_channels

__all__ = ["DRN", "DRN_STAGES", "BasicBlock", "build_drn_d22", "init_conv_bn"]

#: Stage names in execution order.
DRN_STAGES: tuple[str, ...] = tuple(f"layer{i}" for i in range(9))

#: Output channels of every stage of DRN-D-22.
DRN_D22_CHANNELS: dict[str, int] = {
    "layer0": 16,
    "layer1": 16,
    "layer2": 32,
    "layer3": 64,
    "layer4": 128,
    "layer5": 256,
    "layer6": 512,
    "layer7": 512,
    "layer8": 512,
}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN with an identity (or 1x1 conv-BN projection) shortcut.

    ``(N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels,
            out_channels,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _stage(in_ch: int, out_ch: int, blocks: int, *, stride: int, dilation: int) -> nn.Sequential:
    # DRN type D keeps one dilation for every block of a dilated stage (layer5: 2, layer6: 4).
    layers = [BasicBlock(in_ch, out_ch, stride=stride, dilation=dilation)]
    layers += [BasicBlock(out_ch, out_ch, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class DRN(nn.Module):
    """DRN-D-22 trunk, optionally truncated after ``last_stage``.

    ``forward(x)``: ``(N, 3, H, W) -> (N, C, ceil(H/8), ceil(W/8))`` with ``C`` the channels of
    ``last_stage`` (512 for the full network, ``scale_channels(512, width)`` for a narrow one).
    A truncated trunk (e.g. ``last_stage="layer4"``, used by the medium-resolution branch of GUN
    when it does not share weights) only owns the stages it runs.
    """

    def __init__(self, *, last_stage: str = "layer8", width: float = 1.0) -> None:
        super().__init__()
        if last_stage not in DRN_STAGES:
            raise ValueError(
                f"DRN: unknown last_stage {last_stage!r}; valid: {', '.join(DRN_STAGES)}"
            )
        if not 0.0 < width <= 1.0:
            raise ValueError(f"DRN: width must be in (0, 1], got {width!r}")
        self.stage_names: tuple[str, ...] = DRN_STAGES[: DRN_STAGES.index(last_stage) + 1]
        self.width = width
        self.stage_channels = {k: scale_channels(c, width) for k, c in DRN_D22_CHANNELS.items()}
        ch = self.stage_channels
        builders = {
            "layer0": lambda: ConvBNReLU(3, ch["layer0"], 7),
            "layer1": lambda: ConvBNReLU(ch["layer0"], ch["layer1"], 3),
            "layer2": lambda: ConvBNReLU(ch["layer1"], ch["layer2"], 3, stride=2),
            "layer3": lambda: _stage(ch["layer2"], ch["layer3"], 2, stride=2, dilation=1),
            "layer4": lambda: _stage(ch["layer3"], ch["layer4"], 2, stride=2, dilation=1),
            "layer5": lambda: _stage(ch["layer4"], ch["layer5"], 2, stride=1, dilation=2),
            "layer6": lambda: _stage(ch["layer5"], ch["layer6"], 2, stride=1, dilation=4),
            "layer7": lambda: ConvBNReLU(ch["layer6"], ch["layer7"], 3, dilation=2),
            "layer8": lambda: ConvBNReLU(ch["layer7"], ch["layer8"], 3, dilation=1),
        }
        for name in self.stage_names:
            self.add_module(name, builders[name]())
        self.out_channels = ch[last_stage]
        init_conv_bn(self)

    def channels(self, stage: str) -> int:
        """Output channels of ``stage``."""
        return self.stage_channels[self._check_stage(stage)]

    def _check_stage(self, stage: str) -> str:
        if stage not in self.stage_names:
            raise ValueError(
                f"DRN: stage {stage!r} is not part of this trunk; valid: "
                f"{', '.join(self.stage_names)}"
            )
        return stage

    def forward_taps(
        self, x: Tensor, *, stop_after: str = "layer8", taps: Sequence[str] = ()
    ) -> dict[str, Tensor]:
        """Run ``layer0 .. stop_after`` and return ``{name: activation}`` for ``stop_after``
        and every stage named in ``taps`` (each must not come after ``stop_after``)."""
        last = self.stage_names.index(self._check_stage(stop_after))
        for t in taps:
            if self.stage_names.index(self._check_stage(t)) > last:
                raise ValueError(f"DRN: tap {t!r} comes after stop_after={stop_after!r}")
        wanted = {*taps, stop_after}
        out: dict[str, Tensor] = {}
        for name in self.stage_names[: last + 1]:
            x = self.get_submodule(name)(x)
            if name in wanted:
                out[name] = x
        return out

    def forward_features(self, x: Tensor, *, stop_after: str = "layer8") -> Tensor:
        """``(N, 3, H, W) -> activation of stage stop_after``."""
        return self.forward_taps(x, stop_after=stop_after)[stop_after]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x, stop_after=self.stage_names[-1])


def init_conv_bn(module: nn.Module) -> None:
    """He (fan-out) init for convs, BN to identity; used by every GUN block."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_drn_d22(
    *, weights: str | None = None, last_stage: str = "layer8", width: float = 1.0
) -> DRN:
    """DRN-D-22 trunk; ``weights``: optional ``.safetensors`` / ``.pt`` state dict path;
    ``width``: channel multiplier in ``(0, 1]`` (see the module docstring).

    Keys of the file that this (possibly truncated) trunk does not own, e.g. the ImageNet
    ``fc.*`` or ``layer5..8`` for ``last_stage="layer4"``, are ignored; missing keys are errors.
    """
    model = DRN(last_stage=last_stage, width=width)
    if weights is not None:
        load_weights(model, weights, ignore_unexpected=True)
    return model
