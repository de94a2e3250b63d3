"""Engines: one interface over PyTorch, ONNX Runtime and TensorRT backends.

The node and the offline tools build their engines from the node configuration here; the
backend-level construction (exports, caches, builds) is :func:`factory.create_engine`.
"""

from __future__ import annotations

from seg_perception.config import SegConfig, resolve_path
from seg_perception.engines.base import Engine, EngineError
from seg_perception.labels import LabelTable

__all__ = [
    "Engine",
    "EngineError",
    "create_panoptic_engine",
    "create_semantic_engine",
    "resolve_weights",
]


def resolve_weights(cfg: SegConfig, value: str, parameter: str, model: str) -> tuple[str, str]:
    """(resolved weights path, a note for the log) of the file parameter ``parameter`` holding
    ``value``, for the network ``model``.

    Refuses, naming ``parameter``: a missing file (unless ``allow_random_weights`` is true) and a
    file whose stored model name (exported weights carry it) is another network, with what to do.
    """
    from seg_perception.networks.export import stored_switches

    path = resolve_path(value)
    if not path.is_file():
        if cfg.allow_random_weights:
            return str(path), f"RANDOM WEIGHTS ({path} not found; allow_random_weights is true)"
        raise EngineError(
            f"parameter '{parameter}': file {path} not found. Train or copy weights there, point "
            f"'{parameter}' at a file, or set allow_random_weights:=true (demo only)."
        )
    try:
        stored, _ = stored_switches(path)
    except ValueError as exc:
        raise EngineError(f"parameter '{parameter}': {exc}") from None
    if stored is not None and stored != model:
        hint = (
            "leave 'weights' empty for each model's shipped file, or change 'model' and 'weights' "
            "together (ros2 param set_parameters_atomically / one --params-file)"
            if parameter == "weights"
            else f"point '{parameter}' at {model} weights"
        )
        raise EngineError(
            f"parameter '{parameter}': {path} holds a {stored!r} network, not {model!r}: {hint}"
        )
    return str(path), f"weights from {path}"


def create_semantic_engine(
    cfg: SegConfig, labels: LabelTable, *, max_batch: int = 1
) -> tuple[Engine, str]:
    """The configured real-time network as an engine, and where its weights came from."""
    from seg_perception.engines.factory import create_engine

    weights, note = resolve_weights(cfg, cfg.semantic_weights(), "weights", cfg.model)
    engine = create_engine(
        "semantic",
        model=cfg.model,
        num_classes=labels.num_classes,
        input_hw=(cfg.network_height, cfg.network_width),
        weights=weights,
        backend=cfg.backend,
        precision=cfg.precision,
        providers=cfg.providers,
        threads=cfg.threads,
        max_batch=max_batch,
        cache_dir=cfg.engine_cache or None,
        device=cfg.device,
        allow_random_weights=cfg.allow_random_weights,
    )
    return engine, note


def create_panoptic_engine(cfg: SegConfig, labels: LabelTable) -> tuple[Engine, str]:
    """The panoptic ASP model as an engine (same backend as the real-time net, fp32 on CPU)."""
    from seg_perception.engines.factory import create_engine

    weights, note = resolve_weights(
        cfg, cfg.panoptic.weights, "panoptic.weights", "panoptic_asp"
    )
    precision = "fp16" if cfg.backend == "tensorrt" else "fp32"
    # async: the ASP model runs beside the real-time net; on a CPU it gets half the threads so
    # that the semantic topics keep their rate
    threads = (
        max(1, cfg.threads // 2) if cfg.panoptic.mode == "async" and cfg.threads else cfg.threads
    )
    engine = create_engine(
        "panoptic",
        model="panoptic_asp",
        num_classes=labels.num_classes,
        input_hw=(cfg.panoptic.network_height, cfg.panoptic.network_width),
        weights=weights,
        backend=cfg.backend,
        precision=precision,
        providers=cfg.providers,
        threads=threads,
        max_batch=1,
        cache_dir=cfg.engine_cache or None,
        device=cfg.device,
        allow_random_weights=cfg.allow_random_weights,
    )
    return engine, note
