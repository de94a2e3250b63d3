"""Embed a narrow network's weights in a wider one of the same architecture, function-preserving.

Our networks have a ``width`` switch (channel counts scaled, names unchanged). A net trained at
width 0.5 that has levelled off can seed a wider one: every tensor of the narrow state dict is
copied into the leading slice of the wide tensor of the same name, and the weights that lead
*from* a new input channel *to* an old output channel are set to zero. The old channels then
compute exactly what they computed before (new channels never reach them), and the classifier,
whose output count does not change, reads only old channels: the wide net starts as the narrow
net, to float rounding. The new channels keep the wide net's fresh initialisation, so they carry
signal from the first step and the zeroed weights grow from their gradients.

This holds for networks whose channels meet only per-channel (BatchNorm, ReLU, pooling,
residual sums of aligned tensors) and in dense convolutions / linear layers. A grouped
convolution that changes shape, a concatenation of widened tensors, or any other tensor of two or
more dimensions that changes shape breaks the channel alignment: those are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["widen_into", "widen_state_dict"]

_DENSE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _dense_weights(model: nn.Module) -> dict[str, nn.Module]:
    """State-dict key -> module for the ``weight`` of every (out, in, ...) dense layer."""
    return {
        f"{name}.weight" if name else "weight": m
        for name, m in model.named_modules()
        if isinstance(m, _DENSE)
    }


def widen_state_dict(
    model: nn.Module, narrow: Mapping[str, Tensor], *, source: str | Path = "<state dict>"
) -> dict[str, Tensor]:
    """The state dict that makes ``model`` (wide) compute what ``narrow`` computed.

    ``model``: the wide network, freshly built (its initialisation fills the new channels).
    ``narrow``: the state dict of the same network built narrower (same keys, every dimension
    no larger). Returns a full state dict for ``model.load_state_dict``. Keys that differ, a
    tensor larger than the model's, or a shape change the scheme cannot preserve (see the
    module docstring) is a ValueError naming ``source`` and the tensor.
    """
    wide = model.state_dict()
    missing = sorted(set(wide) - set(narrow))
    unexpected = sorted(set(narrow) - set(wide))
    if missing or unexpected:
        raise ValueError(
            f"widen: {source} does not hold the tensors of {type(model).__name__}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    dense = _dense_weights(model)
    out: dict[str, Tensor] = {}
    for key, target in wide.items():
        value = narrow[key]
        old, new = tuple(value.shape), tuple(target.shape)
        if len(old) != len(new) or any(a > b for a, b in zip(old, new, strict=True)):
            raise ValueError(
                f"widen: tensor {key!r} is {old} in {source}, {new} in the model: the file must "
                "be of a narrower (or equal) network of the same architecture"
            )
        if old == new:
            out[key] = value.to(target.dtype)
            continue
        module = dense.get(key)
        if len(new) >= 2 and (module is None or getattr(module, "groups", 1) != 1):
            kind = "a grouped convolution" if module is not None else "not a dense layer's weight"
            raise ValueError(
                f"widen: tensor {key!r} ({old} -> {new}) is {kind}; widening it would not "
                "preserve the network's function"
            )
        grown = target.detach().clone()
        if len(new) >= 2:
            grown[: old[0], old[1] :] = 0  # new inputs never reach old outputs
        grown[tuple(slice(0, n) for n in old)] = value.to(grown.dtype)
        out[key] = grown
    return out


def widen_into(model: nn.Module, narrow: Mapping[str, Tensor], *, source: str | Path) -> nn.Module:
    """Load :func:`widen_state_dict` into ``model`` (in place, under ``torch.no_grad``)."""
    with torch.no_grad():
        model.load_state_dict(widen_state_dict(model, narrow, source=source), strict=True)
    return model
