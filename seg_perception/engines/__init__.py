"""Engines: one interface over PyTorch (and later ONNX Runtime / TensorRT) backends."""

from __future__ import annotations

from seg_perception.config import SegConfig, resolve_path
from seg_perception.engines.base import Engine, EngineError
from seg_perception.labels import LabelTable

__all__ = ["Engine", "EngineError", "create_semantic_engine"]


def create_semantic_engine(cfg: SegConfig, labels: LabelTable) -> tuple[Engine, str]:
    """Build the configured real-time network as an engine.

    Returns the engine and a one-line note on where its weights came from. Without a weights file
    this refuses (naming the ``weights`` parameter) unless ``allow_random_weights`` is true.
    """
    import torch

    from seg_perception.engines.torch_backend import TorchEngine
    from seg_perception.networks import build_model
    from seg_perception.networks.export import SemanticExport, load_weights

    weights = resolve_path(cfg.weights)
    torch.manual_seed(0)  # random-weights mode is reproducible
    model = build_model(cfg.model, num_classes=labels.num_classes)
    if weights.is_file():
        load_weights(model, weights)
        note = f"weights from {weights}"
    elif cfg.allow_random_weights:
        note = f"RANDOM WEIGHTS ({weights} not found; allow_random_weights is true)"
    else:
        raise EngineError(
            f"parameter 'weights': file {weights} not found. Train or copy weights there, point "
            f"'weights' at a file, or set allow_random_weights:=true (demo only)."
        )
    engine = TorchEngine(
        SemanticExport(model),
        input_hw=(cfg.network_height, cfg.network_width),
        num_classes=labels.num_classes,
        device=cfg.device,
        threads=cfg.threads,
        name=f"{cfg.model}/{cfg.backend}",
    )
    return engine, note
