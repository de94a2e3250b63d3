"""Spatial correlation loss (SCL) of RelationNet, eq. 4-6 (``shared/papers/relationnet.txt``).

For every pixel ``(m, n)`` of the feature map and every neighbour offset in the 3x3 window
(centre included: "a pixel is compared with the nearby 9 pixels including itself")::

    L(X_mn, X_nb) = alpha * log(1 - P)   if y_mn != y_nb        (eq. 4, negative pair)
                    beta  * log P        if y_mn == y_nb        (eq. 4, positive pair)
    alpha = |pos| / (|pos| + |neg|),  beta = |neg| / (|pos| + |neg|)        (eq. 5)
    L_scl = -1/N * sum over pixels and neighbours of L                       (eq. 6)

``P`` is the similarity subnet's probability that the pair shares a class. Eq. 4 writes the
log-likelihood; the loss minimised is its negative (as any cross-entropy). Eq. 5's counts are taken
over the whole batch map on which eq. 6 sums. Eq. 6's ``N = W H |dw| |dh|`` counts every pair;
pairs with an ignored label or a neighbour outside the map carry no label and are left out of both
the sum and ``N``. The total loss is ``L_ohem + lambda * L_scl`` (eq. 2) with ``lambda = 0.1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_perception.labels import IGNORE_ID
from seg_perception.networks.relation import SimilaritySubnet, scl_targets

__all__ = [
    "DEFAULT_SCL_WEIGHT",
    "SpatialCorrelationLoss",
    "labels_at",
    "scl_class_weights",
    "spatial_correlation_loss",
]

DEFAULT_SCL_WEIGHT = 0.1  # RelationNet Sec. III-B: "Empirically, lambda = 0.1 yields the best"


def scl_class_weights(same: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 5: ``(alpha, beta)`` scalars from same-class targets and the valid-pair mask.

    ``alpha`` (weight of the negative pairs) is the fraction of positive pairs, ``beta`` (weight
    of the positive pairs) the fraction of negative pairs, so the rarer kind weighs more. Both are
    0 when there is no valid pair.
    """
    pos = (same.bool() & valid).sum().float()
    neg = (~same.bool() & valid).sum().float()
    total = (pos + neg).clamp(min=1.0)
    return pos / total, neg / total


def spatial_correlation_loss(
    similarity_logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_ID
) -> Tensor:
    """Eq. 4-6 from similarity logits ``(N, K, H, W)`` and labels ``(N, H, W)`` at that size.

    ``K`` must be ``neighbourhood**2`` in the neighbour order of
    :func:`seg_perception.networks.relation.neighbour_offsets`. Returns a scalar (0 with no valid
    pair).
    """
    if similarity_logits.dim() != 4 or labels.dim() != 3:
        raise ValueError(
            f"spatial_correlation_loss: expected logits (N, K, H, W) and labels (N, H, W), got "
            f"{tuple(similarity_logits.shape)} and {tuple(labels.shape)}"
        )
    k = similarity_logits.shape[1]
    neighbourhood = round(k**0.5)
    if neighbourhood**2 != k or similarity_logits.shape[2:] != labels.shape[1:]:
        raise ValueError(
            f"spatial_correlation_loss: logits {tuple(similarity_logits.shape)} need K = n*n "
            f"neighbours and the H, W of labels {tuple(labels.shape)}"
        )
    same, valid = scl_targets(labels.long(), neighbourhood, ignore_index)
    alpha, beta = scl_class_weights(same, valid)
    x = similarity_logits.float()
    log_p = F.logsigmoid(x)  # log P, numerically stable
    log_not_p = F.logsigmoid(-x)  # log (1 - P)
    per_pair = beta * same * log_p + alpha * (1.0 - same) * log_not_p
    per_pair = torch.where(valid, per_pair, torch.zeros_like(per_pair))
    return -per_pair.sum() / valid.sum().clamp(min=1)


def labels_at(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resample of ``(N, H, W)`` labels to the feature size ``(h, w)``.

    Uses ``F.interpolate(mode="nearest")`` (source index ``floor(i * H / h)``), i.e. for an exact
    stride ``s`` the labels of pixels ``s * u``, where the stride-aligned feature sample ``u`` of
    :mod:`seg_perception.networks.relation` sits.
    """
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    out = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return out[:, 0].long()


class SpatialCorrelationLoss(nn.Module):
    """Similarity-estimation subnet + SCL: ``(features (N, C, h, w), labels (N, H, W)) -> scalar``.

    Owns the :class:`~seg_perception.networks.relation.SimilaritySubnet` (training only: "In
    testing phase, the similarity estimation subnet is removed"), so its parameters live in the
    trainer's module and optimizer, never in the exported network. Labels are resampled to the
    feature size with :func:`labels_at`. Returns the unweighted ``L_scl``; the caller applies
    ``lambda``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        hidden: int = 64,
        neighbourhood: int = 3,
        ignore_index: int = IGNORE_ID,
    ) -> None:
        super().__init__()
        self.subnet = SimilaritySubnet(in_channels, hidden=hidden, neighbourhood=neighbourhood)
        self.ignore_index = ignore_index

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        logits = self.subnet(features)
        target = labels_at(labels, (int(features.shape[-2]), int(features.shape[-1])))
        return spatial_correlation_loss(logits, target, ignore_index=self.ignore_index)
