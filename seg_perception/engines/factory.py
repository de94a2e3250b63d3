"""From an :class:`~seg_perception.engines.spec.EngineSpec` to an artefact and an engine.

* :func:`export`: the ONNX export form. A ready ONNX artefact is checked and used as given;
  otherwise the network is exported on first use into the cache directory under a key made of
  the weights file's content hash, the model and its switches, input size and class count
  (:func:`ensure_onnx`): new weights give a new export, the same weights reuse it.
* :func:`prepare`: what the backend runs, built and cached: the ONNX graph that carries the
  spec's precision -- the export itself (fp32), its fp16 form (:func:`ensure_fp16_onnx`) or its
  int8 Q/DQ form (:func:`ensure_int8_onnx`, keyed by the source hash, calibration data hash and
  settings, the int8 mode included) -- for onnxruntime, or the strongly typed TensorRT plan built
  from that graph (:func:`~seg_perception.engines.tensorrt_build.load_or_build`). TensorRT and
  onnxruntime's TensorRT EP get the fp16 graph and the symmetric ``s8s8_symmetric`` Q/DQ graph
  (TensorRT 11 has no builder precision flags and no calibrator: the graph carries the precision).
* :func:`build`: the running engine (``torch``: the network built eagerly from its weights).

A spec without a weights file builds seeded random weights (``torch.manual_seed(0)``); whether
that is allowed is decided once, by :func:`~seg_perception.engines.spec.resolve_weights`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg_perception.engines.base import Engine, EngineError
from seg_perception.engines.cache import (
    export_key,
    fp16_onnx_key,
    int8_onnx_key,
    key_digest,
    record,
    sha256_file,
    verify,
)
from seg_perception.engines.spec import EngineSpec
from seg_perception.machine import choose_int8_mode, detect

__all__ = [
    "build",
    "ensure_fp16_onnx",
    "ensure_int8_onnx",
    "ensure_onnx",
    "export",
    "int8_mode_for",
    "prepare",
    "tensorrt_ep",
]

log = logging.getLogger(__name__)

OPSET = 17


def _export_module(spec: EngineSpec) -> Any:
    """Build ``model`` with its weights and wrap it in its export form.

    ``build_model(..., weights=file)`` applies the builder switches stored in the file's
    metadata (``networks.export.stored_switches``) under ``switches``, so the weights of a
    narrow net (e.g. GUN ``width=0.5``) build that net; a file without metadata builds the
    default net. The cache key needs no change: it holds the file's content hash.
    """
    import torch

    from seg_perception.networks import build_model

    kind, model, num_classes, input_hw = spec.kind, spec.model, spec.num_classes, spec.input_hw
    weights, switches = spec.weights, dict(spec.switches)
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
    from seg_perception.networks.tta import with_tta

    try:
        net = with_tta(net.eval(), spec.tta)
    except ValueError as exc:  # e.g. multistep on a net without a strided output
        raise EngineError(f"engine {spec.label}: {exc}") from None
    return SemanticExport(net)


def ensure_onnx(spec: EngineSpec) -> Path:
    """The cached ONNX export of this configuration, exported (atomically) if missing/stale."""
    import onnx
    import torch

    from seg_perception.atomic import atomic_path
    from seg_perception.engines.onnx_backend import write_metadata

    kind, model, num_classes, input_hw = spec.kind, spec.model, spec.num_classes, spec.input_hw
    weights, switches, cache_dir = spec.weights, dict(spec.switches), spec.cache
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
        tta=spec.tta,
    )
    h, w = input_hw
    path = cache_dir / "onnx" / f"{model}-{h}x{w}-{key_digest(key, 16)}.onnx"
    reason = verify(path, key)
    if reason is None:
        log.info("%s ONNX from the cache: %s", model, path)
        return path
    log.info("exporting %s to ONNX (first start with these weights; cached): %s", model, reason)
    module = _export_module(spec)
    from seg_perception.networks.relation import DeformConv2d

    if any(isinstance(m, DeformConv2d) for m in module.modules()):
        raise EngineError(
            f"engine {spec.label}: the network has deformable convolutions (switch deformable), "
            "which export to no ONNX opset this package uses; run it with backend torch"
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


def ensure_fp16_onnx(source: Path, *, cache_dir: Path) -> Path:
    """The cached fp16 form of the ONNX ``source`` (:func:`~seg_perception.engines.fp16.
    convert_to_fp16`), converted (atomically) when missing or stale."""
    import onnx

    from seg_perception.atomic import atomic_path
    from seg_perception.engines.fp16 import REVISION, convert_to_fp16

    key = fp16_onnx_key(source_sha256=sha256_file(source), revision=REVISION)
    path = cache_dir / "onnx" / f"{source.stem}-fp16-{key_digest(key, 16)}.onnx"
    reason = verify(path, key)
    if reason is None:
        return path
    log.info("converting %s to fp16: %s", source.name, reason)
    try:
        model = convert_to_fp16(onnx.load(str(source)))
        onnx.checker.check_model(model)
    except Exception as exc:  # a graph the conversion or the checker refuses
        why = f"{type(exc).__name__}: {exc}"
        raise EngineError(f"ONNX file {source}: no fp16 form: {why}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
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
    of :data:`seg_perception.machine.INT8_MODES` (``s8s8_symmetric`` for TensorRT); the mode is
    part of the cache key.
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
    key = int8_onnx_key(
        source_sha256=sha256_file(fp32_onnx),
        calib_sha256=batches_sha256(images),
        settings=quantization_settings(per_channel=per_channel, method=method, mode=concrete),
        onnxruntime=ort.__version__,
    )
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


def tensorrt_ep(spec: EngineSpec) -> bool:
    """Does ``spec`` (backend onnxruntime) list onnxruntime's TensorRT execution provider?"""
    from seg_perception.engines.ort_providers import PROVIDER_ALIASES

    full = PROVIDER_ALIASES["tensorrt"]
    return any(PROVIDER_ALIASES.get(p.lower(), p) == full for p in spec.providers)


def int8_mode_for(spec: EngineSpec) -> str:
    """The int8 mode ``spec`` quantises with: ``s8s8_symmetric`` for TensorRT and for
    onnxruntime with the TensorRT EP listed (TensorRT takes symmetric int8 Q/DQ only -- an
    explicit CPU mode there is an error); otherwise the spec's setting (``auto``: this CPU)."""
    from seg_perception.engines.quantize import TENSORRT_INT8_MODE

    if spec.backend == "tensorrt" or (spec.backend == "onnxruntime" and tensorrt_ep(spec)):
        if spec.int8_mode not in ("auto", TENSORRT_INT8_MODE):
            where = "backend tensorrt" if spec.backend == "tensorrt" else "the TensorRT EP"
            raise EngineError(
                f"engine {spec.label}: int8 mode {spec.int8_mode} is an onnxruntime CPU mode; "
                f"{where} takes symmetric int8 only: int8 mode auto or {TENSORRT_INT8_MODE}"
            )
        return TENSORRT_INT8_MODE
    return spec.int8_mode


def _images(spec: EngineSpec) -> list[np.ndarray]:
    """The spec's int8 calibration images at its input size."""
    from seg_perception.engines.calibration import CalibrationError, calibration_images

    try:
        return calibration_images(
            spec.calib, input_hw=spec.input_hw, count=spec.calib_frames, topic=spec.calib_topic
        )
    except CalibrationError as exc:
        raise EngineError(str(exc)) from None


def export(spec: EngineSpec) -> Path:
    """The ONNX export form of ``spec``: its ready ONNX artefact, checked, or the cached export
    of its weights (exported atomically when missing or stale)."""
    if spec.artefact is not None and spec.artefact.suffix == ".onnx":
        path = spec.artefact
    elif spec.artefact is not None:
        raise EngineError(f"engine {spec.label}: {spec.artefact} is a TensorRT plan, not ONNX")
    else:
        path = ensure_onnx(spec)
    _check_artefact(path, num_classes=spec.num_classes, input_hw=spec.input_hw)
    return path


def prepare(spec: EngineSpec) -> Path:
    """The artefact ``spec``'s backend runs, made (and cached) if needed: the ONNX graph that
    carries the spec's precision (onnxruntime) or the strongly typed TensorRT plan built from
    it (tensorrt)."""
    if spec.backend == "torch":
        raise EngineError(f"engine {spec.label}: backend torch runs weights; no artefact to build")
    if spec.backend == "tensorrt" and spec.artefact is not None and spec.artefact.suffix != ".onnx":
        return spec.artefact  # a ready plan: checked when it is loaded (I/O names, shapes)
    if spec.backend == "tensorrt" and spec.precision == "bf16":
        raise EngineError(f"engine {spec.label}: bf16 is not offered for TensorRT; use fp16")
    typed = _typed_onnx(spec, export(spec))
    if spec.backend == "onnxruntime":
        return typed
    from seg_perception.engines.tensorrt_build import load_or_build

    return load_or_build(
        typed,
        cache_dir=spec.cache,
        precision=spec.precision,
        max_batch=spec.max_batch,
        device=spec.gpu,
        workspace_bytes=int(spec.workspace_gib * (1 << 30)),
    )


def _typed_onnx(spec: EngineSpec, onnx_path: Path) -> Path:
    """The ONNX graph carrying ``spec.precision``: ``onnx_path`` itself when it already does (a
    ready fp16 or Q/DQ artefact), else its cached fp16 / int8 form. For TensorRT (and the
    TensorRT EP) a Q/DQ graph must be symmetric int8."""
    import onnx

    from seg_perception.engines.fp16 import graph_precision
    from seg_perception.engines.quantize import TENSORRT_INT8_MODE, asymmetric_quantizers

    proto = onnx.load(str(onnx_path), load_external_data=False)
    carried = graph_precision(proto)
    wanted = spec.precision
    trt = spec.backend == "tensorrt" or tensorrt_ep(spec)
    if carried == wanted:
        bad = asymmetric_quantizers(proto) if carried == "int8" and trt else []
        if bad:
            raise EngineError(
                f"ONNX file {onnx_path}: {len(bad)} Q/DQ node(s) (e.g. {bad[0]!r}) are not "
                f"symmetric int8 with zero point 0, which TensorRT needs; quantise the fp32 "
                f"model with int8 mode {TENSORRT_INT8_MODE}"
            )
        return onnx_path
    if carried == "fp32" and wanted == "fp16":
        return ensure_fp16_onnx(onnx_path, cache_dir=spec.cache)
    if carried == "fp32" and wanted == "int8":
        return ensure_int8_onnx(
            onnx_path, cache_dir=spec.cache, images=_images(spec), mode=int8_mode_for(spec)
        )
    if spec.backend == "onnxruntime" and wanted == "fp32":
        return onnx_path  # onnxruntime runs the graph as it is typed
    raise EngineError(
        f"engine {spec.label}: ONNX file {onnx_path} carries {carried}, not {wanted}: give the "
        f"fp32 export (the {wanted} form is derived from it) or set precision {carried}"
    )


def build(spec: EngineSpec) -> Engine:
    """A running engine for ``spec``; every problem is an :class:`EngineError` naming the file
    or parameter."""
    if spec.backend == "torch":
        from seg_perception.engines.torch_backend import TorchEngine

        module = _export_module(spec)
        return TorchEngine(
            module,
            input_hw=spec.input_hw,
            num_classes=spec.num_classes,
            device=spec.device,
            threads=spec.threads,
            name=spec.label,
            precision=spec.precision,
            max_batch=spec.max_batch,
            output_names=spec.outputs,
        )
    path = prepare(spec)
    if spec.backend == "onnxruntime":
        from seg_perception.engines.onnx_backend import OnnxEngine

        return OnnxEngine(
            path,
            providers=list(spec.providers),
            threads=spec.threads,
            graph_optimization=spec.graph_optimization,
            precision=spec.precision,
            num_classes=spec.num_classes,
            input_hw=spec.input_hw,
            max_batch=spec.max_batch,
            expected_outputs=spec.outputs,
            cache_dir=spec.cache,
            name=spec.label,
        )
    from seg_perception.engines.tensorrt_backend import TensorRTEngine

    return TensorRTEngine(
        path,
        num_classes=spec.num_classes,
        input_hw=spec.input_hw,
        expected_outputs=spec.outputs,
        device=spec.gpu,
        name=spec.label,
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
