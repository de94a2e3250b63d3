"""Engine parts without a built engine: provider resolution and options, int8 graph surgery,
calibration sources and the bench's pure helpers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from seg_perception.engines.onnx_backend import provider_options, resolve_providers

H, W = 64, 128
ALL_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


# ------------------------------------------------------------------------------ providers
def test_provider_resolution_order_aliases_and_availability() -> None:
    used, skipped = resolve_providers(
        ["tensorrt", "CUDA", "cpu", "CPUExecutionProvider"], ["CPUExecutionProvider"], ALL_PROVIDERS
    )
    assert used == ["CPUExecutionProvider"]
    assert skipped == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    used, _ = resolve_providers(["cuda", "cpu"], ALL_PROVIDERS, ALL_PROVIDERS)
    assert used == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_ep_options(tmp_path) -> None:
    opts = provider_options(
        "TensorrtExecutionProvider",
        precision="fp16",
        cache_dir=tmp_path,
        input_name="image",
        input_shape=["batch", H, W, 3],
        max_batch=4,
    )
    assert opts["trt_fp16_enable"] == "True" and opts["trt_int8_enable"] == "False"
    assert opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(tmp_path / "ort_tensorrt")
    assert opts["trt_timing_cache_enable"] == "True"
    assert opts["trt_profile_min_shapes"] == f"image:1x{H}x{W}x3"
    assert opts["trt_profile_max_shapes"] == f"image:4x{H}x{W}x3"
    static = provider_options(
        "TensorrtExecutionProvider",
        precision="int8",
        cache_dir=None,
        input_name="image",
        input_shape=[1, H, W, 3],
        max_batch=4,
    )
    assert static["trt_int8_enable"] == "True" and "trt_profile_min_shapes" not in static
    assert (
        provider_options(
            "CPUExecutionProvider",
            precision="fp32",
            cache_dir=None,
            input_name="image",
            input_shape=[1, H, W, 3],
            max_batch=1,
        )
        == {}
    )


# ------------------------------------------------------------------------------ int8 graph
def test_int8_keeps_stem_and_head_fp32() -> None:
    from seg_perception.engines.quantize import excluded_nodes

    def conv(name: str, src: str, dst: str) -> onnx.NodeProto:
        return helper.make_node("Conv", [src, f"{name}_w"], [dst], name=name)

    nodes = [
        helper.make_node("Cast", ["image"], ["f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["n"], name="norm"),
        helper.make_node("AveragePool", ["n"], ["p"], name="pool", kernel_shape=[2, 2]),
        conv("conv1", "p", "c1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Add", ["r1", "p"], ["s"], name="residual"),
        conv("classifier", "s", "logits"),
        helper.make_node("Resize", ["logits", "", "sc"], ["up"], name="up"),
        helper.make_node("ArgMax", ["up"], ["ids"], name="argmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    stem, head = excluded_nodes(helper.make_model(graph))
    assert stem == ["cast", "norm", "pool"]
    assert head == ["argmax", "classifier", "up"]


def test_truncated_pre_processing_output_is_a_clear_error(tmp_path, monkeypatch) -> None:
    """A full disk truncates what onnxruntime's pre-processing writes (its C++ shape inference
    does not report the failed write): the error names the model and the free space, and no
    output file is left behind."""
    import onnxruntime.quantization.shape_inference as shape_inference

    from seg_perception.engines.quantize import quantize_int8

    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], np.ones(216, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["out"], name="conv", pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])],
        [weight],
    )
    src = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(src))

    def truncating(inp: str, out: str, **_) -> None:  # what a full disk leaves
        data = Path(inp).read_bytes()
        Path(out).write_bytes(data[: len(data) // 2])
        onnx.load(out)

    monkeypatch.setattr(shape_inference, "quant_pre_process", truncating)
    dst = tmp_path / "model_int8.onnx"
    images = [np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(RuntimeError, match=r"model\.onnx.*MiB free.*full disk"):
        quantize_int8(src, dst, images=images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# ------------------------------------------------------------------------------ calibration
def test_calibration_from_folder_is_rgb_and_resized(tmp_path) -> None:
    from seg_perception.engines.calibration import calibration_images

    rgb = np.zeros((2 * H, 2 * W, 3), np.uint8)
    rgb[..., 0] = 200  # red
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    imgs = calibration_images(tmp_path, input_hw=(H, W), count=2)
    assert len(imgs) == 2 and imgs[0].shape == (H, W, 3)
    assert np.all(imgs[0][..., 0] == 200) and np.all(imgs[0][..., 1:] == 0)
    with pytest.raises(ValueError, match=rf"calibration source {tmp_path / 'x.png'} does not"):
        calibration_images(tmp_path / "x.png", input_hw=(H, W))


def test_calibration_from_bag_topic(tmp_path) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from seg_perception.engines.calibration import calibration_images

    store = get_typestore(Stores.ROS2_KILTED)
    Image, Header, Time = (
        store.types[f"{p}"]
        for p in ("sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time")
    )
    bag = tmp_path / "bag"
    frames = [np.full((H, W, 3), 10 * i, np.uint8) for i in range(5)]
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {
            t: writer.add_connection(t, Image.__msgtype__, typestore=store)
            for t in ("/cam/front/image", "/cam/rear/image")
        }
        for i, f in enumerate(frames):
            msg = Image(
                header=Header(stamp=Time(sec=i, nanosec=0), frame_id="cam"),
                height=H,
                width=W,
                encoding="rgb8",
                is_bigendian=0,
                step=3 * W,
                data=f.reshape(-1),
            )
            for conn in conns.values():
                writer.write(conn, i, store.serialize_cdr(msg, Image.__msgtype__))
    imgs = calibration_images(bag, input_hw=(H, W), count=3, topic="/cam/front/image")
    assert [int(img[0, 0, 0]) for img in imgs] == [0, 20, 40]  # spread over the bag
    with pytest.raises(ValueError, match=r"pass a camera topic; image topics: /cam/front/image, "):
        calibration_images(bag, input_hw=(H, W), count=3)
    with pytest.raises(ValueError, match=rf"calibration bag {bag} has no image topic '/x'"):
        calibration_images(bag, input_hw=(H, W), count=3, topic="/x")


# ------------------------------------------------------------------------------ bench helpers
def test_bench_helpers() -> None:
    from seg_perception.commands.bench_engines import miou, round_robin

    ref = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 5]], np.uint8)
    # class 0: tp 1, union 2; class 1: tp 2, union 3; class 2: tp 2, union 2 (255 ignored)
    assert miou(pred, ref) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    order: list[str] = []
    times = round_robin(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, warmup=1, pause=0.0
    )
    assert order == ["a", "b"] + ["a", "b"] * 3 and all(len(v) == 3 for v in times.values())


def test_gflops_counted_on_meta_for_both_gum_samplings() -> None:
    # Bilinear sampling lists boundary pixels with nonzero (a data-dependent size, which meta
    # tensors cannot know); the count is the network's convs either way, and it is not zero.
    from seg_perception.engines.bench_measure import count_gflops
    from seg_perception.networks import build_model

    hw = (64, 128)
    counts = {
        mode: count_gflops(lambda m=mode: build_model("gun", width=0.25, sampling=m), hw)
        for mode in ("nearest", "bilinear")
    }
    assert counts["nearest"] > 0.01
    assert counts["bilinear"] == pytest.approx(counts["nearest"])
