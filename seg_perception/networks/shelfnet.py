"""ShelfNet: the multi-path segmentation network of Zhuang & Yang (``shelfnet-multipath.txt``).

Columns, as numbered in the paper (Sec. 3.2 "we denote backbone as column 0"):

- column 0: a torchvision ResNet; levels A-D are its stride 4/8/16/32 outputs;
- column 1: a 1x1 conv + BN + ReLU per level reducing the backbone widths
  (:class:`ChannelReduction`);
- column 2: a decoder (up) column, :class:`DecoderColumn`;
- columns 3-4, 5-6, ...: ``column_pairs`` encoder (down) / decoder (up) pairs, :class:`ShelfPair`
  (Sec. 3.1: "we can add another pair of down-sample and up-sample branches (denoted as branches 5
  and 6) after branch 4"). The paper's network is ``column_pairs=1``; ``0`` leaves the single
  decoder of columns 1-2 ("branches 1 and 2 can be viewed as another SegNet").

Lateral connections are sums ("outputs from down-sample branch and up-sample branch are summed up")
at every level, except that an encoder column starts its lowest level D from its own level C only:
this is the reading under which the paper's count holds ("for a multi-path network with the same
spatial levels, the total number of FCN paths is 29" -- see ``count_fcn_paths`` in the tests).
Every node is one residual block: the shared-weights block of Sec. 3.3 (default) or a plain one.
The top (stride 4) level of the last decoder column has the 1x1 classifier used at inference.

Switches beyond the paper (each says where it comes from):

- ``deep_supervision`` (default on): a 1x1 classifier on levels B, C and D too, whose logits the
  training loss adds (``loss.aux_weight``). NOT in the ShelfNet paper, which names no auxiliary
  loss: our addition. The authors' released code does train with extra heads (the real-time
  ShelfNet18 sums the losses of three output heads, the PyTorch-Encoding code adds an auxiliary
  FCN head) and PSPNet's deep supervision gives the 0.4 weight; ``False`` is the paper's net.
- ``deformable``: the second 3x3 conv of every block of the last ResNet stage (``layer4``) a
  deformable convolution -- RelationNet's backbone (Sec. II-A1: "The second convolutions in Block
  6, 7 are replaced with deformable convolution"; Blocks 6-7 close its ResNet-38, ``layer4`` is the
  last stage of a torchvision ResNet); the RelationNet recipe turns it on. No ONNX export (ONNX
  has DeformConv only from opset 19, which torchvision's exporter does not map): backend torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models

from seg_perception.networks.export import load_weights, read_state_dict
from seg_perception.networks.layers import ConvBNReLU
from seg_perception.networks.relation import (
    RelationModule,
    make_stage_deformable,
    upsample_stride_aligned,
)
from seg_perception.networks.resnet import build_resnet

__all__ = [
    "BACKBONES",
    "BLOCKS",
    "ChannelReduction",
    "DecoderColumn",
    "PlainResidualBlock",
    "ResNetFeatures",
    "SharedResidualBlock",
    "ShelfNet",
    "ShelfPair",
    "build_shelfnet",
]

# backbone name -> ResNet depth (networks/resnet.py; torchvision's ResNets at backbone_width 1)
BACKBONES: dict[str, int] = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
# The paper does not print the reduced widths. It reduces "the channel number of outputs from
# ResNet for faster running speed" like Light-Weight RefineNet; we take 64/128/256/512, i.e. a
# 4x reduction of the bottleneck ResNet50/101 widths 256..2048 (the authors' released ShelfNet50
# uses these) and a width-preserving 1x1 projection for ResNet18/34.
DEFAULT_REDUCED_CHANNELS = (64, 128, 256, 512)
# The paper gives no dropout rate ("A drop-out layer is added between two convolutional layers");
# 0.25 is the value in the authors' released code.
DEFAULT_DROPOUT = 0.25
TOTAL_STRIDE = 32  # inputs are padded to a multiple of the backbone's stride


# --------------------------------------------------------------------------- residual blocks
class SharedResidualBlock(nn.Module):
    """Shared-weights residual block (Sec. 3.3, Fig. (b)); ``(N, C, H, W) -> (N, C, H, W)``.

    ``relu(x + bn2(conv(dropout(relu(bn1(conv(x)))))))``: "The two convolutional layers in the
    same block share the same weights, but the two batch normalization layers are different" and
    "A drop-out layer is added between two convolutional layers". One 3x3 weight tensor is applied
    twice, so the block has half the conv parameters of :class:`PlainResidualBlock`.
    """

    def __init__(self, channels: int, *, dropout: float = DEFAULT_DROPOUT) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout2d(dropout)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv(x)))
        out = self.bn2(self.conv(self.dropout(out)))
        return F.relu(out + x)


class PlainResidualBlock(nn.Module):
    """Standard residual block (paper Fig. (a)): two 3x3 convs with their own weights, no dropout.

    ``(N, C, H, W) -> (N, C, H, W)``; the ablation baseline for :class:`SharedResidualBlock`.
    """

    def __init__(self, channels: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        del dropout  # the plain block of Fig. (a) has none; accepted for a uniform signature
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


BLOCKS: dict[str, type[nn.Module]] = {"shared": SharedResidualBlock, "plain": PlainResidualBlock}
BlockFactory = Callable[[int], nn.Module]


def _up(in_channels: int, out_channels: int) -> nn.Module:
    """Learned 2x upsampling ``(N, C_in, h, w) -> (N, C_out, 2h, 2w)`` between decoder levels."""
    return nn.ConvTranspose2d(
        in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False
    )


# --------------------------------------------------------------------------- columns
class ResNetFeatures(nn.Module):
    """Column 0: a ResNet without its classifier (torchvision's, or ``resnet.NarrowResNet``).

    ``(N, 3, H, W)`` with ``H, W`` multiples of 32 -> 4 maps ``(N, channels[l], H/2^(l+2), ...)``.
    """

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        if hasattr(resnet, "stage_channels"):  # set by resnet.build_resnet
            self.channels = tuple(resnet.stage_channels)
        else:  # a plain torchvision ResNet
            expansion = 4 if isinstance(resnet.layer1[0], models.resnet.Bottleneck) else 1
            self.channels = tuple(w * expansion for w in (64, 128, 256, 512))

    def forward(self, x: Tensor) -> list[Tensor]:
        a = self.layer1(self.stem(x))
        b = self.layer2(a)
        c = self.layer3(b)
        return [a, b, c, self.layer4(c)]


class ChannelReduction(nn.ModuleList):
    """Column 1: a 1x1 ``ConvBNReLU`` per level, ``in_channels[l] -> out_channels[l]``."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__(
            ConvBNReLU(i, o, 1) for i, o in zip(in_channels, out_channels, strict=True)
        )

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:  # type: ignore[override]
        return [conv(f) for conv, f in zip(self, feats, strict=True)]


class DecoderColumn(nn.Module):
    """Column 2, up-sampling: ``out[D] = blk(in[D])``, ``out[l] = blk(up(out[l+1]) + in[l])``.

    Lists are ordered top (A, stride 4) to bottom (D, stride 32); ``channels[l]`` per level.
    """

    def __init__(self, channels: Sequence[int], block: BlockFactory) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(block(c) for c in channels)
        self.ups = nn.ModuleList(
            _up(channels[i + 1], channels[i]) for i in range(len(channels) - 1)
        )

    def forward(self, lateral: Sequence[Tensor]) -> list[Tensor]:
        out: list[Tensor] = [self.blocks[-1](lateral[-1])]
        for i in range(len(lateral) - 2, -1, -1):
            out.insert(0, self.blocks[i](self.ups[i](out[0]) + lateral[i]))
        return out


class ShelfPair(nn.Module):
    """An encoder (down) column followed by a decoder (up) column, e.g. columns 3 and 4.

    Encoder: ``e[A] = blk(in[A])``, ``e[l] = blk(down(e[l-1]) + in[l])`` for the middle levels and
    ``e[D] = blk(down(e[C]))`` (no lateral at D, see the module docstring). Decoder: starts from
    ``e[D]`` and ``d[l] = blk(up(d[l+1]) + e[l])``. ``down`` is a stride-2 3x3 ``ConvBNReLU``
    doubling the width, ``up`` a stride-2 transposed conv halving it. Lists top to bottom.
    """

    def __init__(self, channels: Sequence[int], block: BlockFactory) -> None:
        super().__init__()
        n = len(channels)
        self.enc_blocks = nn.ModuleList(block(c) for c in channels)
        self.downs = nn.ModuleList(
            ConvBNReLU(channels[i], channels[i + 1], 3, stride=2) for i in range(n - 1)
        )
        self.dec_blocks = nn.ModuleList(block(c) for c in channels[:-1])
        self.ups = nn.ModuleList(_up(channels[i + 1], channels[i]) for i in range(n - 1))

    def forward(self, lateral: Sequence[Tensor]) -> list[Tensor]:
        n = len(lateral)
        enc = [self.enc_blocks[0](lateral[0])]
        for i in range(1, n - 1):
            enc.append(self.enc_blocks[i](self.downs[i - 1](enc[-1]) + lateral[i]))
        bottom = self.enc_blocks[n - 1](self.downs[n - 2](enc[-1]))
        out = [bottom]
        for i in range(n - 2, -1, -1):
            out.insert(0, self.dec_blocks[i](self.ups[i](out[0]) + enc[i]))
        return out


# --------------------------------------------------------------------------- network
class ShelfNet(nn.Module):
    """ResNet + channel reduction + decoder + ``column_pairs`` encoder/decoder pairs + heads.

    - ``forward(x)``, ``x`` ImageNet-normalised ``(N, 3, H, W)`` (any size; padded internally to a
      multiple of 32 and cropped back). Eval: logits ``(N, num_classes, H, W)`` from the top head.
      Training: ``{"out": top logits (N, K, H, W), "aux": [logits (N, K, H, W) of levels B, C, D]
      (``deep_supervision``: stride 8/16/32 heads upsampled; ``[]`` without), "features": (N,
      C_f, ceil(H/4), ceil(W/4)) the map fed to the top classifier (for a similarity subnet /
      SCL)}``.
    - ``forward_lowres(x)``: top logits at stride 4, ``(N, K, ceil(H/4), ceil(W/4))``.
    - ``forward_ids(x)``: ``(ids uint8 (N, H, W), confidence float32 (N, H, W))``; the upsampling
      is bilinear, so the argmax is taken after upsampling the logits; confidence = max softmax.

    Upsampling to input size is :func:`upsample_stride_aligned` (stride-4 sample ``u`` sits on
    pixel ``4u``, the centre of the conv chain's receptive field).
    """

    output_stride = 4

    def __init__(
        self,
        backbone: ResNetFeatures,
        *,
        num_classes: int,
        reduced_channels: Sequence[int] = DEFAULT_REDUCED_CHANNELS,
        column_pairs: int = 1,
        block: BlockFactory,
        relation: bool = False,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        ch = tuple(reduced_channels)
        self.num_classes = num_classes
        self.backbone = backbone
        self.reduce = ChannelReduction(backbone.channels, ch)
        self.decoder = DecoderColumn(ch, block)
        self.pairs = nn.ModuleList(ShelfPair(ch, block) for _ in range(column_pairs))
        self.relation = RelationModule(ch[0], ch[0] // 2) if relation else None
        top_in = self.relation.out_channels if self.relation is not None else ch[0]
        # heads[0] is the top (stride 4) classifier, used at inference; heads[1:] the levels B-D
        # of deep supervision (our addition, see the module docstring)
        self.heads = nn.ModuleList(
            nn.Conv2d(c, num_classes, 1) for c in (top_in, *(ch[1:] if deep_supervision else ()))
        )

    def _columns(self, x: Tensor) -> tuple[list[Tensor], tuple[int, int]]:
        """Pad to a multiple of 32, run columns 0..last; levels A..D of the last column."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % TOTAL_STRIDE, 0, (-h) % TOTAL_STRIDE))
        cols = self.decoder(self.reduce(self.backbone(x)))
        for pair in self.pairs:
            cols = pair(cols)
        return cols, (h, w)

    def _top(self, level_a: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Features and logits of the top head, cropped to ``ceil(size / 4)``."""
        feats = level_a[..., : -(-size[0] // 4), : -(-size[1] // 4)]  # drop the padding first
        if self.relation is not None:
            feats = self.relation(feats)
        return feats, self.heads[0](feats)

    def forward_lowres(self, x: Tensor) -> Tensor:
        cols, size = self._columns(x)
        return self._top(cols[0], size)[1]

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        cols, size = self._columns(x)
        feats, top = self._top(cols[0], size)
        out = upsample_stride_aligned(top, 4, size)
        if not self.training:
            return out
        # levels B-D with deep supervision; none without (only the top head is built)
        heads = list(self.heads[1:])
        aux = [
            upsample_stride_aligned(head(c), 4 * 2**i, size)
            for i, (head, c) in enumerate(zip(heads, cols[1 : 1 + len(heads)], strict=True), 1)
        ]
        return {"out": out, "aux": aux, "features": feats}

    def forward_ids(self, x: Tensor) -> tuple[Tensor, Tensor]:
        size = (x.shape[-2], x.shape[-1])
        logits = upsample_stride_aligned(self.forward_lowres(x), 4, size)
        # max softmax probability = 1 / sum(exp(l - l_max)): same ids as softmax().max(), and no
        # full-resolution softmax planes (about half of a frame's time in onnxruntime)
        top, ids = logits.max(dim=1)
        conf = torch.exp(logits - top.unsqueeze(1)).sum(dim=1).reciprocal()
        return ids.to(torch.uint8), conf


# --------------------------------------------------------------------------- builder
def _load_backbone(resnet: nn.Module, path: str) -> None:
    """Load an ImageNet ResNet state dict into ``resnet`` ignoring ``fc.*``; any other missing,
    unexpected or mis-shaped key is a ValueError naming ``path``."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    try:
        res = resnet.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(
            f"backbone_weights {path!r} does not fit the {type(resnet).__name__}: {err}"
        ) from None
    missing = [k for k in res.missing_keys if not k.startswith("fc.")]
    if missing or res.unexpected_keys:
        raise ValueError(
            f"backbone_weights {path!r} does not fit the backbone: missing {missing[:8]} "
            f"({len(missing)}), unexpected {res.unexpected_keys[:8]} ({len(res.unexpected_keys)})"
        )


def build_shelfnet(
    *,
    num_classes: int = 19,
    backbone: str = "resnet18",
    backbone_width: float = 1.0,
    backbone_weights: str | None = None,
    column_pairs: int = 1,
    block: str = "shared",
    reduced_channels: Sequence[int] = DEFAULT_REDUCED_CHANNELS,
    dropout: float = DEFAULT_DROPOUT,
    weights: str | None = None,
    relation: bool = False,
    deep_supervision: bool = True,
    deformable: bool = False,
) -> ShelfNet:
    """Build a :class:`ShelfNet` (no downloads; weights only from the given files).

    Args:
        num_classes: classifier outputs (19 Cityscapes trainIds).
        backbone: one of ``BACKBONES`` (torchvision ResNets, built with ``weights=None``).
        backbone_width: ResNet stage-width multiplier in ``(0, 1]`` (``resnet.build_resnet``;
            < 1 for resnet18/34 only). Our CPU reduction, not the paper's: 1.0 is the paper's
            backbone; 0.5 gives stages of 32/64/128/256 channels (pair it with smaller
            ``reduced_channels``).
        backbone_weights: ImageNet ResNet state dict (``.pth``/``.pt`` via
            ``torch.load(weights_only=True)`` or ``.safetensors``, read by
            ``export.read_state_dict``); ``fc.*`` keys are ignored.
        column_pairs: encoder/decoder column pairs after decoder column 2; 1 = the paper's
            ShelfNet (columns 1-4), 2 adds columns 5-6, 0 = columns 1-2 only.
        block: ``"shared"`` (shared-weights residual block) or ``"plain"``.
        reduced_channels: widths of column 1 (and every later column) at levels A-D.
        dropout: dropout rate inside the shared-weights block.
        weights: full ShelfNet state dict, loaded last and strictly (``export.load_weights``).
        relation: insert a :class:`RelationModule` before the top classifier.
        deep_supervision: classifiers on levels B-D for the training loss (our addition, not the
            paper's; see the module docstring). Inference uses the top classifier either way.
        deformable: RelationNet's deformable ``layer4`` (see the module docstring); built after
            ``backbone_weights`` are loaded (the offsets start at zero: the same function).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    if not 0.0 < backbone_width <= 1.0:
        raise ValueError(f"backbone_width must be in (0, 1], got {backbone_width!r}")
    if backbone_width < 1.0 and BACKBONES[backbone] not in (18, 34):
        raise ValueError(
            f"backbone_width < 1 needs backbone resnet18 or resnet34, got backbone={backbone!r} "
            f"with backbone_width={backbone_width}"
        )
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; valid: {', '.join(BLOCKS)}")
    if column_pairs < 0:
        raise ValueError(f"column_pairs must be >= 0, got {column_pairs}")
    if len(reduced_channels) != 4 or min(reduced_channels) < 2:
        raise ValueError(f"reduced_channels must be 4 widths >= 2, got {tuple(reduced_channels)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")

    resnet = build_resnet(depth=BACKBONES[backbone], width=backbone_width)
    if backbone_weights is not None:
        _load_backbone(resnet, backbone_weights)
    if deformable:
        make_stage_deformable(resnet.layer4)

    block_cls = BLOCKS[block]
    net = ShelfNet(
        ResNetFeatures(resnet),
        num_classes=num_classes,
        reduced_channels=reduced_channels,
        column_pairs=column_pairs,
        block=lambda c: block_cls(c, dropout=dropout),
        relation=relation,
        deep_supervision=deep_supervision,
    )
    if weights is not None:
        load_weights(net, weights)
    return net
