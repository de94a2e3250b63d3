"""Panoptic ASP model: Mask R-CNN R50-FPN + the ASP semantic head (fusion-scheme paper, Sec. III).

One shared ResNet-FPN (ResNet50, 256 FPN channels in the paper's model, the default; narrower
CPU variants by switches, see :func:`build_panoptic_asp`) feeds torchvision's Mask R-CNN heads
(RPN, box, mask) and the semantic head of :mod:`seg_perception.networks.asp_head`; the backbone
runs once per batch. Training returns the multi-task loss terms "L = L_box + L_cls + L_mask +
L_segm" (torchvision's five detector terms plus ``loss_segm``); inference returns boxes, thing
trainIds, scores, pasted mask probabilities and the semantic trainId map, all at the input
image's resolution.

Detection classes are the thing classes of the label table (Cityscapes trainIds 11..18, in
``thing_train_ids`` order): detection label ``0`` is background, label ``i`` is
``thing_train_ids[i - 1]``. Targets and outputs use trainIds; the mapping is internal.

The export form (uint8 image in, ids out) is in :mod:`seg_perception.networks.panoptic_export`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList

from seg_perception.labels import CITYSCAPES, IGNORE_ID
from seg_perception.networks.asp_detector import (
    AffineFrozenBatchNorm2d,
    build_mask_rcnn,
    build_resnet_fpn,
)
from seg_perception.networks.asp_head import HEAD_KINDS, SemanticHead
from seg_perception.networks.export import load_weights, read_state_dict


class PanopticASP(nn.Module):
    """Mask R-CNN (``detector``) + ``semantic_head`` on the same FPN features.

    ``forward(images, targets=None)``:
        images: list of ``(3, H_i, W_i)`` float images in ``0..1`` (RGB).
        targets (training): list of dicts with ``boxes`` ``(N_i, 4)`` float (x0, y0, x1, y1 input
        pixels), ``labels`` ``(N_i,)`` int64 thing trainIds, ``masks`` ``(N_i, H_i, W_i)`` uint8,
        ``semantic`` ``(H_i, W_i)`` int64 trainIds with 255 = ignore.
    Returns in training a dict of scalar losses ``loss_classifier, loss_box_reg, loss_mask,
    loss_objectness, loss_rpn_box_reg, loss_segm``; in eval one dict per image with ``boxes``
    ``(K, 4)`` float, ``labels`` ``(K,)`` int64 trainIds, ``scores`` ``(K,)``, ``masks``
    ``(K, H_i, W_i)`` float probabilities, ``semantic`` ``(H_i, W_i)`` int64 trainIds and, when
    ``return_semantic_logits``, ``semantic_logits`` ``(C, H_i, W_i)``.
    """

    det_to_train: Tensor
    train_to_det: Tensor

    def __init__(
        self,
        detector: MaskRCNN,
        semantic_head: SemanticHead,
        *,
        thing_train_ids: Sequence[int],
        return_semantic_logits: bool = False,
    ) -> None:
        super().__init__()
        self.detector = detector
        self.semantic_head = semantic_head
        self.thing_train_ids = tuple(int(t) for t in thing_train_ids)
        self.return_semantic_logits = return_semantic_logits
        det_to_train = torch.tensor((IGNORE_ID, *self.thing_train_ids), dtype=torch.int64)
        train_to_det = torch.full((256,), -1, dtype=torch.int64)
        train_to_det[det_to_train[1:]] = torch.arange(1, len(det_to_train))
        self.register_buffer("det_to_train", det_to_train, persistent=False)
        self.register_buffer("train_to_det", train_to_det, persistent=False)

    # -- label mapping ---------------------------------------------------------------------
    def detection_to_train_ids(self, labels: Tensor) -> Tensor:
        """Detection labels ``1..num_things`` -> thing trainIds (0 -> 255)."""
        return self.det_to_train[labels]

    def train_to_detection_labels(self, train_ids: Tensor) -> Tensor:
        """Thing trainIds -> detection labels ``1..num_things``; other ids are an error."""
        if train_ids.numel() and (train_ids.min() < 0 or train_ids.max() > 255):
            raise ValueError(f"target labels must be trainIds 0..255, got {train_ids.tolist()}")
        det = self.train_to_det[train_ids]
        if (det < 0).any():
            bad = sorted(set(train_ids[det < 0].tolist()))
            raise ValueError(
                f"target labels {bad} are not thing trainIds; expected one of "
                f"{list(self.thing_train_ids)}"
            )
        return det

    # -- shared trunk ----------------------------------------------------------------------
    def run(
        self, image_list: ImageList, det_targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor], Tensor]:
        """Backbone once, then RPN + RoI heads + semantic head on the same FPN features.

        ``image_list``: normalised, padded batch ``(N, 3, Hp, Wp)`` + per-image sizes.
        Returns (detections in network-input pixels with detection labels, detector losses,
        semantic logits ``(N, C, Hp/4, Wp/4)``).
        """
        features = self.detector.backbone(image_list.tensors)
        proposals, rpn_losses = self.detector.rpn(image_list, features, det_targets)
        detections, roi_losses = self.detector.roi_heads(
            features, proposals, image_list.image_sizes, det_targets
        )
        logits = self.semantic_head(features)
        return detections, {**rpn_losses, **roi_losses}, logits

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("PanopticASP: targets are required in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        det_targets = None if targets is None else self._detector_targets(images, targets)
        image_list, det_targets = self.detector.transform(images, det_targets)
        detections, losses, logits = self.run(image_list, det_targets if self.training else None)
        if self.training:
            assert targets is not None
            losses["loss_segm"] = self._semantic_loss(logits, image_list, targets)
            return losses
        detections = self.detector.transform.postprocess(
            detections, image_list.image_sizes, original_sizes
        )
        results = []
        for i, det in enumerate(detections):
            sem_logits = self._unresize_logits(logits[i : i + 1], image_list, i, original_sizes[i])
            out = {
                "boxes": det["boxes"],
                "labels": self.detection_to_train_ids(det["labels"]),
                "scores": det["scores"],
                "masks": det["masks"][:, 0],
                "semantic": sem_logits.argmax(dim=1)[0],
            }
            if self.return_semantic_logits:
                out["semantic_logits"] = sem_logits[0]
            results.append(out)
        return results

    # -- helpers ---------------------------------------------------------------------------
    def _detector_targets(
        self, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> list[dict[str, Tensor]]:
        if len(targets) != len(images):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets")
        out = []
        for i, (img, t) in enumerate(zip(images, targets, strict=True)):
            missing = [k for k in ("boxes", "labels", "masks", "semantic") if k not in t]
            if missing:
                raise KeyError(f"target {i} lacks keys {missing}; got {sorted(t)}")
            boxes = t["boxes"]
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"target {i}: boxes must be (N, 4), got {tuple(boxes.shape)}")
            degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if degenerate.any():
                raise ValueError(
                    f"target {i}: boxes need positive width and height, got "
                    f"{boxes[degenerate][0].tolist()}"
                )
            if t["semantic"].shape != img.shape[-2:]:
                raise ValueError(
                    f"target {i}: semantic must be (H, W) = {tuple(img.shape[-2:])}, "
                    f"got {tuple(t['semantic'].shape)}"
                )
            out.append(
                {
                    "boxes": boxes,
                    "labels": self.train_to_detection_labels(t["labels"]),
                    "masks": t["masks"],
                }
            )
        return out

    def _semantic_loss(
        self, logits: Tensor, image_list: ImageList, targets: list[dict[str, Tensor]]
    ) -> Tensor:
        """Per-pixel cross-entropy at the network-input size ("logits upsampled to the input").

        The transform resized image i to ``image_sizes[i]``; its semantic target is resized with
        nearest neighbour to the same size (an identity when no resize happened) and padded with
        255 like the image batch, so the padding is ignored.
        """
        hp, wp = image_list.tensors.shape[-2:]
        up = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=False)
        target = torch.full((len(targets), hp, wp), IGNORE_ID, dtype=torch.int64, device=up.device)
        for i, (t, (h, w)) in enumerate(zip(targets, image_list.image_sizes, strict=True)):
            sem = t["semantic"].to(device=up.device, dtype=torch.int64)
            if tuple(sem.shape) != (h, w):
                sem = F.interpolate(sem[None, None].float(), size=(h, w), mode="nearest")[0, 0]
            target[i, :h, :w] = sem.long()
        loss = F.cross_entropy(up, target, ignore_index=IGNORE_ID, reduction="sum")
        return loss / (target != IGNORE_ID).sum().clamp(min=1)

    @staticmethod
    def _unresize_logits(
        logits: Tensor, image_list: ImageList, i: int, original_size: tuple[int, int]
    ) -> Tensor:
        """``(1, C, Hp/4, Wp/4)`` -> ``(1, C, H, W)`` at the original image size (bilinear)."""
        hp, wp = image_list.tensors.shape[-2:]
        h, w = image_list.image_sizes[i]
        up = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=False)
        up = up[..., :h, :w]
        if (h, w) != original_size:
            up = F.interpolate(up, size=original_size, mode="bilinear", align_corners=False)
        return up


@torch.no_grad()
def calibrate_frozen_bn(model: PanopticASP, images: list[Tensor]) -> None:
    """Set every frozen BatchNorm's statistics to the batch statistics of ``images``.

    Frozen statistics are meant to come from a pretrained checkpoint; a model built without one
    has mean 0 / var 1 everywhere, i.e. an unnormalised ResNet whose activations grow block by
    block. This fills the statistics layer by layer (each BN sees inputs already normalised by
    the BNs before it) from one forward pass, e.g. before training from scratch. ``images``:
    list of ``(3, H, W)`` float images in ``0..1``. The model's train/eval mode is kept.
    """

    def set_stats(module: AffineFrozenBatchNorm2d, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    was_training = model.training
    model.eval()
    handles = [
        m.register_forward_pre_hook(set_stats)
        for m in model.detector.backbone.body.modules()
        if isinstance(m, AffineFrozenBatchNorm2d)
    ]
    try:
        image_list, _ = model.detector.transform(images)
        model.detector.backbone.body(image_list.tensors)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


# -- weights -------------------------------------------------------------------------------
# Mask R-CNN layers whose shape depends on the number of classes (skipped when they differ)
_CLASS_SPECIFIC = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


def _load_backbone_weights(model: PanopticASP, path: str | Path, bn_eps: float | None) -> None:
    """Load a torchvision Mask R-CNN R50-FPN (COCO) or a ResNet (ImageNet) state dict.

    The paper initialises "with the pretrained Mask-RCNN weights on the Microsoft COCO dataset";
    class-specific predictor layers whose shape differs (91 COCO classes vs ours) are skipped and
    keep their fresh initialisation. Any other shape mismatch (a checkpoint of another backbone
    width or head size) is an error that names the key. torchvision's COCO_V1 Mask R-CNN weights
    were converted with BatchNorm eps 0 (its own builder sets eps=0 for them), so eps defaults to
    0 for a detector checkpoint and to 1e-5 for an ImageNet ResNet.
    """
    state = read_state_dict(path)
    if any(k.startswith("backbone.body.") for k in state):
        target: nn.Module = model.detector
        default_eps = 0.0
    elif "layer1.0.conv1.weight" in state:
        target = model.detector.backbone.body
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        default_eps = 1e-5
    else:
        raise ValueError(
            f"{path}: neither a Mask R-CNN ('backbone.body.*') nor a ResNet ('layer1.*') "
            f"state dict; first keys: {list(state)[:5]}"
        )
    own = target.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    skipped = [k for k in mismatched if k.startswith(_CLASS_SPECIFIC)]
    wrong = [k for k in mismatched if k not in skipped]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{path}: {len(wrong)} tensors do not fit this model's widths, e.g. {k}: expected "
            f"{tuple(own[k].shape)}, got {tuple(state[k].shape)}"
        )
    state = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(f"{path}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    eps = default_eps if bn_eps is None else bn_eps
    for m in model.detector.backbone.body.modules():
        if isinstance(m, AffineFrozenBatchNorm2d):
            m.eps = eps


def build_panoptic_asp(
    *,
    num_things: int = 8,
    num_classes: int = 19,
    head: str = "asp",
    min_size: int = 1024,
    max_size: int = 2048,
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    trainable_backbone_layers: int = 3,
    backbone: str = "resnet50",
    backbone_width: float = 1.0,
    fpn_channels: int = 256,
    box_representation: int = 1024,
    mask_channels: int = 256,
    head_channels: int = 128,
    num_groups: int = 32,
    thing_train_ids: Sequence[int] | None = None,
    backbone_bn_eps: float | None = None,
    return_semantic_logits: bool = False,
    **detector_kwargs: Any,
) -> PanopticASP:
    """Build the panoptic ASP model (no downloads; weights only from explicit files).

    The defaults are the paper's model (ResNet50-FPN Mask R-CNN, 256-channel FPN, 1024-wide box
    head, 256-wide mask head, 128 maps per semantic level). ``backbone``, ``backbone_width``,
    ``fpn_channels``, ``box_representation``, ``mask_channels`` and ``head_channels`` narrow it
    for the CPU (our reduction, not the paper's; see ``networks.asp_detector``). Every switch is
    a plain JSON value, so it round-trips through the weights' metadata.

    Args:
        num_things: thing classes of the detector (background is added: ``num_things + 1``).
        num_classes: semantic classes.
        head: ``"asp"`` (paper's model) or ``"unified"`` (paper's unified baseline).
        min_size, max_size: torchvision's resize rule for the network input.
        weights: a full ``PanopticASP`` state dict (.pt/.pth or .safetensors), loaded strictly
            (``networks.export.load_weights``).
        backbone_weights: a torchvision Mask R-CNN R50-FPN or ImageNet ResNet state dict of
            the same backbone and widths.
        trainable_backbone_layers: 0..5 ResNet stages (from layer4 down) whose parameters,
            including the frozen-BN affine parameters, are trained.
        backbone: ``"resnet50"`` (paper), ``"resnet34"`` or ``"resnet18"``.
        backbone_width: ResNet stage-width multiplier in (0, 1]; < 1 needs resnet18/34.
        fpn_channels: FPN channels; the RPN, RoI heads and semantic head follow (paper: 256).
        box_representation: width of the box head's two FC layers (paper: 1024).
        mask_channels: width of the mask head's four 3x3 convs and deconv (paper: 256).
        head_channels, num_groups: semantic head maps per level (paper: 128; the classifier
            sees 4x as many) and GroupNorm groups (must divide ``head_channels``).
        thing_train_ids: trainIds of the detection classes (default: the Cityscapes things).
        backbone_bn_eps: eps of the frozen BatchNorms (default see ``_load_backbone_weights``).
        return_semantic_logits: also return ``semantic_logits`` at inference.
        **detector_kwargs: forwarded to torchvision's ``MaskRCNN`` (``box_score_thresh``,
            ``box_detections_per_img``, ``rpn_post_nms_top_n_test``, ...).
    """
    if head not in HEAD_KINDS:
        raise ValueError(f"build_panoptic_asp: unknown head {head!r}; valid: {HEAD_KINDS}")
    things = tuple(CITYSCAPES.thing_train_ids if thing_train_ids is None else thing_train_ids)
    if len(things) != num_things:
        raise ValueError(
            f"build_panoptic_asp: num_things={num_things} but thing_train_ids has {len(things)} "
            f"entries {list(things)}"
        )
    if any(not 0 <= t < num_classes for t in things) or len(set(things)) != len(things):
        raise ValueError(
            f"build_panoptic_asp: thing_train_ids {list(things)} must be distinct trainIds in "
            f"0..{num_classes - 1}"
        )
    backbone_net = build_resnet_fpn(
        backbone=backbone,
        width=backbone_width,
        fpn_channels=fpn_channels,
        trainable_layers=trainable_backbone_layers,
    )
    detector = build_mask_rcnn(
        backbone_net,
        num_classes=num_things + 1,
        box_representation=box_representation,
        mask_channels=mask_channels,
        detector_kwargs={"min_size": min_size, "max_size": max_size, **detector_kwargs},
    )
    semantic_head = SemanticHead(
        backbone_net.out_channels,
        num_classes,
        head=head,
        channels=head_channels,
        num_groups=num_groups,
    )
    model = PanopticASP(
        detector,
        semantic_head,
        thing_train_ids=things,
        return_semantic_logits=return_semantic_logits,
    )
    if backbone_weights is not None:
        _load_backbone_weights(model, backbone_weights, backbone_bn_eps)
    elif backbone_bn_eps is not None:
        for m in model.modules():
            if isinstance(m, AffineFrozenBatchNorm2d):
                m.eps = backbone_bn_eps
    if weights is not None:
        load_weights(model, weights)
    return model
