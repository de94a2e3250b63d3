"""Mask R-CNN half of the panoptic ASP model: frozen-BN ResNet-FPN backbone and detection heads.

The paper's model is torchvision's Mask R-CNN R50-FPN ("we use the ResNet50-FPN Mask R-CNN"):
:func:`build_resnet_fpn` + :func:`build_mask_rcnn` with their defaults give exactly that module
tree, the same state-dict keys and shapes, and (for a given seed) the same initial weights as
``resnet_fpn_backbone("resnet50", norm_layer=AffineFrozenBatchNorm2d)`` + ``MaskRCNN(...)``.

The switches (``backbone`` resnet18/34, ``width``, ``fpn_channels``, ``box_representation``,
``mask_channels``) are OUR reduction for the CPU and the shipped-weights budget (issue 6), not
the paper's: they keep the architecture (ResNet -> 4-level FPN + max-pool level -> RPN, 7x7 box
RoIs -> two-FC head, 14x14 mask RoIs -> four 3x3 convs + deconv) and only narrow it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from seg_perception.networks.resnet import build_resnet

#: backbone switch -> ResNet depth
BACKBONES: dict[str, int] = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
#: MaskRCNN arguments this module builds itself (the switch that sizes each one)
BUILT_HERE: dict[str, str] = {
    "num_classes": "num_things",
    "rpn_head": "fpn_channels",
    "box_head": "fpn_channels / box_representation",
    "box_predictor": "box_representation",
    "mask_head": "fpn_channels / mask_channels",
    "mask_predictor": "mask_channels",
}
# torchvision's default anchor generator: 3 aspect ratios (0.5, 1, 2) per location and level
_DEFAULT_ANCHORS_PER_LOCATION = 3
_MASK_LAYERS = 4  # "four 3x3 convs" of the Mask R-CNN FPN mask head


class AffineFrozenBatchNorm2d(nn.Module):
    """BatchNorm with frozen statistics and trainable affine parameters.

    The paper: "we freeze the Batch Normalization statistics and learn only the affine
    parameters gamma and beta". torchvision's ``FrozenBatchNorm2d`` stores ``weight`` and ``bias``
    as *buffers*, so they can never receive gradients (it freezes the affine part too). Here
    ``running_mean``/``running_var`` stay buffers (never updated, in train or eval mode) and
    ``weight``/``bias`` are ``nn.Parameter``; the state-dict keys are the same as torchvision's,
    so COCO / ImageNet checkpoints load unchanged. Whether a layer's affine parameters train is
    then decided like every other backbone parameter by ``trainable_backbone_layers``.

    ``(N, C, H, W) -> (N, C, H, W)``: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        state_dict.pop(prefix + "num_batches_tracked", None)  # written by nn.BatchNorm2d
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"build_panoptic_asp: {name} must be a positive int, got {value!r}")
    return value


def build_resnet_fpn(
    *,
    backbone: str = "resnet50",
    width: float = 1.0,
    fpn_channels: int = 256,
    trainable_layers: int = 3,
) -> BackboneWithFPN:
    """Frozen-BN ResNet (``body``) + FPN (``fpn``): ``(N, 3, H, W)`` -> ``{'0': (N, F, H/4, W/4),
    '1': .../8, '2': .../16, '3': .../32, 'pool': .../64}`` with ``F = fpn_channels``.

    Args:
        backbone: one of :data:`BACKBONES`.
        width: ResNet stage-width multiplier (``networks.resnet.build_resnet``; < 1 only for the
            BasicBlock depths 18/34).
        fpn_channels: FPN output channels (256 in the paper's model).
        trainable_layers: 0..5 ResNet stages, counted from layer4 down (5 adds conv1 and bn1),
            whose parameters (frozen-BN affine parameters included) train; as torchvision.
    """
    if backbone not in BACKBONES:
        raise ValueError(
            f"build_panoptic_asp: unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}"
        )
    if isinstance(width, bool) or not isinstance(width, int | float):
        raise ValueError(f"build_panoptic_asp: backbone_width must be a number, got {width!r}")
    fpn_channels = _positive_int("fpn_channels", fpn_channels)
    if (
        isinstance(trainable_layers, bool)
        or not isinstance(trainable_layers, int)
        or not 0 <= trainable_layers <= 5
    ):
        raise ValueError(
            f"build_panoptic_asp: trainable_backbone_layers must be 0..5, got {trainable_layers!r}"
        )
    body = build_resnet(
        depth=BACKBONES[backbone], width=float(width), norm_layer=AffineFrozenBatchNorm2d
    )
    train = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable_layers]
    if trainable_layers == 5:
        train += ("bn1",)
    for name, param in body.named_parameters():
        if not name.startswith(train):
            param.requires_grad_(False)
    return_layers = {f"layer{i + 1}": str(i) for i in range(4)}
    stage_channels = cast(tuple[int, int, int, int], body.stage_channels)
    return BackboneWithFPN(body, return_layers, list(stage_channels), fpn_channels)


def build_mask_rcnn(
    backbone: BackboneWithFPN,
    *,
    num_classes: int,
    box_representation: int = 1024,
    mask_channels: int = 256,
    detector_kwargs: Mapping[str, Any] | None = None,
) -> MaskRCNN:
    """torchvision's ``MaskRCNN`` on ``backbone`` with heads sized by the switches.

    The heads are built here in the order torchvision's constructor builds its defaults (mask
    head, mask predictor, RPN head, box head, box predictor), so a seeded default build draws the
    same initial weights as ``MaskRCNN(backbone, num_classes)``.

    Args:
        num_classes: detection classes including background.
        box_representation: width of the two FC layers of the box head (1024 in the paper's model).
        mask_channels: width of the four 3x3 convs and the deconv of the mask head (256).
        detector_kwargs: other ``MaskRCNN`` arguments (thresholds, RoI pools, anchor generator,
            ...); those in :data:`BUILT_HERE` are an error.
    """
    kwargs = dict(detector_kwargs or {})
    clash = sorted(set(kwargs) & set(BUILT_HERE))
    if clash:
        hint = ", ".join(f"{k} (use {BUILT_HERE[k]})" for k in clash)
        raise ValueError(f"build_panoptic_asp: these detector arguments are built here: {hint}")
    box_representation = _positive_int("box_representation", box_representation)
    mask_channels = _positive_int("mask_channels", mask_channels)
    fpn = backbone.out_channels
    mask_head = MaskRCNNHeads(fpn, (mask_channels,) * _MASK_LAYERS, 1)
    mask_predictor = MaskRCNNPredictor(mask_channels, mask_channels, num_classes)
    anchors = kwargs.get("rpn_anchor_generator")
    per_location = (
        _DEFAULT_ANCHORS_PER_LOCATION if anchors is None else anchors.num_anchors_per_location()[0]
    )
    rpn_head = RPNHead(fpn, per_location)
    box_pool = kwargs.get("box_roi_pool")
    resolution = 7 if box_pool is None else box_pool.output_size[0]
    box_head = TwoMLPHead(fpn * resolution**2, box_representation)
    box_predictor = FastRCNNPredictor(box_representation, num_classes)
    return MaskRCNN(
        backbone,
        num_classes=None,
        rpn_head=rpn_head,
        box_head=box_head,
        box_predictor=box_predictor,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
        **kwargs,
    )
