"""Networks of the package and the explicit dict of their builders.

``build_model(name, **switches)`` is the one entry point used by the node, the engines, the
exporter and the trainer. An unknown name is an error that lists the valid ones.

A ``weights=PATH`` switch whose file carries builder switches in its metadata (written by
``train.checkpoint.export_weights``) builds the network the file was trained as: the stored
switches are the base and the caller's switches override them, so a narrow net's weights
(``width=0.5``) build the narrow net wherever the caller only knows the model's name.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

# name -> "module:builder". Resolved on use so that importing the package stays cheap
# (the panoptic model pulls in torchvision's detection stack).
MODEL_BUILDERS: dict[str, str] = {
    "gun": "seg_perception.networks.gun:build_gun",
    "shelfnet": "seg_perception.networks.shelfnet:build_shelfnet",
    "panoptic_asp": "seg_perception.networks.panoptic_asp:build_panoptic_asp",
}


def build_model(name: str, **switches: Any) -> nn.Module:
    """Build the network ``name`` with keyword switches (see each ``build_*`` function).

    With ``weights=PATH``, switches stored in the file's metadata are applied first (see the
    module docstring); a file made for another model is a ValueError naming the file.
    """
    try:
        target = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(sorted(MODEL_BUILDERS))}"
        ) from None
    module_name, fn_name = target.split(":")
    builder = getattr(importlib.import_module(module_name), fn_name)
    weights = switches.get("weights")
    if weights is None:
        return builder(**switches)
    from seg_perception.networks.export import stored_switches

    stored_model, stored = stored_switches(weights)
    if stored_model is not None and stored_model != name:
        raise ValueError(f"weights file {weights} holds a {stored_model!r} network, not {name!r}")
    for key, value in switches.items():
        if key in stored and stored[key] != value:
            log.info(  # e.g. the engines' min_size/max_size; a shape change fails on loading
                "weights file %s was exported with %s=%r; building with %s=%r as asked",
                weights,
                key,
                stored[key],
                key,
                value,
            )
    if not stored:
        return builder(**switches)
    merged = {**stored, **switches}
    try:
        _check_shapes_first(builder, merged, name=name, weights=weights)
        return builder(**merged)
    except TypeError as exc:  # a stored switch this builder does not take
        raise ValueError(
            f"weights file {weights}: its stored switches {sorted(stored)} do not fit "
            f"{fn_name}: {exc}"
        ) from None


def _check_shapes_first(builder: Any, switches: dict[str, Any], *, name: str, weights: str) -> None:
    """Build the net on the ``meta`` device (no memory) and compare its shapes with the weights
    file's header before the real build: switches read from an untrusted file's metadata (e.g.
    ``reduced_channels`` of a million) must not allocate a net larger than the file itself."""
    import torch

    from seg_perception.networks.export import check_fits, stored_shapes

    if not str(weights).endswith(".safetensors"):
        return
    arch = {k: v for k, v in switches.items() if "weights" not in k}
    with torch.device("meta"):
        probe = builder(**arch)
    own = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    check_fits(own, stored_shapes(weights), path=weights, model_name=type(probe).__name__)
