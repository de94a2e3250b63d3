"""The module the trainer optimises: the network plus its training-only parts and its loss.

``SemanticTrainModule`` (GUN, ShelfNet, any net with ``forward(x) -> logits``) and
``PanopticTrainModule`` (the ASP model) both expose ``forward(images, semantic, targets) -> dict``
of loss terms with the total under ``"loss"``, so one DistributedDataParallel wrapper and one
training loop serve every network. The network is the ``net`` attribute: its state-dict keys are
``net.*``, which :func:`seg_perception.train.checkpoint.export_weights` keeps; the SCL similarity
subnet lives under ``criterion.*`` and is never exported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_perception.losses import SegmentationLoss, SpatialCorrelationLoss, asp_multitask_loss
from seg_perception.networks.export import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["PanopticTrainModule", "SemanticTrainModule", "default_feature_module"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def default_feature_module(net: nn.Module) -> str:
    """Name of the module whose input is "the feature map fed to the classifier" (SCL input)."""
    if isinstance(getattr(net, "classifier", None), nn.Conv2d):
        return "classifier"  # GUN: the fusion module's output
    heads = getattr(net, "heads", None)
    if isinstance(heads, nn.ModuleList) and isinstance(heads[0], nn.Conv2d):
        return "heads.0"  # ShelfNet: the top (stride 4) classifier
    raise ValueError(
        f"{type(net).__name__}: cannot tell which module feeds the classifier; set "
        "model.scl_features in the recipe"
    )


class _FrozenBNMixin(nn.Module):
    net: nn.Module
    freeze_bn_prefix: str | None = None

    def train(self, mode: bool = True) -> _FrozenBNMixin:
        super().train(mode)
        if mode and self.freeze_bn_prefix is not None:
            for name, m in self.net.named_modules():
                if isinstance(m, _BN) and name.startswith(self.freeze_bn_prefix):
                    m.eval()  # statistics frozen; gamma / beta still train
        return self


class SemanticTrainModule(_FrozenBNMixin):
    """``forward(images (N, 3, H, W) in 0..1, semantic (N, H, W)) -> {loss terms, "loss"}``.

    Images are normalised with the ImageNet mean / std in here (the export graph does the same).
    With ``scl_weight``/``scl_features`` the input of the named module is captured by a forward
    pre-hook and fed to the similarity subnet.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        ohem: bool = False,
        ohem_threshold: float = 0.6,
        ohem_min_kept: int = 0,
        aux_weight: float = 0.4,
        use_scl: bool = False,
        scl_weight: float = 0.1,
        scl_hidden: int = 64,
        scl_features: str = "",
        freeze_bn_prefix: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.freeze_bn_prefix = freeze_bn_prefix
        scl = None
        self._features: Tensor | None = None
        if use_scl:
            name = scl_features or default_feature_module(net)
            tap = net.get_submodule(name)
            channels = getattr(tap, "in_channels", None)
            if not isinstance(channels, int):
                raise ValueError(f"model.scl_features {name!r} has no in_channels: {tap}")
            scl = SpatialCorrelationLoss(channels, hidden=scl_hidden)
            tap.register_forward_pre_hook(self._capture)
        self.criterion = SegmentationLoss(
            ohem=ohem,
            ohem_threshold=ohem_threshold,
            ohem_min_kept=ohem_min_kept,
            aux_weight=aux_weight,
            scl=scl,
            scl_weight=scl_weight,
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _capture(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if self.training:
            self._features = args[0]

    mean: Tensor
    std: Tensor

    def normalise(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def set_stage(self, *, ohem: bool, scl: bool) -> None:
        self.criterion.set_stage(ohem=ohem, scl=scl)

    def forward(
        self,
        images: Tensor | Sequence[Tensor],
        semantic: Tensor | Sequence[Tensor],
        targets: Any = None,
    ) -> dict[str, Tensor]:
        if not isinstance(images, Tensor):
            sizes = sorted({tuple(im.shape[-2:]) for im in images})
            if len(sizes) > 1:
                raise ValueError(
                    f"a batch of images of sizes {sizes}: semantic nets need one size per batch "
                    "(set augment.crop in the recipe)"
                )
            images, semantic = torch.stack(list(images)), torch.stack(list(semantic))
        assert isinstance(semantic, Tensor)
        self._features = None
        forward = getattr(self.net, "forward_train", self.net)  # GUN: logits left unsampled
        output = forward(self.normalise(images))
        feats, self._features = self._features, None
        return self.criterion(output, semantic, feats)

    @torch.no_grad()
    def predict_logits(self, image: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Eval-mode logits ``(N, K, H', W')`` for images ``(N, 3, H, W)`` in 0..1, resized to
        ``size`` (default: the input size) bilinearly."""
        out = self.net(self.normalise(image))
        if isinstance(out, Mapping):
            out = out["out"]
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


class PanopticTrainModule(_FrozenBNMixin):
    """The ASP model: ``forward(images, semantic, targets) -> {Mask R-CNN terms, loss_segm,
    group sums loss_box / loss_cls / loss_mask / loss_segm_group, "loss"}``.

    ``images``: list (or batch) of ``(3, H, W)`` float in 0..1 (the detector normalises itself);
    ``targets``: list of dicts with ``boxes``, ``labels`` (thing trainIds), ``masks``, ``semantic``.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        weights: Mapping[str, float] | None = None,
        freeze_bn_prefix: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.weights = dict(weights or {})
        self.freeze_bn_prefix = freeze_bn_prefix

    def set_stage(self, *, ohem: bool, scl: bool) -> None:
        if ohem or scl:
            raise ValueError("panoptic_asp trains with its multi-task loss; OHEM / SCL are off")

    def forward(
        self, images: Tensor | Sequence[Tensor], semantic: Any, targets: Sequence[dict]
    ) -> dict[str, Tensor]:
        imgs = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
        losses = self.net(imgs, list(targets))
        total, groups = asp_multitask_loss(losses, self.weights)
        out = {k: v for k, v in losses.items()}
        out.update({f"group_{g}": v for g, v in groups.items()})
        out["loss"] = total
        return out
