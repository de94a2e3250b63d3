"""Semantic segmentation head of the panoptic ASP model (fusion-scheme paper, Sec. III-B).

The head sits on the four FPN levels of the Mask R-CNN backbone (torchvision keys ``'0'..'3'``,
strides 4, 8, 16, 32, 256 channels each in the paper's model,
``fpn_channels`` in the CPU variants):

* ``head="asp"`` (the paper's model): an Atrous Spatial Pyramid at 1/32 and 1/16, two 3x3 convs
  at 1/8 and 1/4, each level giving 128 maps; a refinement pyramid adds every level, upsampled
  x2, to the next finer one, coarse to fine; the four fused levels are upsampled to 1/4,
  concatenated (512 maps) and classified by a 1x1 conv.
* ``head="unified"`` (the paper's "Unified baseline", Table I): "two 3x3 convolutions for the
  segmentation head of each layer", no ASP and no refinement pyramid; the concatenation and the
  1x1 classifier are kept, so the two heads differ only in the parts the paper adds.

Every stage is its own module (``level_heads['p5']``, ``refine.adds[i]``, ``classifier``) so
that tests and tools can hook them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# torchvision's BackboneWithFPN output keys for the levels the head uses, fine -> coarse.
FPN_KEYS: tuple[str, ...] = ("0", "1", "2", "3")
LEVEL_NAMES: tuple[str, ...] = ("p2", "p3", "p4", "p5")  # strides 4, 8, 16, 32
HEAD_KINDS: tuple[str, ...] = ("asp", "unified")


class ConvGNReLU(nn.Sequential):
    """``Conv2d -> GroupNorm -> ReLU``; ``(N, C_in, H, W) -> (N, C_out, H, W)``.

    "Each convolution is followed by a Group Normalization layer [...] Each Group Normalization
    layer is followed by a non-linear ReLU activation." The paper gives no group count; 32 is the
    default of the GroupNorm paper it cites [39].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dilation: int = 1,
        num_groups: int = 32,
    ) -> None:
        if out_channels % num_groups:
            raise ValueError(
                f"ConvGNReLU: out_channels={out_channels} is not divisible by "
                f"num_groups={num_groups}"
            )
        padding = dilation * (kernel_size - 1) // 2
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, nn.GroupNorm(num_groups, out_channels), nn.ReLU(inplace=True))


class AtrousSpatialPyramid(nn.Module):
    """One 1x1 conv and three dilated 3x3 convs in parallel, concatenated, reduced by a 1x1 conv.

    ``(N, C_in, H, W) -> (N, C_out, H, W)``. No image-level pooling branch: "we do not use
    pooling operations as in [3], which would constrain the model to a fixed input size". The
    reduction ("passed through 128 1x1 filters") is followed by GroupNorm + ReLU like every other
    convolution of the head.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 128,
        *,
        rates: Sequence[int] = (6, 12, 18),
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        branches = [ConvGNReLU(in_channels, out_channels, 1, num_groups=num_groups)]
        branches += [
            ConvGNReLU(in_channels, out_channels, 3, dilation=r, num_groups=num_groups)
            for r in rates
        ]
        self.branches = nn.ModuleList(branches)
        self.project = ConvGNReLU(
            out_channels * len(branches), out_channels, 1, num_groups=num_groups
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class TwoConvHead(nn.Sequential):
    """Two 3x3 ``ConvGNReLU``; ``(N, C_in, H, W) -> (N, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int = 128, *, num_groups: int = 32) -> None:
        super().__init__(
            ConvGNReLU(in_channels, out_channels, 3, num_groups=num_groups),
            ConvGNReLU(out_channels, out_channels, 3, num_groups=num_groups),
        )


class UpsampleAdd(nn.Module):
    """``fine + upsample(coarse)``: ``(N, C, h, w), (N, C, 2h, 2w) -> (N, C, 2h, 2w)``.

    Upsampled to the fine map's exact size (bilinear), so odd sizes at the borders stay aligned.
    """

    def forward(self, coarse: Tensor, fine: Tensor) -> Tensor:
        up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return fine + up


class RefinementPyramid(nn.Module):
    """Refinement pyramid: "Starting with the highest scale layer, the feature maps are upsampled
    two times and are added to the output of the following layer."

    Input and output: a list of maps ordered fine -> coarse (1/4 ... 1/32). ``adds[0]`` fuses
    1/32 into 1/16, ``adds[1]`` the result into 1/8, ``adds[2]`` into 1/4.
    """

    def __init__(self, num_levels: int = 4) -> None:
        super().__init__()
        self.adds = nn.ModuleList(UpsampleAdd() for _ in range(num_levels - 1))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if len(features) != len(self.adds) + 1:
            raise ValueError(
                f"RefinementPyramid: expected {len(self.adds) + 1} levels, got {len(features)}"
            )
        fused = [features[-1]]  # coarse -> fine while building
        for add, fine in zip(self.adds, reversed(features[:-1]), strict=True):
            fused.append(add(fused[-1], fine))
        return fused[::-1]


class SemanticHead(nn.Module):
    """FPN features -> semantic logits at 1/4 of the (padded) network input.

    Args:
        in_channels: FPN channels (256 in torchvision's ResNet-FPN).
        num_classes: semantic classes (19 Cityscapes trainIds).
        head: ``"asp"`` (ASP + refinement pyramid) or ``"unified"`` (two 3x3 convs everywhere).
        channels: maps per level (the paper: 128; 4 levels concatenated = 512).
        num_groups: GroupNorm groups.
        rates: ASP dilation rates.

    Input: mapping with torchvision FPN keys ``'0'..'3'`` of ``(N, in_channels, H/s, W/s)``,
    s = 4, 8, 16, 32 (extra keys such as ``'pool'`` are ignored).
    Output: ``(N, num_classes, H/4, W/4)`` logits.
    """

    def __init__(
        self,
        in_channels: int = 256,
        num_classes: int = 19,
        *,
        head: str = "asp",
        channels: int = 128,
        num_groups: int = 32,
        rates: Sequence[int] = (6, 12, 18),
    ) -> None:
        super().__init__()
        if head not in HEAD_KINDS:
            raise ValueError(f"SemanticHead: unknown head {head!r}; valid: {', '.join(HEAD_KINDS)}")
        self.head = head
        level_heads: dict[str, nn.Module] = {}
        for name in LEVEL_NAMES:
            if head == "asp" and name in ("p4", "p5"):
                level_heads[name] = AtrousSpatialPyramid(
                    in_channels, channels, rates=rates, num_groups=num_groups
                )
            else:
                level_heads[name] = TwoConvHead(in_channels, channels, num_groups=num_groups)
        self.level_heads = nn.ModuleDict(level_heads)
        self.refine: RefinementPyramid | None = (
            RefinementPyramid(len(LEVEL_NAMES)) if head == "asp" else None
        )
        self.classifier = nn.Conv2d(channels * len(LEVEL_NAMES), num_classes, 1)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        missing = [k for k in FPN_KEYS if k not in features]
        if missing:
            raise KeyError(
                f"SemanticHead: FPN features lack keys {missing}; got {sorted(features)}"
            )
        levels = [
            self.level_heads[name](features[key])
            for name, key in zip(LEVEL_NAMES, FPN_KEYS, strict=True)
        ]
        if self.refine is not None:
            levels = self.refine(levels)
        size = levels[0].shape[-2:]
        # "the fused outputs are upsampled and concatenated into 512 feature maps at 1/4"
        upsampled = [levels[0]] + [
            F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in levels[1:]
        ]
        return self.classifier(torch.cat(upsampled, dim=1))
