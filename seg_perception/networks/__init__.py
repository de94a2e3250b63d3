"""Networks of the package and the explicit dict of their builders.

``build_model(name, **switches)`` is the one entry point used by the node, the engines, the
exporter and the trainer. An unknown name is an error that lists the valid ones.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

# name -> "module:builder". Resolved on use so that importing the package stays cheap
# (the panoptic model pulls in torchvision's detection stack).
MODEL_BUILDERS: dict[str, str] = {
    "gun": "seg_perception.networks.gun:build_gun",
    "shelfnet": "seg_perception.networks.shelfnet:build_shelfnet",
    "panoptic_asp": "seg_perception.networks.panoptic_asp:build_panoptic_asp",
}


def build_model(name: str, **switches: Any) -> nn.Module:
    """Build the network ``name`` with keyword switches (see each ``build_*`` function)."""
    try:
        target = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(sorted(MODEL_BUILDERS))}"
        ) from None
    module_name, fn_name = target.split(":")
    builder = getattr(importlib.import_module(module_name), fn_name)
    return builder(**switches)
