"""The graphs strongly typed TensorRT engines are built from, checked on the CPU.

TensorRT 11 takes the precision from the ONNX graph: an fp16 form of the export
(:mod:`seg_perception.engines.fp16`) and a symmetric int8 Q/DQ form (``s8s8_symmetric``,
:mod:`seg_perception.engines.quantize`). Both run on onnxruntime's CPU EP, where their class ids
are compared with fp32 on synthetic frames the networks were not fitted on (64x128). Measured
(2 fitted nets, 8 frames): fp16 0.99998 (GUN) / 0.99986 (ShelfNet-18); s8s8_symmetric as the
Q/DQ graph defines it (onnxruntime without graph fusion: dequantise, fp32 op, quantise -- what
TensorRT computes, independent of the CPU) 0.9946 / 0.9909, and with onnxruntime's fused
integer kernels on a VNNI CPU 0.9870 / 0.9910. The engines themselves need a GPU
(``test_tensorrt_engines_agree_with_onnxruntime_fp32``, skipped without one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from small_engines import H, K, W, small_spec

from seg_perception.data.synth import generate_frame
from seg_perception.engines.base import EngineError
from seg_perception.engines.calibration import calibration_images
from seg_perception.engines.factory import (
    build,
    ensure_fp16_onnx,
    ensure_int8_onnx,
    export,
    int8_mode_for,
    prepare,
)
from seg_perception.engines.fp16 import convert_to_fp16, fp16_nodes, graph_precision
from seg_perception.engines.onnx_backend import OnnxEngine
from seg_perception.engines.quantize import (
    TENSORRT_INT8_MODE,
    asymmetric_quantizers,
    ensure_node_names,
    stem_and_head,
)
from seg_perception.engines.spec import EngineSpec
from seg_perception.engines.tensorrt_backend import tensorrt_available
from seg_perception.machine import detect, has_vnni
from seg_perception.networks import build_model
from seg_perception.networks.export import export_onnx

pytestmark = pytest.mark.usefixtures("engine_quiet")


def _frames(seed: int, n: int) -> np.ndarray:
    return np.stack([generate_frame(seed=seed, index=i, height=H, width=W).image for i in range(n)])


def _spec(model: str, weights: Path, cache: Path, **kw) -> EngineSpec:
    return small_spec(model, weights, cache, **{"max_batch": 8, **kw})


def _ids(path: Path, x: np.ndarray, graph_optimization: str = "all") -> np.ndarray:
    engine = OnnxEngine(path, providers=["cpu"], threads=1, graph_optimization=graph_optimization)
    return engine.infer(x)["class_ids"].copy()


# ------------------------------------------------------------------------------ fp16 graph
@pytest.fixture(scope="module")
def gun_export(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gun") / "gun.onnx"
    export_onnx(build_model("gun", num_classes=K).eval(), path, input_hw=(H, W))
    return onnx.load(str(path))


def test_fp16_form_keeps_stem_head_and_grid_fp32(gun_export: onnx.ModelProto) -> None:
    before = gun_export.SerializeToString()
    half = convert_to_fp16(gun_export)
    assert gun_export.SerializeToString() == before  # a pure function: its input is unchanged
    onnx.checker.check_model(half)
    onnx.shape_inference.infer_shapes(half, strict_mode=True)  # every type consistent
    assert graph_precision(half) == "fp16" and graph_precision(gun_export) == "fp32"

    # the interface is the fp32 export's: uint8 image in, uint8 ids and fp32 confidence out
    def interface(m: onnx.ModelProto) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]

    assert interface(half) == interface(gun_export)
    named = onnx.ModelProto()
    named.CopyFrom(gun_export)
    ensure_node_names(named)
    chosen = fp16_nodes(named)
    stem, head = stem_and_head(named)
    assert chosen and not chosen & (stem | head)
    ops = {n.name: n.op_type for n in named.graph.node}
    convs = [n for n, op in ops.items() if op == "Conv"]
    assert sum(n in chosen for n in convs) >= 0.9 * len(convs)  # the body runs fp16
    assert {"/classifier/Conv", "/guidance/head/Conv"} <= set(convs) - chosen  # the head: fp32
    # the normalisation, the sampling grid and GridSample read and write fp32 tensors
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in onnx.shape_inference.infer_shapes(half).graph.value_info
    }
    grid = next(n for n in half.graph.node if n.op_type == "GridSample")
    assert {types[t] for t in [*grid.input, *grid.output]} == {TensorProto.FLOAT}
    norm = [n for n in half.graph.node if n.name in stem and n.op_type in ("Mul", "Add")]
    assert norm and all(types[n.output[0]] == TensorProto.FLOAT for n in norm)
    for node in half.graph.node:
        if node.name in stem and node.output[0] in types:
            assert types[node.output[0]] != TensorProto.FLOAT16, node.name
    conv_weights = {i.name: i.data_type for i in half.graph.initializer}
    body = next(n for n in half.graph.node if n.op_type == "Conv" and n.name in chosen)
    assert conv_weights[body.input[1]] == TensorProto.FLOAT16


def test_fp16_conversion_of_shared_weights_outputs_and_subgraphs() -> None:
    """Weights shared through Identity (GUN's two branches) become one fp16 copy; a graph output
    produced in fp16 is cast back under its name; a subgraph reading an fp16 tensor gets it as
    fp32; onnxruntime's CPU EP runs the result and agrees with fp32."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "w")
    then = helper.make_graph(
        [helper.make_node("Identity", ["r1"], ["then_out"], name="then_id")], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 4, 8, 8])],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Neg", ["r1"], ["else_out"], name="else_neg")], "else", [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 4, 8, 8])],
    )  # fmt: skip
    nodes = [
        helper.make_node("Identity", ["w"], ["w_a"], name="share_a"),
        helper.make_node("Identity", ["w"], ["w_b"], name="share_b"),
        helper.make_node("Conv", ["x", "w_a"], ["c0"], name="stem_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "If", ["flag"], ["branch"], name="if", then_branch=then, else_branch=other
        ),
        helper.make_node("Conv", ["r1", "w"], ["feat"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["feat"], ["features"], name="relu2"),
        helper.make_node("Conv", ["features", "w"], ["logits"], name="head", pads=[1, 1, 1, 1]),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", f32, [1, 4, 8, 8]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("features", f32, [1, 4, 8, 8]),
         helper.make_tensor_value_info("branch", f32, [1, 4, 8, 8]),
         helper.make_tensor_value_info("logits", f32, [1, 4, 8, 8])],
        [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    half = convert_to_fp16(model)
    onnx.checker.check_model(half)
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [f32] * 3
    fp16_inits = [i for i in half.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert [i.name for i in fp16_inits] == ["w_fp16"]  # one copy for both Identity users
    assert not any(n.op_type == "Identity" and n.input[0] == "w" for n in half.graph.node)
    iff = next(n for n in half.graph.node if n.op_type == "If")
    assert iff.attribute[0].g.node[0].input[0] == "r1_to_fp32"
    x = {"x": rng.normal(size=(1, 4, 8, 8)).astype(np.float32), "flag": np.array(True)}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(model.SerializeToString(), so).run(None, x)
    got = ort.InferenceSession(half.SerializeToString(), so).run(None, x)
    for a, b in zip(ref, got, strict=True):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-2 * float(np.abs(a).max()))


@pytest.mark.parametrize("model", ["gun", "shelfnet"])
def test_fp16_form_agrees_with_fp32_on_onnxruntime_cpu(model, weights, cache) -> None:
    fp32 = export(_spec(model, weights[model], cache))
    half = ensure_fp16_onnx(fp32, cache_dir=cache)
    assert half != fp32 and ensure_fp16_onnx(fp32, cache_dir=cache) == half  # cached by key
    x = _frames(99, 8)  # not the frames the nets were fitted on
    ref = _ids(fp32, x)
    assert len(np.unique(ref)) >= 3  # a meaningful comparison: several classes predicted
    agreement = float(np.mean(_ids(half, x) == ref))
    assert agreement >= 0.999, f"{model} fp16: {agreement:.5f}"  # measured 0.99998 / 0.99986


# ------------------------------------------------------------------------------ int8 graph
@pytest.mark.parametrize("model", ["gun", "shelfnet"])
def test_tensorrt_int8_graph_is_symmetric_and_agrees_on_the_cpu(model, weights, cache) -> None:
    trt_spec = _spec(model, weights[model], cache, backend="tensorrt", precision="int8")
    assert int8_mode_for(trt_spec) == TENSORRT_INT8_MODE
    fp32 = export(trt_spec)
    images = calibration_images(None, input_hw=(H, W), count=trt_spec.calib_frames)  # synthetic
    q = ensure_int8_onnx(fp32, cache_dir=cache, images=images, mode=TENSORRT_INT8_MODE)
    proto = onnx.load(str(q))
    assert graph_precision(proto) == "int8"
    assert asymmetric_quantizers(proto) == []  # int8, zero point 0: what TensorRT takes
    dq_inputs = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    assert {inits[t] for t in dq_inputs if t in inits} == {TensorProto.INT8}  # no int32 biases
    # onnxruntime with the TensorRT EP listed quantises the very same graph (the EP is not in
    # this onnxruntime build: the CPU runs it)
    ep = build(_spec(model, weights[model], cache, backend="onnxruntime", precision="int8",
                     providers=("tensorrt", "cpu")))  # fmt: skip
    assert ep.path == q and ep.skipped_providers == ["TensorrtExecutionProvider"]
    x = _frames(99, 8)
    ref = _ids(fp32, x)
    # the Q/DQ graph's own arithmetic (dequantise, fp32 op, quantise), as TensorRT computes it
    emulated = float(np.mean(_ids(q, x, graph_optimization="disable") == ref))
    assert emulated >= 0.98, f"{model} s8s8_symmetric: {emulated:.4f}"  # 0.9946 / 0.9909
    # onnxruntime's fused integer kernels run it too; without VNNI they saturate 8-bit weights
    fused = float(np.mean(ep.infer(x)["class_ids"] == ref))
    assert fused >= (0.98 if has_vnni(detect().features) else 0.9), f"{model}: {fused:.4f}"


def test_int8_mode_follows_the_runtime(weights, cache) -> None:
    cpu = _spec("gun", weights["gun"], cache, backend="onnxruntime", precision="int8")
    assert int8_mode_for(cpu) == "auto"  # this CPU's mode (test_engines)
    assert int8_mode_for(cpu.with_(int8_mode="u8s8")) == "u8s8"
    ep = cpu.with_(providers=("TensorrtExecutionProvider", "cpu"))
    for spec in (ep, cpu.with_(backend="tensorrt")):
        assert int8_mode_for(spec) == TENSORRT_INT8_MODE
        with pytest.raises(EngineError, match="int8 mode u8s8 is an onnxruntime CPU mode"):
            int8_mode_for(spec.with_(int8_mode="u8s8"))


# ------------------------------------------------------------------------------ prepare
@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_prepare_for_tensorrt_makes_the_typed_graph_then_needs_tensorrt(weights, cache) -> None:
    spec = _spec("gun", weights["gun"], cache, backend="tensorrt", precision="fp16")
    with pytest.raises(EngineError, match="TensorRT Python package is not installed"):
        prepare(spec)
    fp16 = ensure_fp16_onnx(export(spec), cache_dir=cache)
    assert fp16.is_file() and graph_precision(onnx.load(str(fp16))) == "fp16"
    # a ready artefact must carry the precision asked for, or be the fp32 export
    ready = spec.with_(weights=None, artefact=fp16, precision="int8")
    with pytest.raises(EngineError, match="carries fp16, not int8"):
        prepare(ready)
    # a CPU-quantised (asymmetric uint8) Q/DQ graph is refused for TensorRT, naming the mode
    cpu_int8 = build(spec.with_(backend="onnxruntime", precision="int8", int8_mode="u8s8")).path
    with pytest.raises(EngineError, match="not symmetric int8 with zero point 0.*s8s8_symmetric"):
        prepare(spec.with_(weights=None, artefact=cpu_int8, precision="int8"))


# ------------------------------------------------------------------------------ GPU
def _gpu_ready() -> bool:
    return tensorrt_available() and torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs TensorRT and a CUDA GPU")
def test_tensorrt_engines_agree_with_onnxruntime_fp32(weights, cache) -> None:  # pragma: no cover
    x = _frames(99, 8)
    ref = _ids(export(_spec("gun", weights["gun"], cache)), x)
    for precision, floor in (("fp32", 0.999), ("fp16", 0.99), ("int8", 0.98)):
        engine = build(_spec("gun", weights["gun"], cache, backend="tensorrt", precision=precision,
                             device="cuda:0"))  # fmt: skip
        agreement = float(np.mean(engine.infer(x)["class_ids"] == ref))
        assert agreement >= floor, f"TensorRT {precision}: {agreement:.4f}"


def test_tensorrt_ep_flags_follow_the_precision_the_model_carries() -> None:
    """The EP's builder flags only enable what the graph carries (fp16 layers, Q/DQ): an fp32
    model gets neither, so the EP never lowers its precision behind the graph's back."""
    from seg_perception.engines.ort_providers import provider_options

    def flags(precision: str) -> tuple[str, str]:
        opts = provider_options(
            "TensorrtExecutionProvider",
            precision=precision,
            cache_dir=None,
            input_name="image",
            input_shape=["batch", H, W, 3],
            max_batch=2,
        )
        assert not any("calib" in k for k in opts)  # explicit quantization: no table
        return opts["trt_fp16_enable"], opts["trt_int8_enable"]

    assert flags("fp32") == ("False", "False")
    assert flags("fp16") == ("True", "False")
    assert flags("int8") == ("False", "True")
