"""Test-time procedures of the papers, as wrappers around a semantic network.

Offline evaluation only (``seg-perception eval --tta``, the paper recipes' ``data.val_tta``):
each multiplies the cost of a frame (4 runs, 12 runs), so the node never uses them.

* ``multistep`` -- RelationNet's multi-step (shift) testing, Sec. II-C / Fig. 5 and the
  "+ Multi-Steps" rows of its Table I: :class:`~seg_perception.networks.relation.MultiStepTest`
  with ``steps=2`` per axis, the paper's "4-steps testing" (2 x 2 shifted runs). It needs a net
  with a strided low-resolution output (``forward_lowres`` + ``output_stride``: ShelfNet); GUN
  upsamples inside the network with its guided upsampling module and has none.
* ``multiscale-flip`` -- ShelfNet's multi-scale testing, its Table 2 ("tested with
  multiple-scales inputs with scales in [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]"), with the
  horizontally flipped image at every scale: the paper prints no flip; the authors' released
  evaluation (PyTorch-Encoding's ``MultiEvalModule``, ``flip=True`` with these scales) adds it.
  :class:`MultiScaleFlipTest` averages the softmax probabilities of all runs at the input size.

Every wrapper has the semantic export contract: ``forward(x) -> (N, C, H, W)`` class scores
(argmax = prediction) and ``forward_ids(x) -> (ids uint8, confidence float32)``, so an engine
runs it like any semantic net.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_perception.choices import TTA_MODES
from seg_perception.networks.relation import MultiStepTest

__all__ = [
    "MULTISTEP_STEPS",
    "SHELFNET_SCALES",
    "TTA_MODES",
    "MultiScaleFlipTest",
    "with_tta",
]

#: ShelfNet Table 2: the multi-scale test scales
SHELFNET_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
#: RelationNet's "4-steps testing": 2 shifts per axis, 2 x 2 runs
MULTISTEP_STEPS = 2


class MultiScaleFlipTest(nn.Module):
    """Mean softmax probabilities over rescaled (and flipped) copies of the input.

    For each scale ``s`` the input ``(N, 3, H, W)`` is resized bilinearly to
    ``(round(s*H), round(s*W))``, the net's logits (at that size) become probabilities, the run
    on the horizontally flipped copy is flipped back and added (``flip``), and the sum is
    resized bilinearly to ``(H, W)``. ``forward`` returns the mean over all runs, ``(N, C, H, W)``.
    """

    def __init__(
        self, net: nn.Module, *, scales: Sequence[float] = SHELFNET_SCALES, flip: bool = True
    ) -> None:
        super().__init__()
        if not scales or min(scales) <= 0:
            raise ValueError(f"MultiScaleFlipTest: scales must be positive, got {scales}")
        self.net = net
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip
        self.output_stride = 1

    def _probs(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        if isinstance(logits, dict):  # a net left in training mode
            raise RuntimeError("MultiScaleFlipTest: put the network in eval mode")
        return torch.softmax(logits.float(), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        total: Tensor | None = None
        for s in self.scales:
            size = (max(1, round(s * h)), max(1, round(s * w)))
            xs = (
                x
                if size == (h, w)
                else F.interpolate(x, size, mode="bilinear", align_corners=False)
            )
            probs = self._probs(xs)
            if self.flip:
                probs = probs + self._probs(xs.flip(-1)).flip(-1)
            if size != (h, w):
                probs = F.interpolate(probs, (h, w), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
        assert total is not None
        return total / (len(self.scales) * (2 if self.flip else 1))

    @torch.no_grad()
    def forward_ids(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(ids uint8 (N, H, W), confidence float32 (N, H, W))``: argmax and max of the mean
        probabilities."""
        conf, ids = self.forward(x).max(dim=1)
        return ids.to(torch.uint8), conf.float()


def with_tta(net: nn.Module, mode: str) -> nn.Module:
    """``net`` wrapped in the test-time procedure ``mode`` (one of :data:`TTA_MODES`; ``none``
    returns ``net`` itself). ValueError for an unknown mode or a net the mode does not fit."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time procedure {mode!r}; valid: {', '.join(TTA_MODES)}")
    if mode == "none":
        return net
    wrapper = _wrap(net, mode)
    wrapper.train(net.training)  # a new module starts in training mode: adopt the net's mode
    return wrapper


def _wrap(net: nn.Module, mode: str) -> nn.Module:
    if mode == "multistep":
        stride = int(getattr(net, "output_stride", 0) or 0)
        if not callable(getattr(net, "forward_lowres", None)) or stride < MULTISTEP_STEPS:
            raise ValueError(
                f"test-time procedure multistep needs a net with a strided low-resolution output "
                f"(forward_lowres, output_stride), such as shelfnet; {type(net).__name__} has none"
            )
        return MultiStepTest(net, steps=MULTISTEP_STEPS)
    return MultiScaleFlipTest(net)
