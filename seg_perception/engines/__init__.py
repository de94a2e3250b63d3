"""Engines: one interface over PyTorch, ONNX Runtime and TensorRT backends.

An engine is described by one :class:`~seg_perception.engines.spec.EngineSpec` and made by
:func:`~seg_perception.engines.factory.build` (:func:`~seg_perception.engines.factory.export` and
:func:`~seg_perception.engines.factory.prepare` give its ONNX export and backend artefact). The
node's configuration becomes specs here, for the node and ``eval`` alike.
"""

from __future__ import annotations

from seg_perception.config import SegConfig, resolve_path
from seg_perception.engines.base import Engine, EngineError
from seg_perception.engines.spec import EngineSpec, resolve_weights
from seg_perception.labels import LabelTable

__all__ = ["Engine", "EngineError", "EngineSpec", "panoptic_spec", "semantic_spec"]


def _artefact(value: str) -> str | None:
    return str(resolve_path(value)) if value else None


def semantic_spec(
    cfg: SegConfig, labels: LabelTable, *, max_batch: int = 1, tta: str = "none"
) -> tuple[EngineSpec, str]:
    """The configured real-time network's spec, and where its weights came from (for the log).
    ``tta``: a test-time procedure of the papers (offline evaluation; the node leaves it
    ``none``)."""
    if cfg.engine_file:
        weights, note = None, f"ready artefact {resolve_path(cfg.engine_file)}"
    else:
        weights, note = resolve_weights(
            cfg.semantic_weights(),
            model=cfg.model,
            allow_random_weights=cfg.allow_random_weights,
            parameter="weights",
        )
    spec = EngineSpec(
        model=cfg.model,
        num_classes=labels.num_classes,
        input_hw=(cfg.network_height, cfg.network_width),
        weights=weights,
        artefact=_artefact(cfg.engine_file),
        backend=cfg.backend,
        precision=cfg.precision,
        providers=cfg.providers,
        threads=cfg.threads,
        max_batch=max_batch,
        cache_dir=cfg.engine_cache or None,
        device=cfg.device,
        tta=tta,
    )
    return spec, note


def panoptic_spec(cfg: SegConfig, labels: LabelTable) -> tuple[EngineSpec, str]:
    """The panoptic ASP model's spec (same backend as the real-time net, fp32 on CPU)."""
    p = cfg.panoptic
    if p.engine_file:
        weights, note = None, f"ready artefact {resolve_path(p.engine_file)}"
    else:
        weights, note = resolve_weights(
            p.weights,
            model="panoptic_asp",
            allow_random_weights=cfg.allow_random_weights,
            parameter="panoptic.weights",
        )
    # async: the ASP model runs beside the real-time net; on a CPU it gets half the threads so
    # that the semantic topics keep their rate
    threads = max(1, cfg.threads // 2) if p.mode == "async" and cfg.threads else cfg.threads
    spec = EngineSpec(
        model="panoptic_asp",
        num_classes=labels.num_classes,
        input_hw=(p.network_height, p.network_width),
        weights=weights,
        artefact=_artefact(p.engine_file),
        backend=cfg.backend,
        precision="fp16" if cfg.backend == "tensorrt" else "fp32",
        providers=cfg.providers,
        threads=threads,
        cache_dir=cfg.engine_cache or None,
        device=cfg.device,
    )
    return spec, note
