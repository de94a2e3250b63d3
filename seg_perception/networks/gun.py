"""Guided Upsampling Network (GUN, Mazzini, BMVC 2018) with the paper's ablation switches.

Default (the paper's final model): two DRN-D-22 branches with shared weights on the input
downsampled by 2 (medium resolution, ``layer0..layer4``, 128 ch) and by 4 (low resolution,
``layer0..layer6``, 512 ch) -> *postproc-sum* fusion module -> 1x1 classifier -> Guided
Upsampling Module steered by the *fusion* guidance module.

Switches (paper tables): ``encoder`` (Table 1), ``fusion`` (Table 2), ``decoder`` /
``guidance`` (Table 4), ``sampling`` (eq. 2 nearest / eq. 4 bilinear). ``width`` is not the
paper's: it scales every channel count (trunk, fusion post-processing, guidance convs) to fit
our CPU and shipped-weights budget; ``width=1`` is the paper's network, key for key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_perception.networks.drn import DRN, init_conv_bn
from seg_perception.networks.export import load_weights
from seg_perception.networks.gum import GuidedLogits, guided_ids, guided_logits, guided_upsample
from seg_perception.networks.layers import (
    BranchBatchNorm2d,
    ConvBNReLU,
    select_branch,
    use_branch_statistics,
)
from seg_perception.networks.resnet import scale_channels

__all__ = [
    "DECODERS",
    "ENCODERS",
    "FUSIONS",
    "GUIDANCES",
    "GUN",
    "SAMPLINGS",
    "build_gun",
    "guided_upsample",
]

#: encoder -> (low-res branch factor, medium-res branch factors, medium shares the trunk).
ENCODERS: dict[str, tuple[int, tuple[int, ...], bool]] = {
    "baseline": (1, (), True),
    "enc4": (4, (), True),
    "enc24": (4, (2,), False),
    "enc24shared": (4, (2,), True),
    "enc124shared": (4, (2, 1), True),
}
#: fusion -> (merge strategy, post-processing step).
FUSIONS: dict[str, tuple[str, bool]] = {
    "base_sum": ("sum", False),
    "base_concat": ("concat", False),
    "postproc_sum": ("sum", True),
    "postproc_concat": ("concat", True),
}
DECODERS = ("bilinear", "gum")
GUIDANCES = ("large_rf", "high_res", "fusion")
SAMPLINGS = ("nearest", "bilinear")

_MEDIUM_STAGE = "layer4"  # "only the first layers of the DRN-D-22 before dilated convolutions"
_HIGH_RES_STAGE = "layer2"  # 32 ch: "the last Convolution before downsampling" (high-res guide)
_POST_CHANNELS = 128  # at width 1; scale_channels(128, width) otherwise
_GUIDE_CHANNELS = (64, 32)  # large_rf's two CBRs / fusion guidance's 32-ch sum, at width 1


# --------------------------------------------------------------------------------------------
# Guided Upsampling Module (paper Sec. 4). Usable by any net: logits + offset table -> output.
# --------------------------------------------------------------------------------------------


def _offset_head(in_channels: int) -> nn.Conv2d:
    """1x1 conv -> 2 offset channels. Zero-initialised by :class:`GuidanceModule`, so an
    untrained GUM is plain upsampling (the identity start of a spatial transformer)."""
    return nn.Conv2d(in_channels, 2, 1, bias=False)


def _up2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class FusionModule(nn.Module):
    """Merge the low-res branch with the medium-res branch(es) (paper Sec. 3, Fig. 2).

    ``low (N, 512, h, w)`` is upsampled (bilinear) to the size of the highest-resolution medium
    input; every ``medium (N, 128, h_i, w_i)`` is "expanded from 128 to 512 channels" by a
    1x1 conv-BN; the signals are summed (+ReLU) or concatenated. ``postproc`` adds the
    dimensionality-reducing post-processing step: conv1x1-BN-ReLU to 128 ch + conv3x3-BN-ReLU
    ("adding more convolutions and non-linearities ... applied to a smaller feature space").
    Output ``(N, out_channels, H_m, W_m)``. With no medium input the merge is the identity.
    ``post_channels``: width of the post-processing step (128 in the paper).
    """

    def __init__(
        self,
        *,
        low_channels: int,
        medium_channels: int,
        n_medium: int,
        merge: str,
        postproc: bool,
        post_channels: int = _POST_CHANNELS,
    ) -> None:
        super().__init__()
        self.merge = merge
        self.expand = nn.ModuleList(
            ConvBNReLU(medium_channels, low_channels, 1, relu=False) for _ in range(n_medium)
        )
        merged = low_channels * (1 + n_medium) if merge == "concat" else low_channels
        self.post: nn.Module = nn.Identity()
        self.out_channels = merged
        if postproc:
            self.post = nn.Sequential(
                ConvBNReLU(merged, post_channels, 1), ConvBNReLU(post_channels, post_channels, 3)
            )
            self.out_channels = post_channels

    def forward(self, low: Tensor, mediums: list[Tensor]) -> Tensor:
        if not mediums:
            return self.post(low)
        size = mediums[-1].shape[-2:]
        parts = [F.interpolate(low, size=size, mode="bilinear", align_corners=False)]
        for exp, med in zip(self.expand, mediums, strict=True):
            m = exp(med)
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            parts.append(m)
        if self.merge == "concat":
            merged = torch.cat(parts, dim=1)
        else:  # chained adds: the sum of torch.stack(parts).sum(0) without the stacked copy
            merged = parts[0]
            for part in parts[1:]:
                merged = merged + part
            merged = torch.relu(merged)
        return self.post(merged)


class GuidanceModule(nn.Module):
    """Predict the Guidance Offset Table ``(N, 2, H, W)`` (channel 0 = p along x, 1 = q along
    y, in pixels of the low-res map) from the fusion output ``(N, C, h, w)`` and/or the
    high-res activation ``(N, 32, H_r, W_r)`` (paper Sec. 4, "Guidance module").

    - ``large_rf``: "three upsampling layers interleaved by Conv-BatchNorm-Relu blocks": x2,
      CBR3x3 C->64, x2, CBR3x3 64->32, up to (H, W), then the 1x1 offset head.
    - ``high_res``: "a single convolutional layer ... 1x1 kernel ... maps the 32-dimensional
      feature space to a 2-dimensional" one (64 parameters) on the high-res activation.
    - ``fusion``: the *base sum* module on both signals, "two Conv-BatchNorm blocks and a single
      upsampling layer": 1x1 conv-BN C->32 on the fusion output, upsampled to the high-res
      activation's size, plus 1x1 conv-BN 32->32 on the high-res activation, ReLU, 1x1 head.

    ``high_res`` / ``fusion`` predict at the high-res activation's resolution; the 2-channel
    table is then resized bilinearly to ``(H, W)`` (parameter-free part of grid generation).
    ``width`` scales the 64/32 channel counts above (``scale_channels``).
    """

    def __init__(
        self, kind: str, *, fusion_channels: int, high_res_channels: int, width: float = 1.0
    ) -> None:
        super().__init__()
        self.kind = kind
        c64, c32 = (scale_channels(c, width) for c in _GUIDE_CHANNELS)
        if kind == "large_rf":
            self.cbr1 = ConvBNReLU(fusion_channels, c64, 3)
            self.cbr2 = ConvBNReLU(c64, c32, 3)
            self.head = _offset_head(c32)
        elif kind == "high_res":
            self.head = _offset_head(high_res_channels)
        else:
            self.from_fusion = ConvBNReLU(fusion_channels, c32, 1, relu=False)
            self.from_high_res = ConvBNReLU(high_res_channels, c32, 1, relu=False)
            self.head = _offset_head(c32)
        init_conv_bn(self)
        nn.init.zeros_(self.head.weight)

    def forward(self, fused: Tensor, high_res: Tensor, size: tuple[int, int]) -> Tensor:
        if self.kind == "large_rf":
            x = self.cbr2(_up2(self.cbr1(_up2(fused))))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            return self.head(x)
        if self.kind == "high_res":
            x = high_res
        else:
            f = self.from_fusion(fused)
            f = F.interpolate(f, size=high_res.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.relu(f + self.from_high_res(high_res))
        # NCHW before resizing: a channels-last 2-channel map takes ATen's NHWC upsampling
        # kernel, which vectorises over the 2 channels (~2x slower forward and backward).
        off = self.head(x).contiguous()
        return F.interpolate(off, size=size, mode="bilinear", align_corners=False)


class GUN(nn.Module):
    """Guided Upsampling Network.

    ``forward(x)``: normalised image ``(N, 3, H, W)`` -> logits ``(N, num_classes, H, W)``.
    ``forward_ids(x)``: -> ``(class ids uint8 (N, H, W), confidence float (N, H, W))``.
    Use :func:`build_gun` to construct it.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        encoder: str,
        fusion: str,
        decoder: str,
        guidance: str,
        sampling: str,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        self.encoder, self.decoder = encoder, decoder
        self.guidance_kind, self.sampling = guidance, sampling
        self.low_factor, self.medium_factors, shared = ENCODERS[encoder]
        single = not self.medium_factors
        # Single-branch encoders (Table 1 baseline / enc4) are the whole DRN-D-22; the low-res
        # branch of a multi-resolution encoder is "all the layers of a DRN-D-22 with the
        # exception of the last two" (layer7 / layer8).
        self.trunk = DRN(last_stage="layer8" if single else "layer6", width=width)
        self.medium_trunk: DRN | None = None
        if not single and not shared:
            self.medium_trunk = DRN(last_stage=_MEDIUM_STAGE, width=width)
        # Shared weights ("the only difference is weight sharing between the two branches"):
        # the convolutions and BN affine parameters are shared; BN running statistics are kept
        # per branch, since the /2 and /4 inputs have different activation statistics.
        self._branch_norms: list[BranchBatchNorm2d] = []
        if shared and not single:
            n_branches = 1 + len(self.medium_factors)
            for stage in self.trunk.stage_names[: self.trunk.stage_names.index(_MEDIUM_STAGE) + 1]:
                self._branch_norms += use_branch_statistics(getattr(self.trunk, stage), n_branches)
        merge, postproc = FUSIONS[fusion]
        self.fusion = FusionModule(
            low_channels=self.trunk.out_channels,
            medium_channels=self.trunk.channels(_MEDIUM_STAGE),
            n_medium=len(self.medium_factors),
            merge=merge,
            postproc=postproc,
            post_channels=scale_channels(_POST_CHANNELS, width),
        )
        self.classifier = nn.Conv2d(self.fusion.out_channels, num_classes, 1)
        self.guidance: GuidanceModule | None = None
        if decoder == "gum":
            self.guidance = GuidanceModule(
                guidance,
                fusion_channels=self.fusion.out_channels,
                high_res_channels=self.trunk.channels(_HIGH_RES_STAGE),
                width=width,
            )
        init_conv_bn(self.fusion)

    def medium_encoder(self) -> DRN:
        """The DRN trunk run by the medium-resolution branch(es): the low-res trunk itself when
        weights are shared, else its own truncated copy."""
        return self.medium_trunk if self.medium_trunk is not None else self.trunk

    def _pyramid(self, x: Tensor) -> dict[int, Tensor]:
        """The input subsampled by every branch factor: ``{factor: (N, 3, H/f, W/f)}``.

        Area averaging (``f x f`` mean, i.e. anti-aliased). A level is pooled from the finest
        level whose factor divides its own (/4 = the 2x2 mean of /2): the same means up to float
        rounding (floor sizes compose too), reading a quarter of the pixels.
        """
        levels = {1: x}
        for factor in sorted({self.low_factor, *self.medium_factors}):
            src = max(f for f in levels if factor % f == 0)
            k = factor // src
            levels[factor] = levels[src] if k == 1 else F.avg_pool2d(levels[src], k, k)
        return levels

    def forward_parts(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """-> (low-res logits ``(N, K, h, w)``, offset table ``(N, 2, H, W)`` or None)."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        mediums: list[Tensor] = []
        high_res: Tensor | None = None
        inputs = self._pyramid(x)
        for b, factor in enumerate(self.medium_factors, start=1):  # coarse -> fine
            select_branch(self._branch_norms, b)
            taps = self.medium_encoder().forward_taps(
                inputs[factor], stop_after=_MEDIUM_STAGE, taps=(_HIGH_RES_STAGE,)
            )
            mediums.append(taps[_MEDIUM_STAGE])
            high_res = taps[_HIGH_RES_STAGE]
        select_branch(self._branch_norms, 0)
        low_in = inputs[self.low_factor]
        if high_res is None:  # single-branch encoders: high-res tap of the only branch
            taps = self.trunk.forward_taps(
                low_in, stop_after=self.trunk.stage_names[-1], taps=(_HIGH_RES_STAGE,)
            )
            low, high_res = taps[self.trunk.stage_names[-1]], taps[_HIGH_RES_STAGE]
        else:
            low = self.trunk(low_in)
        fused = self.fusion(low, mediums)
        logits = self.classifier(fused)
        offsets = None if self.guidance is None else self.guidance(fused, high_res, size)
        return logits, offsets

    def _upsample(self, low: Tensor, offsets: Tensor | None, size: tuple[int, int]) -> Tensor:
        if offsets is None:
            return F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        return guided_upsample(low, offsets, size=size, mode=self.sampling)

    def forward(self, x: Tensor) -> Tensor:
        low, offsets = self.forward_parts(x)
        return self._upsample(low, offsets, (int(x.shape[-2]), int(x.shape[-1])))

    def forward_train(self, x: Tensor) -> Tensor | GuidedLogits:
        """What the training loss reads: with GUM + nearest sampling the logits left unsampled
        (:class:`GuidedLogits`: the loss takes the log-probabilities of the target classes
        through them, never building the ``(N, K, H, W)`` logits in forward); else
        :meth:`forward`'s logits."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        low, offsets = self.forward_parts(x)
        if offsets is None or self.sampling != "nearest":
            return self._upsample(low, offsets, size)
        return guided_logits(low, offsets, size=size)

    def forward_ids(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """-> (class ids ``uint8 (N, H, W)``, max softmax probability ``float (N, H, W)``).

        With GUM the ids equal ``forward(x).argmax(1)`` without materialising the
        ``(N, K, H, W)`` logits (:func:`~seg_perception.networks.gum.guided_ids`: nearest
        sampling copies low-res argmaxes; bilinear sampling blends logit vectors only where the
        2x2 source cells disagree). With the bilinear decoder the logits are upsampled first.
        """
        size = (int(x.shape[-2]), int(x.shape[-1]))
        low, offsets = self.forward_parts(x)
        if offsets is None:
            logits = self._upsample(low, offsets, size)
            return logits.argmax(1).to(torch.uint8), logits.softmax(1).amax(1)
        return guided_ids(low, offsets, size=size, mode=self.sampling)


def _check(name: str, value: str, valid: tuple[str, ...] | dict) -> None:
    if value not in valid:
        raise ValueError(f"build_gun: invalid {name}={value!r}; valid: {', '.join(valid)}")


def build_gun(
    *,
    num_classes: int = 19,
    encoder: str = "enc24shared",
    fusion: str = "postproc_sum",
    decoder: str = "gum",
    guidance: str = "fusion",
    sampling: str = "nearest",
    width: float = 1.0,
    weights: str | None = None,
    backbone_weights: str | None = None,
) -> GUN:
    """Build GUN. ``weights``: a full GUN state dict file; ``backbone_weights``: a DRN-D-22
    state dict (e.g. converted ImageNet weights, of the same ``width``) loaded into the
    trunk(s) only. ``guidance`` and ``sampling`` only act with ``decoder="gum"``. ``width`` in
    ``(0, 1]`` scales every channel count (our CPU reduction, see the module docstring): 0.5
    halves the trunk (DRN 8..256 ch) and the fusion/guidance convs; 1.0 is the paper's GUN."""
    _check("encoder", encoder, ENCODERS)
    _check("fusion", fusion, FUSIONS)
    _check("decoder", decoder, DECODERS)
    _check("guidance", guidance, GUIDANCES)
    _check("sampling", sampling, SAMPLINGS)
    if not 0.0 < width <= 1.0:
        raise ValueError(f"build_gun: width must be in (0, 1], got {width!r}")
    if not 1 <= num_classes <= 255:
        raise ValueError(f"build_gun: num_classes must be in 1..255 (uint8 ids), got {num_classes}")
    model = GUN(
        num_classes=num_classes,
        encoder=encoder,
        fusion=fusion,
        decoder=decoder,
        guidance=guidance,
        sampling=sampling,
        width=width,
    )
    if backbone_weights is not None:
        load_weights(model.trunk, backbone_weights, ignore_unexpected=True)
        if model.medium_trunk is not None:
            load_weights(model.medium_trunk, backbone_weights, ignore_unexpected=True)
    if weights is not None:
        load_weights(model, weights)
    return model
