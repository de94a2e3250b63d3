"""int8: onnxruntime static quantisation of an fp32 export into a QDQ model.

QDQ format with per-channel int8 weights, in one of three modes
(:data:`seg_perception.machine.INT8_MODES`; for the CPU chosen for the machine by
:func:`seg_perception.machine.choose_int8_mode`, for TensorRT always ``s8s8_symmetric``). The two
CPU modes have uint8 activations, as onnxruntime's ``quantize_static`` docstring advises:

* ``u8s8`` for x86 CPUs with VNNI (AVX512-VNNI / AVX-VNNI / AMX) and other architectures: "Use
  activation_type=QuantType.QUInt8 and weight_type=QuantType.QInt8 with reduce_range=False";
* ``u8s8_reduce_range`` for x86 CPUs without VNNI (e.g. AVX2-only Zen 3): "set
  ``reduce_range=True``. The ``reduce_range`` flag quantizes weights to 7-bit to reduce the risk
  of integer saturation on CPUs that typically lack the VNNI dot-product instruction; this is
  particularly helpful for per-channel weight quantization." ORT's u8s8 kernels there sum pairs
  of uint8 x int8 products with VPMADDUBSW into saturating 16-bit lanes: 2 x 255 x 128 = 65280
  overflows them, 2 x 255 x 64 = 32640 (7-bit weights) does not, so the 7-bit model computes the
  same integers with or without VNNI. Class-id agreement with fp32 (test_engines, 64x128):
  ShelfNet-18 0.958 with 8-bit weights on an AVX2-only Zen 3; on a Zen 5 with VNNI ShelfNet-18
  0.994 (u8s8) / 0.992 (u8s8_reduce_range), GUN 0.999 / 0.998.

The third mode, ``s8s8_symmetric``, is TensorRT's explicit quantization (strongly typed engines,
TensorRT 10 and 11, and onnxruntime's TensorRT execution provider): TensorRT takes only
symmetric int8 Q/DQ -- int8 activations and weights with zero point 0 -- and no int32 Q/DQ, so
activations are calibrated symmetric (``ActivationSymmetric``) and biases stay fp32
(``QuantizeBias=False``; TensorRT fuses the fp32 bias into its int8 convolution itself). The
same graph runs on onnxruntime's CPU EP (test_trt_graphs.py measures its agreement with fp32),
so one quantised model serves both runtimes.

The mode is part of the int8 cache key (:func:`quantization_settings`): a model quantised for
one kind of CPU (or for TensorRT) is not reused for another. ORT fuses the DQ -> Conv -> Q
patterns into integer convolutions at session start.

Kept fp32 (:func:`excluded_nodes`): head and stem (< 1 % of the FLOPs), narrow first convolutions
(GUN: 4 %):

* the head: the last convolutions (classifier; GUN's guidance-offset head) and every op after
  them (upsampling, GUN's sampling grid, softmax, arg max) -- the nodes with no convolution
  downstream. 8-bit logits would turn near-ties of the arg max into flips, and an 8-bit sampling
  grid (normalised coordinates in [-1, 1], steps of 1/128) moves GUN's guided samples by up to
  half a low-resolution cell.
* the stem: the input normalisation and GUN's input pooling -- the non-convolution nodes with no
  convolution upstream. Their quantised forms (QLinearMul/Add/AveragePool on the full-resolution
  image) cost more than the fp32 ops (measured: ~80 ms vs ~15 ms per 512x1024 frame on 2 cores);
  the first convolution's input is quantised once instead.
* narrow first convolutions: a convolution reading the stem (3 input channels) with fewer than
  :data:`NARROW_OUT_CHANNELS` outputs. ORT's integer convolution unfolds its input (im2col, 147
  bytes per pixel for a 7x7 kernel), which few output channels do not amortise:
  GUN's DRN layer0 (7x7, 3 -> 16 at 256x512) takes 6.3 ms as QLinearConv vs 1.9 ms as the fp32
  blocked (NCHWc) convolution + 0.8 ms to reorder and quantise its output (512x1024 frame, 2
  threads). ShelfNet-18's stem (7x7, 3 -> 64, stride 2) is faster quantised (the whole int8
  model: 155 ms vs 170 ms with that convolution fp32) and stays int8.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg_perception.atomic import atomic_path
from seg_perception.machine import INT8_MODES

__all__ = [
    "CALIBRATION_METHODS",
    "NARROW_OUT_CHANNELS",
    "REVISION",
    "TENSORRT_INT8_MODE",
    "asymmetric_quantizers",
    "ensure_node_names",
    "excluded_nodes",
    "quantization_settings",
    "quantize_int8",
    "stem_and_head",
]

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: a first convolution with fewer output channels than this stays fp32 (module docstring).
NARROW_OUT_CHANNELS = 32
#: bump when the quantiser's graph changes for the same settings (part of the int8 cache key).
#: 2: narrow first convolutions fp32, with private copies of their initializers.
REVISION = 2
_HEAD_OPS = {"ArgMax", "Softmax", "ReduceMax", "TopK"}
_COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
#: the int8 mode of TensorRT engines and of onnxruntime's TensorRT EP (module docstring)
TENSORRT_INT8_MODE = "s8s8_symmetric"


def quantization_settings(*, per_channel: bool, method: str, mode: str) -> dict[str, Any]:
    """The settings that, with the source model and calibration data, define an int8 model
    (part of its cache key). ``mode``: one of :data:`~seg_perception.machine.INT8_MODES`."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"int8 calibration method {method!r}; valid: {', '.join(CALIBRATION_METHODS)}"
        )
    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode {mode!r}; valid: {', '.join(INT8_MODES)}")
    symmetric = mode == TENSORRT_INT8_MODE
    settings: dict[str, Any] = {
        "format": "QDQ",
        "per_channel": bool(per_channel),
        "activations": "int8 symmetric" if symmetric else "uint8",
        "weights": "int8",
        "mode": mode,
        "reduce_range": mode == "u8s8_reduce_range",
        "method": method,
        "stem_head_fp32": True,
        "first_conv_fp32_below": NARROW_OUT_CHANNELS,
        "revision": REVISION,
    }
    if symmetric:
        settings["bias"] = "fp32"
    return settings


def _reaches_compute(nodes: list[Any], links: dict[str, list[Any]], ports: str) -> dict[str, bool]:
    """For each node: is a compute node reachable along ``links`` (consumers or producers)?"""
    memo: dict[str, bool] = {}
    for start in nodes:
        if start.name in memo:
            continue
        stack: list[tuple[Any, bool]] = [(start, False)]
        while stack:  # iterative post-order DFS (graphs are DAGs, deep ones overflow recursion)
            node, done = stack.pop()
            nexts = [n for t in getattr(node, ports) for n in links.get(t, [])]
            if done:
                memo[node.name] = any(n.op_type in _COMPUTE_OPS or memo[n.name] for n in nexts)
            elif node.name not in memo:
                stack.append((node, True))
                stack.extend((n, False) for n in nexts if n.name not in memo)
    return memo


def _out_channels(node: Any, shapes: dict[str, list[int]]) -> int | None:
    """Output channels of a Conv from its weight initializer (``None`` if not an initializer)."""
    dims = shapes.get(node.input[1]) if len(node.input) > 1 else None
    return int(dims[0]) if dims else None


def stem_and_head(model: Any) -> tuple[set[str], set[str]]:
    """``(stem, head)`` node names of an export form's graph (nodes must be named).

    ``head``: nodes with no compute node (Conv/MatMul/Gemm) downstream -- the last compute layers
    (classifier, GUN's guidance-offset head) and everything after them (upsampling, GUN's
    sampling grid, softmax, arg max). ``stem``: non-compute nodes with no compute node upstream
    -- the input normalisation and GUN's input pooling. Shared by the int8 quantiser and the fp16
    conversion (:mod:`seg_perception.engines.fp16`), which both keep these regions fp32.
    """
    nodes = list(model.graph.node)
    consumers: dict[str, list[Any]] = {}
    producers: dict[str, list[Any]] = {}
    for node in nodes:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
        for t in node.output:
            producers.setdefault(t, []).append(node)
    feeds = _reaches_compute(nodes, consumers, "output")
    fed = _reaches_compute(nodes, producers, "input")
    head = {n.name for n in nodes if not feeds[n.name]}
    stem = {n.name for n in nodes if n.op_type not in _COMPUTE_OPS and not fed[n.name]}
    return stem, head


def excluded_nodes(model: Any) -> tuple[list[str], list[str]]:
    """``(stem, head)``: the nodes kept fp32 (see the module docstring).

    ``head`` and ``stem`` as :func:`stem_and_head`; ``stem`` also holds the convolutions reading
    the stem (or the graph input) with fewer than :data:`NARROW_OUT_CHANNELS` output channels.
    """
    nodes = list(model.graph.node)
    stem, head = stem_and_head(model)
    from_stem = {t for n in nodes if n.name in stem for t in n.output}
    from_stem.update(i.name for i in model.graph.input)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    narrow = {
        n.name
        for n in nodes
        if n.op_type == "Conv"
        and n.input[0] in from_stem
        and (_out_channels(n, shapes) or NARROW_OUT_CHANNELS) < NARROW_OUT_CHANNELS
        and n.name not in head
    }
    return sorted(stem | narrow), sorted(head)


def asymmetric_quantizers(model: Any) -> list[str]:
    """Names of the Q/DQ nodes of ``model`` that TensorRT cannot take: a zero point that is not
    an int8 zero (uint8 or int32 types, or non-zero values). Empty for a model quantised in
    :data:`TENSORRT_INT8_MODE`. Zero points given by a node rather than an initializer count as
    not symmetric (TensorRT needs constants)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = node.input[2] if len(node.input) > 2 else ""
        if not zp:
            src = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
            if src is not None and src.data_type != TensorProto.INT8:
                bad.append(node.name)  # e.g. an int32 bias
            continue  # a QuantizeLinear without zero point quantises to int8, zero point 0
        t = inits.get(zp)
        if t is None or t.data_type != TensorProto.INT8 or numpy_helper.to_array(t).any():
            bad.append(node.name)
    return bad


class _Reader:
    """``CalibrationDataReader`` over uint8 batches (duck-typed: ``get_next`` / ``rewind``)."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = list(batches)
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self.batches):
            return None
        self._i += 1
        return {self.input_name: np.ascontiguousarray(self.batches[self._i - 1])}

    def rewind(self) -> None:
        self._i = 0

    def __len__(self) -> int:
        return len(self.batches)


def _unshare_initializers(model: Any, keep_fp32: set[str]) -> None:
    """Give every fp32-kept node private copies of the initializers it shares with quantised
    nodes (in place). The exporter merges equal constants (e.g. the zero biases of freshly
    initialised BN-folded convolutions); the quantiser would replace such a shared constant by a
    DequantizeLinear output, and ORT fuses a convolution into its blocked (NCHWc) kernel only
    when its weight and bias are constants (measured: DRN layer0 4.1 ms vs 2.6 ms)."""
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for t in node.input:
            if t in inits:
                users.setdefault(t, set()).add(node.name)
    copies: dict[str, str] = {}
    for node in model.graph.node:
        if node.name not in keep_fp32:
            continue
        for i, t in enumerate(node.input):
            if t in inits and users[t] - keep_fp32:
                if t not in copies:
                    copy = model.graph.initializer.add()
                    copy.CopyFrom(inits[t])
                    copy.name = copies[t] = f"{t}_fp32"
                node.input[i] = copies[t]


def ensure_node_names(model: Any) -> None:
    """Name every unnamed node ``<op>_<index>`` (in place): regions and exclusions go by name."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def _pre_process(src: Path, pre: Path) -> None:
    """onnxruntime's ``quant_pre_process`` from ``src`` to ``pre``.

    Its shape inference writes the model from C++ and does not report a failed write: on a full
    disk the truncated file then fails to parse with protobuf's "Wire format was corrupt", which
    names neither the file nor the cause. Raised here as an error that names both.
    """
    from google.protobuf.message import DecodeError
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except (DecodeError, OSError) as e:
        free_mib = shutil.disk_usage(pre.parent).free / 2**20
        raise RuntimeError(
            f"quantize_int8: onnxruntime's pre-processing of {src} failed "
            f"({type(e).__name__}: {e}); {free_mib:.0f} MiB free in {pre.parent}, and a full disk "
            "truncates the files it writes: free space (or set TMPDIR) and run it again"
        ) from e


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    images: Iterable[np.ndarray],
    per_channel: bool = True,
    method: str = "minmax",
    mode: str = "u8s8",
) -> Path:
    """Quantise the fp32 ONNX ``src`` into the QDQ int8 model ``dst`` (written atomically).

    ``images``: calibration images ``(H, W, 3)`` uint8 at the model's input size (each is run
    as a batch of one). ``mode``: ``u8s8``, ``u8s8_reduce_range`` (7-bit weights, for x86
    CPUs without VNNI) or ``s8s8_symmetric`` (TensorRT; see the module docstring).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    settings = quantization_settings(per_channel=per_channel, method=method, mode=mode)
    symmetric = mode == TENSORRT_INT8_MODE
    # TensorRT: symmetric int8 activations (weights are symmetric in every mode: onnxruntime's
    # WeightSymmetric defaults to True for int8 weights) and fp32 biases (no int32 Q/DQ)
    extra: dict[str, Any] = (
        {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
        if symmetric
        else {}
    )
    src = Path(src)
    batches = [np.ascontiguousarray(img)[None] for img in images]
    if not batches:
        raise ValueError(f"quantize_int8: no calibration images for {src}")

    class Reader(_Reader, CalibrationDataReader):  # ORT checks isinstance
        pass

    calib = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    with tempfile.TemporaryDirectory(prefix="seg_quant_") as tmp:
        # onnxruntime's recommended pre-processing: graph optimisation folds the exporter's
        # Identity copies of shared weights (GUN's shared trunk, ShelfNet's shared-weights
        # blocks) back into initializers, so those convolutions get quantised too.
        pre = Path(tmp) / "pre.onnx"
        _pre_process(src, pre)
        model = onnx.load(str(pre))
        ensure_node_names(model)
        stem, head = excluded_nodes(model)
        exclude = stem + head
        _unshare_initializers(model, set(exclude))
        onnx.save(model, str(pre))
        with atomic_path(dst) as out:
            quantize_static(
                str(pre),
                str(out),
                Reader(model.graph.input[0].name, batches),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=settings["reduce_range"],
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calib,
                nodes_to_exclude=exclude,
                extra_options=extra,
                # No CalibMaxIntermediateOutputs: in onnxruntime 1.31 it drops the batches it
                # flushes. MinMax calibration keeps only per-tensor min/max values anyway.
            )
            # keep the source's metadata (class count, model, input size) for the engine checks
            quantised = onnx.load(str(out))
            source_props = onnx.load(str(src), load_external_data=False).metadata_props
            quantised.metadata_props.extend(
                p for p in source_props if p.key not in {q.key for q in quantised.metadata_props}
            )
            onnx.save(quantised, str(out))
    log.info(
        "int8 model %s (%s): %d stem and %d head nodes kept fp32", dst, mode, len(stem), len(head)
    )
    return Path(dst)
