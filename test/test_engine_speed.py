"""CPU speed paths of the engines keep the results: onnxruntime lanes for multi-camera batches,
the int8 quantiser's fp32 islands, and GUN's cheaper export-form graph. Small: 64x128 inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from seg_perception.data.synth import generate_frame
from seg_perception.engines.factory import build
from seg_perception.engines.ort_lanes import split_batch
from seg_perception.engines.spec import EngineSpec
from seg_perception.networks import build_model
from seg_perception.networks.export import export_onnx
from seg_perception.networks.gum import _sampling_grid
from seg_perception.networks.gun import FusionModule

H, W = 64, 128
K = 19


@pytest.fixture(autouse=True)
def _quiet() -> None:
    torch.set_num_threads(1)
    logging.getLogger("root").setLevel(logging.ERROR)


def _images(n: int) -> np.ndarray:
    return np.stack([generate_frame(seed=99, index=i, height=H, width=W).image for i in range(n)])


def _gun_engine(cache: Path, *, threads: int, max_batch: int = 4):
    return build(
        EngineSpec(
            model="gun",
            num_classes=K,
            input_hw=(H, W),
            backend="onnxruntime",
            threads=threads,
            max_batch=max_batch,
            cache_dir=cache,
        )
    )


# ------------------------------------------------------------------------------ lanes
def test_split_batch_gives_equal_chunks_and_a_remainder() -> None:
    assert split_batch(4, 2) == ([(0, 2), (2, 4)], (4, 4))
    assert split_batch(3, 2) == ([(0, 1), (1, 2)], (2, 3))
    assert split_batch(7, 3) == ([(0, 2), (2, 4), (4, 6)], (6, 7))
    assert split_batch(1, 2) == ([(0, 1)], (1, 1))
    with pytest.raises(ValueError, match="n >= 1 and lanes >= 1"):
        split_batch(0, 2)


@pytest.mark.parametrize("n", [3, 4])
def test_lanes_give_the_values_of_single_calls(n, tmp_path) -> None:
    engine = _gun_engine(tmp_path, threads=2)
    x = _images(n)
    singles = [{k: v.copy() for k, v in engine.infer(x[i : i + 1]).items()} for i in range(n)]
    assert engine.lane_session is None  # single images: the 2-thread session
    batched = engine.infer(x)
    assert engine.lane_session is not None  # n >= threads: the lanes ran
    for key in ("class_ids", "confidence"):
        single = np.concatenate([s[key] for s in singles])
        assert batched[key].shape == (n, H, W) and batched[key].dtype == single.dtype
        if key == "class_ids":
            np.testing.assert_array_equal(batched[key], single)
        else:
            np.testing.assert_allclose(batched[key], single, rtol=1e-6, atol=0)
    again = engine.infer(x[::-1].copy())  # the same reused buffers, rewritten in place
    assert again["class_ids"] is batched["class_ids"]
    np.testing.assert_array_equal(again["class_ids"][0], singles[-1]["class_ids"][0])
    engine.close()
    assert engine.lane_session is None


def test_no_lanes_with_one_thread_and_warmup_opens_them(tmp_path) -> None:
    one = _gun_engine(tmp_path, threads=1)
    one.infer(_images(3))
    assert one.lane_session is None
    two = _gun_engine(tmp_path, threads=2, max_batch=2)
    two.warmup(1)
    assert two.lane_session is not None  # opened before the first real batch
    small = _gun_engine(tmp_path, threads=2, max_batch=1)
    small.warmup(1)
    assert small.lane_session is None  # batches never reach 2 images: no second session


# ------------------------------------------------------------------------------ int8 islands
def test_int8_keeps_narrow_first_convolutions_fp32() -> None:
    from seg_perception.engines.quantize import (
        NARROW_OUT_CHANNELS,
        excluded_nodes,
        quantization_settings,
    )

    def weight(name: str, out_ch: int, in_ch: int) -> onnx.TensorProto:
        return numpy_helper.from_array(np.zeros((out_ch, in_ch, 3, 3), np.float32), name)

    nodes = [
        helper.make_node("Cast", ["image"], ["f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("AveragePool", ["f"], ["p"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("Conv", ["p", "w16"], ["a"], name="narrow_first"),
        helper.make_node("Conv", ["f", "w64"], ["b"], name="wide_first"),
        helper.make_node("Conv", ["a", "w16b"], ["c"], name="narrow_inner"),
        helper.make_node("Add", ["c", "b"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "w19"], ["logits"], name="classifier"),
        helper.make_node("ArgMax", ["logits"], ["ids"], name="argmax", axis=1),
    ]
    inits = [weight("w16", 16, 3), weight("w64", 64, 3), weight("w16b", 16, 16)]
    inits.append(weight("w19", 19, 16))
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, 8, 8])
    graph = helper.make_graph(nodes, "g", [image], [], initializer=inits)
    stem, head = excluded_nodes(helper.make_model(graph))
    assert NARROW_OUT_CHANNELS == 32
    assert stem == ["cast", "narrow_first", "pool"]  # 3 -> 64 and inner 16 -> 16 stay int8
    assert head == ["argmax", "classifier"]
    # the rule is part of the int8 cache key: a model quantised under other rules is rebuilt
    settings = quantization_settings(per_channel=True, method="minmax", mode="u8s8")
    assert settings["first_conv_fp32_below"] == NARROW_OUT_CHANNELS
    assert settings["revision"] >= 2
    # so is the mode: an int8 model made for a CPU without VNNI (7-bit weights) is another model
    reduced = quantization_settings(per_channel=True, method="minmax", mode="u8s8_reduce_range")
    assert reduced["reduce_range"] and not settings["reduce_range"] and reduced != settings


# ------------------------------------------------------------------------------ GUN graph form
def test_gun_export_graph_has_no_costly_forms(tmp_path) -> None:
    torch.manual_seed(0)
    net = build_model("gun", num_classes=K).eval()
    model = onnx.load(str(export_onnx(net, tmp_path / "gun.onnx", input_hw=(H, W))))
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceSum" not in ops  # fusion sum as an Add, no stacked copy
    pools = [n for n in model.graph.node if n.op_type == "AveragePool"]
    kernels = [list(a.ints) for n in pools for a in n.attribute if a.name == "kernel_shape"]
    assert kernels == [[2, 2], [2, 2]]  # /4 pooled from /2, not from the full image
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in model.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    consts.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert not any(i in consts and consts[i].shape == (2,) for n in muls for i in n.input)


def test_gun_forward_rewrites_equal_the_original_math() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 64, generator=gen)
    torch.manual_seed(0)
    gun = build_model("gun", num_classes=K).eval()
    levels = gun._pyramid(x)
    torch.testing.assert_close(levels[4], F.avg_pool2d(x, 4), rtol=0, atol=1e-6)
    assert torch.equal(levels[2], F.avg_pool2d(x, 2)) and levels[1] is x
    fusion = FusionModule(
        low_channels=8, medium_channels=4, n_medium=1, merge="sum", postproc=False
    ).eval()
    low, med = torch.randn(1, 8, 4, 8, generator=gen), torch.randn(1, 4, 8, 16, generator=gen)
    parts = [F.interpolate(low, size=(8, 16), mode="bilinear", align_corners=False)]
    parts.append(fusion.expand[0](med))
    assert torch.equal(fusion(low, [med]), torch.relu(torch.stack(parts).sum(0)))
    offsets = torch.randn(2, 2, 16, 32, generator=gen)
    gx = (torch.arange(32, dtype=torch.float32) * 2 + 1) / 32 - 1
    gy = (torch.arange(16, dtype=torch.float32) * 2 + 1) / 16 - 1
    base = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    old = base.unsqueeze(0) + offsets.permute(0, 2, 3, 1) * torch.tensor([2.0 / 8, 2.0 / 4])
    assert torch.equal(_sampling_grid(offsets, (4, 8)), old)  # same products, other layout


def test_gun_int8_first_convolutions_are_fp32_with_constant_inputs(tmp_path) -> None:
    engine = build(
        EngineSpec(
            model="gun",
            num_classes=K,
            input_hw=(H, W),
            backend="onnxruntime",
            precision="int8",
            threads=1,
            max_batch=2,
            cache_dir=tmp_path,
            calib_frames=2,
        )
    )
    model = onnx.load(str(engine.path))
    inits = {t.name for t in model.graph.initializer}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    first = [c for name, c in convs.items() if name.endswith("layer0/layer0.0/Conv")]
    assert len(first) == 2  # the /2 and /4 branches
    # fp32 weight and bias straight from initializers (the random init's zero bias is shared with
    # quantised convolutions: it must not arrive through a DequantizeLinear)
    assert all(i in inits for c in first for i in c.input[1:])
    inner = next(c for name, c in convs.items() if name.endswith("layer1/layer1.0/Conv"))
    assert inner.input[1] not in inits  # a quantised (DequantizeLinear) weight
    ids = engine.infer(_images(2))["class_ids"]
    assert ids.shape == (2, H, W) and ids.max() < K
