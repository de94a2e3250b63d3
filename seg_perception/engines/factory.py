"""``create_engine``: one call from configuration to a running engine, for every backend.

* ``torch``: the network is built and its weights loaded; the export form runs eagerly.
* ``onnxruntime`` / ``tensorrt``: an ONNX artefact is used as given (``onnx=``) or exported on first
  use into the cache directory under a key made of the weights file's content hash, the model and
  its switches, input size and class count (:func:`ensure_onnx`): new weights give a new export,
  the same weights reuse it. int8 for onnxruntime quantises that export (:func:`ensure_int8_onnx`,
  keyed by the source hash, calibration data hash and settings, the int8 mode of this kind of CPU
  included); TensorRT engines are built and cached by
  :func:`~seg_perception.engines.build_engine_cli.load_or_build`.

Without a weights file the network gets seeded random weights (``torch.manual_seed(0)``) only
with ``allow_random_weights=True`` (demos and tests), as ``create_semantic_engine`` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg_perception.engines.base import PRECISIONS, SEMANTIC_OUTPUTS, Engine, EngineError
from seg_perception.engines.cache import (
    default_cache_dir,
    export_key,
    key_digest,
    record,
    sha256_file,
    verify,
)
from seg_perception.machine import INT8_MODES, choose_int8_mode, detect

__all__ = [
    "BACKENDS",
    "KINDS",
    "create_engine",
    "ensure_int8_onnx",
    "ensure_onnx",
    "parse_providers",
]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
#: kind -> models of that kind
KINDS: dict[str, tuple[str, ...]] = {
    "semantic": ("gun", "shelfnet"),
    "panoptic": ("panoptic_asp",),
}
OPSET = 17


def parse_providers(providers: str | Sequence[str]) -> list[str]:
    """``"tensorrt, cuda,cpu"`` or a list -> ``["tensorrt", "cuda", "cpu"]``."""
    items = providers.split(",") if isinstance(providers, str) else list(providers)
    out = [p.strip() for p in items if p.strip()]
    if not out:
        raise EngineError("parameter 'providers': no onnxruntime provider given")
    return out


def _output_names(kind: str) -> tuple[str, ...]:
    if kind == "panoptic":
        from seg_perception.networks.panoptic_export import OUTPUT_NAMES

        return tuple(OUTPUT_NAMES)
    return SEMANTIC_OUTPUTS


def _weights_path(
    weights: str | os.PathLike[str] | None, allow_random_weights: bool
) -> Path | None:
    """The weights file to load, or ``None`` for seeded random weights (when allowed)."""
    if weights is not None and Path(weights).is_file():
        return Path(weights)
    if allow_random_weights:
        what = "no weights file given" if weights is None else f"{weights} not found"
        # debug only: the callers report it once (resolve_weights' note, the bench tables)
        log.debug("random weights: %s (allow_random_weights is true)", what)
        return None
    if weights is None:
        raise EngineError(
            "no weights file given; pass weights=PATH or allow_random_weights=True (demo only)"
        )
    raise EngineError(f"weights file {weights} not found")


def _export_module(
    kind: str,
    model: str,
    *,
    num_classes: int,
    input_hw: tuple[int, int],
    weights: Path | None,
    switches: Mapping[str, Any],
) -> Any:
    """Build ``model`` with its weights and wrap it in its export form.

    ``build_model(..., weights=file)`` applies the builder switches stored in the file's
    metadata (``networks.export.stored_switches``) under ``switches``, so the weights of a
    narrow net (e.g. GUN ``width=0.5``) build that net; a file without metadata builds the
    default net. The cache key needs no change: it holds the file's content hash.
    """
    import torch

    from seg_perception.networks import build_model

    torch.manual_seed(0)  # random-weights mode is reproducible
    extra: dict[str, Any] = {} if weights is None else {"weights": str(weights)}
    if kind == "panoptic":
        h, w = input_hw  # the export form runs without resizing: min/max size = the input size
        extra.update(min_size=min(h, w), max_size=max(h, w))
    try:
        net = build_model(model, num_classes=num_classes, **dict(switches), **extra)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        src = f"weights file {weights}" if weights is not None else f"model {model!r}"
        raise EngineError(
            f"{src} does not fit {model} with {num_classes} classes (label table): {exc}"
        ) from None
    if kind == "panoptic":
        from seg_perception.networks.panoptic_export import PanopticExport

        return PanopticExport(net.eval(), input_hw)
    from seg_perception.networks.export import SemanticExport

    return SemanticExport(net.eval())


def ensure_onnx(
    kind: str,
    model: str,
    *,
    num_classes: int,
    input_hw: tuple[int, int],
    weights: Path | None,
    switches: Mapping[str, Any],
    cache_dir: Path,
) -> Path:
    """The cached ONNX export of this configuration, exported (atomically) if missing/stale."""
    import onnx
    import torch

    from seg_perception.atomic import atomic_path
    from seg_perception.engines.onnx_backend import write_metadata

    weights_sha = sha256_file(weights) if weights is not None else None
    dynamic = kind == "semantic"
    key = export_key(
        kind=kind,
        model=model,
        switches=switches,
        weights_sha256=weights_sha,
        input_hw=input_hw,
        num_classes=num_classes,
        opset=OPSET,
        torch_version=torch.__version__,
        dynamic_batch=dynamic,
    )
    h, w = input_hw
    path = cache_dir / "onnx" / f"{model}-{h}x{w}-{key_digest(key, 16)}.onnx"
    reason = verify(path, key)
    if reason is None:
        log.info("%s ONNX from the cache: %s", model, path)
        return path
    log.info("exporting %s to ONNX (first start with these weights; cached): %s", model, reason)
    module = _export_module(
        kind, model, num_classes=num_classes, input_hw=input_hw, weights=weights, switches=switches
    )
    if kind == "panoptic":
        from seg_perception.networks.panoptic_export import export_panoptic_onnx

        export_panoptic_onnx(module, path, input_hw=input_hw, opset=OPSET)
    else:
        from seg_perception.networks.export import export_onnx

        export_onnx(module, path, input_hw=input_hw, opset=OPSET, dynamic_batch=dynamic)
    proto = onnx.load(str(path))
    write_metadata(
        proto,
        {
            "kind": kind,
            "model": model,
            "num_classes": num_classes,
            "input_hw": f"{h}x{w}",
            "weights_sha256": weights_sha or "random",
        },
    )
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    record(path, key)
    return path


def ensure_int8_onnx(
    fp32_onnx: Path,
    *,
    cache_dir: Path,
    images: Sequence[np.ndarray],
    per_channel: bool = True,
    method: str = "minmax",
    mode: str = "auto",
) -> Path:
    """The cached QDQ int8 version of ``fp32_onnx`` for these calibration ``images``.

    ``mode``: ``auto`` (follow this CPU: :func:`seg_perception.machine.choose_int8_mode`) or one
    of :data:`seg_perception.machine.INT8_MODES`; the mode is part of the cache key.
    """
    import onnxruntime as ort

    from seg_perception.engines.calibration import batches_sha256
    from seg_perception.engines.quantize import quantization_settings, quantize_int8

    machine = detect()
    try:
        choice = choose_int8_mode(mode, machine.features, machine.architecture)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    concrete = str(choice.value)
    key = {
        "source_sha256": sha256_file(fp32_onnx),
        "calib_sha256": batches_sha256(images),
        "settings": quantization_settings(per_channel=per_channel, method=method, mode=concrete),
        "onnxruntime": ort.__version__,
    }
    path = cache_dir / "onnx" / f"{fp32_onnx.stem}-int8-{key_digest(key, 16)}.onnx"
    reason = verify(path, key)
    if reason is None:
        log.info("int8 model %s: %s", path.name, choice.reason)
        return path
    log.info("quantising to int8 (%s): %s", choice.reason, reason)
    quantize_int8(
        fp32_onnx, path, images=images, per_channel=per_channel, method=method, mode=concrete
    )
    record(path, key)
    return path


def create_engine(
    kind: str = "semantic",
    *,
    model: str,
    num_classes: int,
    input_hw: tuple[int, int],
    weights: str | os.PathLike[str] | None = None,
    onnx: str | os.PathLike[str] | None = None,
    backend: str = "torch",
    precision: str = "fp32",
    providers: str | Sequence[str] = ("cpu",),
    threads: int = 0,
    max_batch: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    model_switches: Mapping[str, Any] | None = None,
    allow_random_weights: bool = False,
    graph_optimization: str = "all",
    calib: str | os.PathLike[str] | None = None,
    calib_topic: str | None = None,
    calib_count: int = 16,
    int8_mode: str = "auto",
    name: str | None = None,
) -> Engine:
    """Create an engine; every problem is an :class:`EngineError` naming the file / parameter.

    Args:
        kind: ``"semantic"`` (GUN, ShelfNet) or ``"panoptic"`` (the ASP model).
        model: network name (``build_model``); ``model_switches`` go to its builder
            (e.g. ``{"backbone": "resnet50"}`` for ShelfNet-50).
        num_classes: classes of the label table; the artefact must predict as many.
        input_hw: network input ``(H, W)``.
        weights: weights file (``.safetensors``/``.pt``) of the network.
        onnx: an ONNX artefact to run instead of exporting (onnxruntime / tensorrt).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        precision: ``"fp32"``, ``"bf16"`` (torch), ``"fp16"`` (torch CUDA, TensorRT, the ORT
            TensorRT EP), ``"int8"`` (onnxruntime QDQ, TensorRT).
        providers: onnxruntime providers in order (``"tensorrt,cuda,cpu"`` or a list).
        threads: CPU threads (torch / onnxruntime intra-op; 0 = library default).
        max_batch: the most camera frames one ``infer`` call takes.
        cache_dir: where exports and engines are cached (default :func:`default_cache_dir`).
        device: torch device (``"cpu"``/``"cuda:N"``); its index is the TensorRT GPU.
        allow_random_weights: seeded random weights when ``weights`` is missing (demo only).
        graph_optimization: onnxruntime graph optimisation level.
        calib, calib_topic, calib_count: int8 calibration images: a folder, a bag (+ camera
            topic) or ``None``/``"synthetic"`` for the synthetic street scenes.
        int8_mode: how onnxruntime int8 is quantised: ``auto`` (follow this CPU), ``u8s8`` or
            ``u8s8_reduce_range`` (7-bit weights, for x86 CPUs without VNNI).
    """
    if kind not in KINDS:
        raise EngineError(f"engine kind {kind!r}; valid: {', '.join(KINDS)}")
    if model not in KINDS[kind]:
        raise EngineError(
            f"model {model!r} is not a {kind} network; valid: {', '.join(KINDS[kind])}"
        )
    if backend not in BACKENDS:
        raise EngineError(f"parameter 'backend': {backend!r}; valid: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EngineError(f"parameter 'precision': {precision!r}; valid: {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise EngineError(f"parameter 'max_batch' must be >= 1, got {max_batch}")
    if int8_mode != "auto" and int8_mode not in INT8_MODES:
        raise EngineError(f"int8 mode {int8_mode!r}; valid: auto, {', '.join(INT8_MODES)}")
    switches = dict(model_switches or {})
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    outputs = _output_names(kind)
    label = name or f"{model}/{backend}/{precision}"
    if kind == "panoptic" and max_batch != 1:
        raise EngineError(f"engine {label}: the panoptic export form takes one image per call")

    if backend == "torch":
        if onnx is not None:
            raise EngineError(f"engine {label}: backend torch runs weights, not ONNX ({onnx})")
        from seg_perception.engines.torch_backend import TorchEngine

        module = _export_module(
            kind,
            model,
            num_classes=num_classes,
            input_hw=input_hw,
            weights=_weights_path(weights, allow_random_weights),
            switches=switches,
        )
        return TorchEngine(
            module,
            input_hw=input_hw,
            num_classes=num_classes,
            device=device,
            threads=threads,
            name=label,
            precision=precision,
            max_batch=max_batch,
            output_names=outputs,
        )

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if onnx is not None:
        onnx_path = Path(onnx)
        if not onnx_path.is_file():
            raise EngineError(f"ONNX file {onnx_path} not found")
    else:
        onnx_path = ensure_onnx(
            kind,
            model,
            num_classes=num_classes,
            input_hw=input_hw,
            weights=_weights_path(weights, allow_random_weights),
            switches=switches,
            cache_dir=cache,
        )
    _check_artefact(onnx_path, num_classes=num_classes, input_hw=input_hw)

    def images() -> list[np.ndarray]:
        from seg_perception.engines.calibration import CalibrationError, calibration_images

        try:
            return calibration_images(
                calib, input_hw=input_hw, count=calib_count, topic=calib_topic
            )
        except CalibrationError as exc:
            raise EngineError(str(exc)) from None

    if backend == "onnxruntime":
        from seg_perception.engines.onnx_backend import OnnxEngine
        from seg_perception.engines.tensorrt_backend import is_qdq_model

        if precision == "int8" and not is_qdq_model(onnx_path):
            onnx_path = ensure_int8_onnx(
                onnx_path, cache_dir=cache, images=images(), mode=int8_mode
            )
        return OnnxEngine(
            onnx_path,
            providers=parse_providers(providers),
            threads=threads,
            graph_optimization=graph_optimization,
            precision=precision,
            num_classes=num_classes,
            input_hw=input_hw,
            max_batch=max_batch,
            expected_outputs=outputs,
            cache_dir=cache,
            name=label,
        )

    from seg_perception.engines.build_engine_cli import load_or_build
    from seg_perception.engines.tensorrt_backend import TensorRTEngine, is_qdq_model

    if precision == "bf16":
        raise EngineError(f"engine {label}: bf16 is not offered for TensorRT; use fp16")
    gpu = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    calib_imgs = images() if precision == "int8" and not is_qdq_model(onnx_path) else None
    engine_path = load_or_build(
        onnx_path,
        cache_dir=cache,
        precision=precision,
        max_batch=max_batch,
        calib_images=calib_imgs,
        device=gpu,
    )
    return TensorRTEngine(
        engine_path,
        num_classes=num_classes,
        input_hw=input_hw,
        expected_outputs=outputs,
        device=gpu,
        name=label,
    )


def _check_artefact(path: Path, *, num_classes: int, input_hw: tuple[int, int]) -> None:
    """Class count and input size of an ONNX artefact vs the configuration (before any build)."""
    import onnx

    from seg_perception.engines.onnx_backend import artefact_num_classes, read_metadata

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: a corrupt or foreign file
        raise EngineError(f"ONNX file {path} cannot be read: {type(exc).__name__}: {exc}") from None
    meta = read_metadata({p.key: p.value for p in proto.metadata_props})
    k = int(meta["num_classes"]) if "num_classes" in meta else artefact_num_classes(path)
    if k is not None and k != num_classes:
        raise EngineError(
            f"ONNX file {path}: the model predicts {k} classes but the label table has "
            f"{num_classes}"
        )
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    hw = tuple(d.dim_value for d in dims[1:3]) if len(dims) == 4 else ()
    if hw != input_hw:
        raise EngineError(
            f"ONNX file {path}: input size {hw} differs from the configured {input_hw} "
            f"(input must be (N, H, W, 3))"
        )
