"""The networks' report (``seg-perception models``): every builder with its switches,
parameter count and GFLOPs.

GFLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass in eval
mode (2 FLOPs per multiply-add; convolutions, matmuls and the detector's linear layers; RoIAlign,
NMS and interpolation are not counted). ``fp16 MB`` is the size of the state dict as
``train.checkpoint.export_weights`` writes it (floating tensors as fp16, integer buffers kept;
1 MB = 1e6 bytes, safetensors header not counted).

``--variants paper`` (default) lists the papers' networks, ``cpu`` the width-reduced variants
sized for this CPU and the shipped-weights budget (our reduction, not the papers'), ``all`` both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The paper configurations the report lists: (label, builder name, switches, paper input size)
PAPER_CONFIGS: tuple[tuple[str, str, dict[str, Any], tuple[int, int]], ...] = (
    ("GUN (enc24shared, postproc_sum, GUM fusion)", "gun", {}, (512, 1024)),
    ("ShelfNet-18", "shelfnet", {"backbone": "resnet18"}, (512, 512)),
    ("ShelfNet-50", "shelfnet", {"backbone": "resnet50"}, (512, 512)),
    ("Panoptic ASP model (R50-FPN Mask R-CNN + ASP head)", "panoptic_asp", {}, (1024, 2048)),
)
# Width-reduced semantic nets for the CPU / the shipped-weights budget (issue 6), at 512x1024.
CPU_CONFIGS: tuple[tuple[str, str, dict[str, Any], tuple[int, int]], ...] = (
    ("GUN width 0.75 (shipped)", "gun", {"width": 0.75}, (512, 1024)),
    ("GUN width 0.5", "gun", {"width": 0.5}, (512, 1024)),
    ("GUN width 0.375", "gun", {"width": 0.375}, (512, 1024)),
    (
        "ShelfNet-18 bw 0.5, reduced 32/64/128/256",
        "shelfnet",
        {"backbone": "resnet18", "backbone_width": 0.5, "reduced_channels": [32, 64, 128, 256]},
        (512, 1024),
    ),
    (
        "ShelfNet-18 bw 0.5, reduced 64/64/128/256",
        "shelfnet",
        {"backbone": "resnet18", "backbone_width": 0.5, "reduced_channels": [64, 64, 128, 256]},
        (512, 1024),
    ),
    (
        "Panoptic ASP, R18 bw 0.5, FPN 64, box 256, mask/semantic 64",
        "panoptic_asp",
        {
            "backbone": "resnet18",
            "backbone_width": 0.5,
            "fpn_channels": 64,
            "box_representation": 256,
            "mask_channels": 64,
            "head_channels": 64,
            "rpn_post_nms_top_n_test": 300,
            "box_detections_per_img": 30,
        },
        (512, 1024),
    ),
)
VARIANTS = {"paper": PAPER_CONFIGS, "cpu": CPU_CONFIGS, "all": PAPER_CONFIGS + CPU_CONFIGS}


@dataclass
class ModelRow:
    label: str
    model: str
    switches: dict[str, Any]
    input_hw: tuple[int, int]
    params_m: float
    gflops: float
    fp16_mb: float = 0.0


def builder_switches(name: str) -> dict[str, Any]:
    """Keyword switches of a builder and their defaults (weights paths left out)."""
    import importlib

    from seg_perception.networks import MODEL_BUILDERS

    module, fn = MODEL_BUILDERS[name].split(":")
    builder: Callable[..., Any] = getattr(importlib.import_module(module), fn)
    sig = inspect.signature(builder)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and "weights" not in p.name
    }


def fp16_megabytes(model: Any) -> float:
    """Bytes / 1e6 of ``model.state_dict()`` with floating tensors as fp16 (the export format)."""
    return (
        sum(
            v.numel() * (2 if v.is_floating_point() else v.element_size())
            for v in model.state_dict().values()
        )
        / 1e6
    )


def measure(
    name: str, switches: dict[str, Any], input_hw: tuple[int, int]
) -> tuple[float, float, float]:
    """(parameters in millions, GFLOPs of one eval forward at ``input_hw``, fp16 MB)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from seg_perception.networks import build_model

    h, w = input_hw
    kwargs = dict(switches)
    if name == "panoptic_asp":
        kwargs.setdefault("min_size", min(h, w))
        kwargs.setdefault("max_size", max(h, w))
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        if name == "panoptic_asp":
            model([torch.rand(3, h, w)])
        else:
            model(torch.randn(1, 3, h, w))
    return params, counter.get_total_flops() / 1e9, fp16_megabytes(model)


def report(input_hw: tuple[int, int] | None = None, *, variants: str = "paper") -> list[ModelRow]:
    if variants not in VARIANTS:
        raise ValueError(f"variants must be one of {', '.join(VARIANTS)}, got {variants!r}")
    rows = []
    for label, name, switches, paper_hw in VARIANTS[variants]:
        hw = input_hw or paper_hw
        params, gflops, mb = measure(name, switches, hw)
        rows.append(
            ModelRow(label, name, {**builder_switches(name), **switches}, hw, params, gflops, mb)
        )
    return rows
