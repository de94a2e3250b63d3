"""What the engine tests share: the small input size, the two networks they fit, an engine spec
for them (the fitted weights and the export cache are module-scoped fixtures in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seg_perception.engines.spec import EngineSpec

H, W = 64, 128
K = 19
SWITCHES = {"gun": {}, "shelfnet": {"backbone": "resnet18"}}


def small_spec(model: str, weights: Path, cache: Path, **kw: Any) -> EngineSpec:
    """The spec of ``model`` (GUN or ShelfNet-18) at H x W with one thread; ``kw`` overrides."""
    args: dict[str, Any] = dict(
        model=model,
        switches=tuple(SWITCHES[model].items()),
        num_classes=K,
        input_hw=(H, W),
        weights=weights,
        cache_dir=cache,
        threads=1,
        max_batch=16,
    )
    return EngineSpec(**{**args, **kw})
