"""Pixel-wise classification losses: cross-entropy with an ignore label, and OHEM.

OHEM follows RelationNet eq. 3 (``shared/papers/relationnet.txt``)::

    L_ohem = - 1 / |S| * sum_{i in S} log p_{i, y_i},   S = {i : y_i valid and p_{i, y_i} < t}

"OHEM would sample the pixel-wise loss according to threshold t so that the network will pay more
attention to the hard examples"; "we set threshold t 0.6". The selection is a hard indicator (no
gradient flows through it). Losses are computed in float32 whatever the autocast dtype.

``logits`` may also be GUN's unsampled :class:`~seg_perception.networks.gum.GuidedLogits`
(training): the same loss, read through the low-resolution logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_perception.labels import IGNORE_ID
from seg_perception.networks.gum import GuidedLogits

__all__ = ["OhemCrossEntropy", "cross_entropy", "ohem_cross_entropy", "ohem_mask"]

DEFAULT_THRESHOLD = 0.6  # RelationNet Sec. III-B: "we set threshold t 0.6"


Logits = Tensor | GuidedLogits


def _check(logits: Logits, target: Tensor) -> None:
    if len(logits.shape) != 4 or target.dim() != 3:
        raise ValueError(
            f"expected logits (N, C, H, W) and target (N, H, W), got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in N, H or W"
        )


def _zero(logits: Logits) -> Tensor:
    """A zero loss that is still connected to the graph (so backward and DDP keep working)."""
    if isinstance(logits, GuidedLogits):
        return (logits.low.float().sum() + logits.grid.sum()) * 0.0
    return logits.float().sum() * 0.0


def _target_log_prob(logits: Logits, target: Tensor) -> Tensor:
    """``log_softmax(logits, 1)`` at class ``target`` (``(N, H, W)``, valid ids) per pixel."""
    if isinstance(logits, GuidedLogits):
        return logits.target_log_prob(target)
    logp = F.log_softmax(logits.float(), dim=1)
    return logp.gather(1, target.unsqueeze(1)).squeeze(1)


def cross_entropy(logits: Logits, target: Tensor, *, ignore_index: int = IGNORE_ID) -> Tensor:
    """Mean cross-entropy over the non-ignored pixels; 0 (not NaN) when every pixel is ignored.

    ``logits`` ``(N, C, H, W)``, ``target`` ``(N, H, W)`` integer trainIds -> scalar.
    """
    _check(logits, target)
    target = target.long()
    valid = target != ignore_index
    if not bool(valid.any()):
        return _zero(logits)
    if isinstance(logits, GuidedLogits):
        logp_true = _target_log_prob(logits, torch.where(valid, target, 0))
        return -torch.where(valid, logp_true, 0.0).sum() / int(valid.sum())
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


def ohem_mask(
    probs: Tensor,
    target: Tensor,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    ignore_index: int = IGNORE_ID,
    min_kept: int = 0,
) -> Tensor:
    """Pixels kept by OHEM: ``(N, H, W)`` bool from softmax ``probs`` ``(N, C, H, W)``.

    A pixel is kept when its label is valid and the probability of its true class is below
    ``threshold`` (eq. 3's indicator). ``min_kept > 0`` (not in eq. 3; the practice of the
    OHEM reference [22]) additionally keeps the ``min_kept`` lowest-probability valid pixels when
    fewer pass the threshold.
    """
    target = target.long()
    valid = target != ignore_index
    p_true = probs.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    return _keep(p_true, valid, threshold=threshold, min_kept=min_kept)


def _keep(p_true: Tensor, valid: Tensor, *, threshold: float, min_kept: int) -> Tensor:
    """:func:`ohem_mask` from the true-class probability ``p_true`` ``(N, H, W)`` and the
    valid-label mask."""
    keep = valid & (p_true < threshold)
    if min_kept > 0:
        n_valid = int(valid.sum())
        k = min(min_kept, n_valid)
        if int(keep.sum()) < k:
            scores = torch.where(valid, p_true, torch.full_like(p_true, 2.0)).flatten()
            hardest = torch.topk(scores, k, largest=False).indices
            extra = torch.zeros_like(keep).flatten()
            extra[hardest] = True
            keep = keep | extra.view_as(keep)
    return keep


def ohem_cross_entropy(
    logits: Logits,
    target: Tensor,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    ignore_index: int = IGNORE_ID,
    min_kept: int = 0,
) -> Tensor:
    """RelationNet eq. 3: mean ``-log p_{i,y_i}`` over the pixels with ``p_{i,y_i} < threshold``.

    ``logits`` ``(N, C, H, W)``, ``target`` ``(N, H, W)`` -> scalar; 0 when no pixel is kept
    (every pixel already confident: eq. 3's sum is empty).
    """
    _check(logits, target)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"ohem_cross_entropy: threshold must be in (0, 1], got {threshold}")
    # Everything after the log-softmax works on the gathered (N, H, W) true-class terms: no exp
    # of the whole (N, C, H, W) tensor, no boolean indexing.
    target = target.long()
    valid = target != ignore_index
    logp_true = _target_log_prob(logits, torch.where(valid, target, 0))
    with torch.no_grad():
        keep = _keep(logp_true.exp(), valid, threshold=threshold, min_kept=min_kept)
        kept = int(keep.sum())
    if kept == 0:
        return _zero(logits)
    return -torch.where(keep, logp_true, 0.0).sum() / kept


class OhemCrossEntropy(nn.Module):
    """Module form of :func:`ohem_cross_entropy` (``enabled=False`` gives plain cross-entropy)."""

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        ignore_index: int = IGNORE_ID,
        min_kept: int = 0,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.threshold = threshold
        self.ignore_index = ignore_index
        self.min_kept = min_kept
        self.enabled = enabled

    def forward(self, logits: Logits, target: Tensor) -> Tensor:
        if not self.enabled:
            return cross_entropy(logits, target, ignore_index=self.ignore_index)
        return ohem_cross_entropy(
            logits,
            target,
            threshold=self.threshold,
            ignore_index=self.ignore_index,
            min_kept=self.min_kept,
        )

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, enabled={self.enabled}, min_kept={self.min_kept}"
