"""Loss compositions used by the trainer.

- :class:`SegmentationLoss`: classification loss (cross-entropy or OHEM, RelationNet eq. 3) on
  the main output, deep supervision on auxiliary outputs (the per-level heads that ShelfNet's
  ``deep_supervision`` switch builds -- our addition: the ShelfNet paper names no auxiliary loss,
  see :mod:`seg_perception.networks.shelfnet`) and the spatial correlation loss (eq. 2:
  ``L = L_ohem + lambda * L_scl``).
- :func:`asp_multitask_loss`: the panoptic ASP model's ``L = L_box + L_cls + L_mask + L_segm``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from seg_perception.labels import IGNORE_ID
from seg_perception.losses.ohem import DEFAULT_THRESHOLD, OhemCrossEntropy
from seg_perception.losses.scl import DEFAULT_SCL_WEIGHT, SpatialCorrelationLoss

__all__ = [
    "ASP_GROUPS",
    "ASP_LOSS_KEYS",
    "DEFAULT_AUX_WEIGHT",
    "SegmentationLoss",
    "asp_multitask_loss",
    "deep_supervision_loss",
]

# Deep supervision is NOT in the ShelfNet paper (it names no auxiliary loss): it is our addition,
# switched by ShelfNet's ``deep_supervision`` (recipe ``model.switches.deep_supervision``). The
# authors' released code trains extra heads (the real-time ShelfNet18 sums three heads' losses with
# weight 1, the PyTorch-Encoding code adds an auxiliary FCN head at 0.5); the 0.4 here is the
# auxiliary-loss weight of PSPNet's deep supervision.
DEFAULT_AUX_WEIGHT = 0.4

# The paper's four terms in torchvision's names: the box loss of both stages (RPN anchors and
# RoI boxes), the classification loss of both stages (objectness and RoI classes), the mask loss
# and the semantic head's cross-entropy ("L = L_box + L_cls + L_mask + L_segm").
ASP_GROUPS: dict[str, tuple[str, ...]] = {
    "box": ("loss_box_reg", "loss_rpn_box_reg"),
    "cls": ("loss_classifier", "loss_objectness"),
    "mask": ("loss_mask",),
    "segm": ("loss_segm",),
}
ASP_LOSS_KEYS: tuple[str, ...] = tuple(k for keys in ASP_GROUPS.values() for k in keys)


def asp_multitask_loss(
    losses: Mapping[str, Tensor], weights: Mapping[str, float] | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sum the ASP model's loss dict: ``(total, {"box", "cls", "mask", "segm"} group sums)``.

    ``weights`` (optional, per group, default 1 as in the paper's plain sum). Missing keys are an
    error naming them; extra keys are added to the total unweighted.
    """
    missing = [k for k in ASP_LOSS_KEYS if k not in losses]
    if missing:
        raise KeyError(f"asp_multitask_loss: missing loss terms {missing}; got {sorted(losses)}")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(ASP_GROUPS))
    if unknown:
        raise ValueError(f"asp_multitask_loss: unknown groups {unknown}; valid: {list(ASP_GROUPS)}")
    groups = {
        g: sum((losses[k].float() for k in keys[1:]), losses[keys[0]].float())
        for g, keys in ASP_GROUPS.items()
    }
    total = sum((weights.get(g, 1.0) * v for g, v in groups.items()), groups["box"] * 0.0)
    for k, v in losses.items():
        if k not in ASP_LOSS_KEYS:
            total = total + v.float()
    return total, groups


def deep_supervision_loss(
    criterion: nn.Module,
    out: Tensor,
    aux: Sequence[Tensor],
    target: Tensor,
    *,
    aux_weight: float = DEFAULT_AUX_WEIGHT,
) -> dict[str, Tensor]:
    """``{"loss_main": crit(out), "loss_aux1": w * crit(aux[0]), ...}`` (all at input size)."""
    terms = {"loss_main": criterion(out, target)}
    if aux_weight:
        for i, a in enumerate(aux, start=1):
            terms[f"loss_aux{i}"] = aux_weight * criterion(a, target)
    return terms


class SegmentationLoss(nn.Module):
    """Semantic training loss of the real-time nets.

    ``forward(output, target, features=None) -> dict`` of weighted terms (``loss_main``,
    ``loss_aux<i>``, ``loss_scl``) and their sum ``loss``.

    - ``output``: logits ``(N, K, H, W)`` or a training dict ``{"out": logits, "aux": [...]}``
      (ShelfNet with ``deep_supervision``, our addition); ``target`` ``(N, H, W)`` trainIds, 255
      ignored.
    - ``features``: the map the classifier sees ``(N, C, h, w)``, needed when SCL is on.
    - ``ohem`` / ``scl_enabled`` can be switched between training stages (alternating training:
      stage 2 runs "with coarse data but not with SCL").
    """

    def __init__(
        self,
        *,
        ohem: bool = False,
        ohem_threshold: float = DEFAULT_THRESHOLD,
        ohem_min_kept: int = 0,
        aux_weight: float = DEFAULT_AUX_WEIGHT,
        scl: SpatialCorrelationLoss | None = None,
        scl_weight: float = DEFAULT_SCL_WEIGHT,
        ignore_index: int = IGNORE_ID,
    ) -> None:
        super().__init__()
        self.classification = OhemCrossEntropy(
            threshold=ohem_threshold,
            ignore_index=ignore_index,
            min_kept=ohem_min_kept,
            enabled=ohem,
        )
        self.aux_weight = aux_weight
        self.scl = scl
        self.scl_weight = scl_weight
        self.scl_enabled = scl is not None

    @property
    def ohem(self) -> bool:
        return self.classification.enabled

    def set_stage(self, *, ohem: bool, scl: bool) -> None:
        """Switch OHEM and SCL for a training stage; SCL needs a subnet built at construction."""
        if scl and self.scl is None:
            raise ValueError("SegmentationLoss: SCL requested but no similarity subnet was built")
        self.classification.enabled = ohem
        self.scl_enabled = scl

    def forward(
        self,
        output: Tensor | Mapping[str, Tensor | Sequence[Tensor]],
        target: Tensor,
        features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if isinstance(output, Mapping):
            out = output["out"]
            aux = output.get("aux", [])
            assert isinstance(out, Tensor) and not isinstance(aux, Tensor)
        else:
            out, aux = output, []
        terms = deep_supervision_loss(
            self.classification, out, list(aux), target, aux_weight=self.aux_weight
        )
        if self.scl_enabled and self.scl is not None:
            if features is None:
                raise ValueError("SegmentationLoss: SCL is on but no features were given")
            terms["loss_scl"] = self.scl_weight * self.scl(features, target)
        # Summed from the first term (not from a graph-connected 0): a zero start would add a
        # gradient of zeros over the whole (N, K, H, W) logits in backward.
        first, *rest = terms.values()
        return {**terms, "loss": sum(rest, first.float())}
