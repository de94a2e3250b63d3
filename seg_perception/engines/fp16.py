"""fp16 form of an ONNX export: what strongly typed TensorRT engines build fp16 from.

TensorRT 11 has no ``BuilderFlag.FP16``: a network is strongly typed and every layer runs in the
type its ONNX tensors have. An fp16 engine therefore needs an fp16 graph; :func:`convert_to_fp16`
makes one from the fp32 export form, a pure function on the ``onnx.ModelProto``. The same graph
goes to onnxruntime's TensorRT execution provider; onnxruntime's CPU EP also runs it (it puts
Cast nodes around the operators it has no fp16 kernel for), which the tests use to measure the
agreement with fp32 without a GPU.

What becomes fp16 -- the feature-map body of the network:

* operators of :data:`FP16_OPS` (convolutions, pooling, activations, element-wise sums and
  products, resizing, concatenation and reshaping) whose float tensors are rank-4 feature maps
  ``(N, C, H, W)``; their float constants (weights, biases, BN-folded scales) are converted, and
  Cast nodes are inserted where an fp16 node reads an fp32 tensor or the other way round.

What stays fp32, and why:

* the **stem** -- the input normalisation ``x * scale + shift`` on raw 0..255 pixel values (and
  GUN's input pooling): with fp16 the product is rounded before the offset is added, in steps of
  0.125 for values in [128, 256), which is ~0.05 of one grey level after normalisation; fp32
  normalises exactly and rounds once, on the normalised value, when the first convolution reads
  it. It is element-wise work on 3 channels, nothing against the convolutions.
* the **head** -- the last convolutions (classifier, GUN's guidance-offset head) and everything
  after them (:func:`~seg_perception.engines.quantize.stem_and_head`): the arg max over logits
  (fp16 rounding turns near-ties into flips), the softmax / max for the confidence (``exp``), and
  GUN's guided-upsampling sampling grid. The grid holds normalised coordinates in [-1, 1] plus
  predicted offsets; fp16 has 11 significant bits, so near +-1 a coordinate moves in steps of
  2^-10, half a pixel of a 1024-wide output, and the guided samples would land on neighbouring
  cells. The head is a few percent of the FLOPs.
* operators outside :data:`FP16_OPS` anywhere: reductions, ``exp``/``log``/``sqrt``, division,
  normalisation layers (GroupNorm's variance sums overflow fp16), ``GridSample``, ``RoiAlign``,
  ``TopK``, ``NonZero``, index arithmetic -- and everything on tensors that are not rank-4
  feature maps: the panoptic model's boxes, anchors and scores are pixel coordinates up to the
  image size, where fp16 steps are 1-2 pixels.
* the graph's inputs and outputs keep their types (uint8 image in, uint8 ids / fp32 confidence
  out), so an fp16 artefact is a drop-in for the fp32 one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["FP16_OPS", "REVISION", "convert_to_fp16", "fp16_nodes", "graph_precision"]

#: bump when the conversion changes the graph for the same input (part of the fp16 cache key)
REVISION = 1
_ALL = None
#: operator -> indices of its inputs of the type ``T`` that runs fp16 (``None``: all inputs);
#: other inputs (shapes, axes, indices, Resize's scales) keep their types.
FP16_OPS: dict[str, tuple[int, ...] | None] = {
    "Conv": (0, 1, 2),
    "ConvTranspose": (0, 1, 2),
    "BatchNormalization": _ALL,
    "Relu": (0,),
    "LeakyRelu": (0,),
    "PRelu": (0, 1),
    "Sigmoid": (0,),
    "HardSigmoid": (0,),
    "HardSwish": (0,),
    "Tanh": (0,),
    "Clip": _ALL,
    "Add": _ALL,
    "Sub": _ALL,
    "Mul": _ALL,
    "Max": _ALL,
    "Min": _ALL,
    "Sum": _ALL,
    "Neg": (0,),
    "Abs": (0,),
    "Concat": _ALL,
    "MaxPool": (0,),
    "AveragePool": (0,),
    "GlobalAveragePool": (0,),
    "GlobalMaxPool": (0,),
    "Resize": (0,),
    "Pad": (0, 2),
    "Slice": (0,),
    "Split": (0,),
    "Transpose": (0,),
    "Reshape": (0,),
    "Flatten": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
    "Expand": (0,),
    "Tile": (0,),
    "Identity": (0,),
    "DepthToSpace": (0,),
    "SpaceToDepth": (0,),
    "Gather": (0,),
    "Where": (1, 2),
}
#: operators whose inputs may have any type: an fp16 tensor needs no Cast to feed them
_ANY_TYPE_INPUT = {"Shape", "Size", "Cast"}
_FEATURE_RANK = 4
_FP16_MAX = float(np.finfo(np.float16).max)


def _float_types() -> tuple[int, int]:
    from onnx import TensorProto

    return TensorProto.FLOAT, TensorProto.FLOAT16


def _tensor_types(model: Any) -> dict[str, tuple[int, int | None]]:
    """Tensor name -> (element type, rank or ``None``) from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, tuple[int, int | None]] = {}
    g = inferred.graph
    for vi in [*g.value_info, *g.input, *g.output]:
        tt = vi.type.tensor_type
        if tt.elem_type:
            out[vi.name] = (tt.elem_type, len(tt.shape.dim) if tt.HasField("shape") else None)
    for t in g.initializer:
        out[t.name] = (t.data_type, len(t.dims))
    return out


def _constants(model: Any) -> dict[str, Any]:
    """Float constant tensors of the main graph: initializers, Constant outputs and Identity
    copies of them (the exporter shares weights through Identity nodes) -> their TensorProto."""
    from onnx import TensorProto

    consts: dict[str, Any] = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:  # topological order: Identity sources come first
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return {k: v for k, v in consts.items() if v.data_type == TensorProto.FLOAT}


def _data_inputs(node: Any) -> list[int]:
    idx = FP16_OPS[node.op_type]
    return [i for i in (range(len(node.input)) if idx is None else idx) if i < len(node.input)]


def _outer_names(graph: Any) -> set[str]:
    """Names a subgraph reads from enclosing scopes (used but not defined inside it)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(t for t in node.input if t)
        defined.update(node.output)
        for sub in _subgraphs(node):
            used |= _outer_names(sub)
    used.update(o.name for o in graph.output)
    return used - defined


def _subgraphs(node: Any) -> Iterator[Any]:
    from onnx import AttributeProto

    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _rename_outer(graph: Any, old: str, new: str) -> None:
    """Rename the enclosing-scope reference ``old`` inside ``graph`` (and its subgraphs)."""
    if old in {i.name for i in graph.input} | {t.name for t in graph.initializer}:
        return  # shadowed
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t == old:
                node.input[i] = new
        for sub in _subgraphs(node):
            _rename_outer(sub, old, new)
        if old in node.output:
            return  # redefined below this point
    for o in graph.output:
        if o.name == old:
            o.name = new


def fp16_nodes(model: Any) -> set[str]:
    """Names of the nodes :func:`convert_to_fp16` runs in fp16 (nodes must be named; see the
    module docstring for the rules)."""
    from seg_perception.engines.quantize import stem_and_head

    f32, _ = _float_types()
    types = _tensor_types(model)
    consts = _constants(model)
    stem, head = stem_and_head(model)
    chosen: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in FP16_OPS or node.name in stem or node.name in head:
            continue
        if node.op_type == "Identity" and node.input[0] in consts:
            continue  # a shared weight: converted where it is used
        outs = [types.get(t) for t in node.output if t]
        if not outs or any(o is None for o in outs):
            continue
        float_outs = [o for o in outs if o is not None and o[0] == f32]
        if not float_outs or any(rank != _FEATURE_RANK for _, rank in float_outs):
            continue
        ok = True
        for i in _data_inputs(node):
            t = node.input[i]
            if not t:
                continue
            if t in consts:
                value = _array(consts[t])
                ok = value.size == 0 or float(np.abs(value).max()) <= _FP16_MAX
            else:
                info = types.get(t)
                ok = info is not None and info[0] == f32 and info[1] == _FEATURE_RANK
            if not ok:
                break
        if ok:
            chosen.add(node.name)
    return chosen


def _array(t: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


def convert_to_fp16(model: Any) -> Any:
    """The fp16 form of the fp32 export ``model`` (a new ``onnx.ModelProto``; ``model`` is not
    changed). Graph inputs and outputs keep their types; see the module docstring."""
    import onnx
    from onnx import helper, numpy_helper

    from seg_perception.engines.quantize import ensure_node_names

    m = onnx.ModelProto()
    m.CopyFrom(model)
    ensure_node_names(m)
    g = m.graph
    chosen = fp16_nodes(m)
    consts = _constants(m)
    f32, f16 = _float_types()
    types = _tensor_types(m)
    # float tensors produced in fp16
    half = {t for n in g.node if n.name in chosen for t in n.output if types.get(t, (0,))[0] == f32}
    # graph outputs produced in fp16: the producer writes <name>_fp16, a Cast restores <name>
    out_names = {o.name for o in g.output}
    renamed = {t: f"{t}_fp16" for t in half & out_names}
    for node in g.node:
        for i, t in enumerate(node.input):
            node.input[i] = renamed.get(t, t)
        for i, t in enumerate(node.output):
            node.output[i] = renamed.get(t, t)
    half = {renamed.get(t, t) for t in half}

    new_nodes: list[Any] = []
    casts: dict[tuple[str, int], str] = {}
    new_inits: dict[str, Any] = {}

    def cast(t: str, to: int) -> str:
        key = (t, to)
        if key not in casts:
            name = f"{t}_to_{'fp16' if to == f16 else 'fp32'}"
            casts[key] = name
            new_nodes.append(helper.make_node("Cast", [t], [name], name=f"{name}_cast", to=to))
        return casts[key]

    def const16(t: str) -> str:
        name = f"{consts[t].name or t}_fp16"  # Identity copies of one weight share one fp16 copy
        if name not in new_inits:
            value = _array(consts[t]).astype(np.float16)
            new_inits[name] = numpy_helper.from_array(value, name)
        return name

    for node in list(g.node):
        if node.name in chosen:
            data = set(_data_inputs(node))
            for i, t in enumerate(node.input):
                if not t:
                    continue
                if i in data and t in consts:
                    node.input[i] = const16(t)
                elif i in data and t not in half:
                    node.input[i] = cast(t, f16)
                elif i not in data and t in half:
                    node.input[i] = cast(t, f32)
        elif node.op_type not in _ANY_TYPE_INPUT:
            for i, t in enumerate(node.input):
                if t in half:
                    node.input[i] = cast(t, f32)
            for sub in _subgraphs(node):
                for t in _outer_names(sub) & half:
                    _rename_outer(sub, t, cast(t, f32))
        new_nodes.append(node)
    for t, out in ((v, k) for k, v in renamed.items()):
        new_nodes.append(helper.make_node("Cast", [t], [out], name=f"{out}_cast", to=f32))

    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits.values())
    for vi in g.value_info:
        if vi.name in half:
            vi.type.tensor_type.elem_type = f16
    _prune(g)
    from seg_perception.engines.onnx_backend import write_metadata

    write_metadata(m, {"precision": "fp16", "fp16_revision": REVISION})
    return m


def _prune(g: Any) -> None:
    """Drop Constant / Identity nodes and initializers nothing reads any more (in place)."""
    outputs = {o.name for o in g.output}
    while True:
        used = _used_names(g) | outputs
        dead = [
            n
            for n in g.node
            if n.op_type in ("Constant", "Identity") and not any(t in used for t in n.output)
        ]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = _used_names(g) | outputs
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    kept = {t.name for t in keep} | {t for n in g.node for t in n.output}
    vis = [vi for vi in g.value_info if vi.name in kept]
    del g.value_info[:]
    g.value_info.extend(vis)


def _used_names(g: Any) -> set[str]:
    used = {t for n in g.node for t in n.input if t}
    for n in g.node:
        for sub in _subgraphs(n):
            used |= _outer_names(sub)
    return used


def graph_precision(model: Any) -> str:
    """What precision an ONNX graph carries: ``int8`` (Q/DQ nodes), ``fp16`` (fp16 tensors or
    initializers) or ``fp32``."""
    _, f16 = _float_types()
    g = model.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node):
        return "int8"
    typed: Iterable[int] = (
        *(t.data_type for t in g.initializer),
        *(vi.type.tensor_type.elem_type for vi in g.value_info),
        *(a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"),
    )
    return "fp16" if f16 in set(typed) else "fp32"
