"""Export form (SemanticExport), ONNX export of GUN through onnxruntime, weight loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from seg_perception.networks.drn import build_drn_d22
from seg_perception.networks.export import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SemanticExport,
    export_onnx,
    load_weights,
)
from seg_perception.networks.gun import GUN, build_gun

H, W = 64, 128


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def gun() -> GUN:
    torch.manual_seed(1)
    model = build_gun().eval()
    assert model.guidance is not None
    with torch.no_grad():  # non-trivial offsets (the head is zero-initialised)
        model.guidance.head.weight.normal_(0.0, 0.3)
    return model


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _image(n: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (n, H, W, 3), dtype=torch.uint8)


def test_normalisation_and_layouts(gun: GUN) -> None:
    img = _image()
    nhwc, nchw = SemanticExport(gun), SemanticExport(gun, layout="nchw")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (img.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    torch.testing.assert_close(nhwc.normalise(img), expected)
    with torch.no_grad():
        ids_a, conf_a = nhwc(img)
        ids_b, conf_b = nchw(img.permute(0, 3, 1, 2).contiguous())
        ids_ref, _ = gun.forward_ids(expected)
    assert ids_a.dtype == torch.uint8 and conf_a.dtype == torch.float32
    # NHWC and NCHW inputs differ in memory layout only (float summation order may differ).
    assert (ids_a == ids_b).float().mean() > 0.999
    torch.testing.assert_close(conf_a, conf_b)
    assert (ids_a == ids_ref).float().mean() > 0.999
    with pytest.raises(ValueError, match="layout"):
        SemanticExport(gun, layout="hwc")
    with pytest.raises(TypeError, match="forward_ids"):
        SemanticExport(nn.Conv2d(3, 2, 1))


def test_onnx_gun_matches_pytorch(gun: GUN, tmp_path: Path) -> None:
    ids_path = export_onnx(gun, tmp_path / "gun.onnx", input_hw=(H, W))
    logits_path = export_onnx(
        SemanticExport(gun, export_logits=True), tmp_path / "gun_logits.onnx", input_hw=(H, W)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gun.onnx", "gun_logits.onnx"]
    model = onnx.load(str(ids_path))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["class_ids", "confidence"]
    assert any(n.op_type == "GridSample" for n in model.graph.node)

    img = _image(2)  # exported with batch 1: the batch axis is dynamic
    sess = _session(ids_path)
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    assert sess.get_outputs()[0].shape == ["batch", H, W]
    ids, conf = sess.run(None, {"image": img.numpy()})
    with torch.no_grad():
        ids_t, conf_t = SemanticExport(gun)(img)
        logits_t = SemanticExport(gun, export_logits=True)(img).numpy()
    assert ids.dtype == np.uint8 and ids.shape == (2, H, W) and conf.dtype == np.float32
    assert (ids == ids_t.numpy()).mean() >= 0.999
    np.testing.assert_allclose(conf, conf_t.numpy(), atol=1e-4)
    (logits,) = _session(logits_path).run(["logits"], {"image": img.numpy()})
    assert logits.shape == (2, 19, H, W)
    rel = np.linalg.norm(logits - logits_t) / np.linalg.norm(logits_t)
    assert rel <= 1e-4


def test_onnx_gun_bilinear_sampling_matches_pytorch(tmp_path: Path) -> None:
    # Eq. 4 sampling exports as the sparse blend of gum.guided_ids (NonZero over the pixels
    # whose source cells disagree), not as a K-channel GridSample of the logits.
    torch.manual_seed(2)
    model = build_gun(sampling="bilinear").eval()
    assert model.guidance is not None
    with torch.no_grad():
        model.guidance.head.weight.normal_(0.0, 0.3)
    path = export_onnx(model, tmp_path / "gun_bilinear.onnx", input_hw=(H, W))
    graph = onnx.load(str(path)).graph
    assert any(n.op_type == "NonZero" for n in graph.node)
    img = _image(2)
    ids, conf = _session(path).run(None, {"image": img.numpy()})
    with torch.no_grad():
        ids_t, conf_t = SemanticExport(model)(img)
        logits_t = SemanticExport(model, export_logits=True)(img)
    assert (ids == ids_t.numpy()).mean() >= 0.999
    assert (ids == logits_t.argmax(1).numpy()).mean() >= 0.999
    np.testing.assert_allclose(conf, conf_t.numpy(), atol=1e-4)


def test_export_static_batch_and_errors(gun: GUN, tmp_path: Path) -> None:
    path = export_onnx(
        gun,
        tmp_path / "sub" / "g.onnx",
        input_hw=(H, W),
        batch=2,
        dynamic_batch=False,
        layout="nchw",
    )
    sess = _session(path)
    assert sess.get_inputs()[0].shape == [2, 3, H, W]
    assert sess.get_outputs()[1].shape == [2, H, W]
    with pytest.raises(ValueError, match="GridSample"):
        export_onnx(gun, tmp_path / "x.onnx", input_hw=(H, W), opset=13)
    with pytest.raises(ValueError, match="layout"):
        export_onnx(SemanticExport(gun), tmp_path / "x.onnx", input_hw=(H, W), layout="nchw")
    assert not (tmp_path / "x.onnx").exists()
    assert not gun.training  # state restored (it was eval)


class _Tiny(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.bn = nn.BatchNorm2d(width)


def test_load_weights_roundtrip_and_fp16(tmp_path: Path) -> None:
    src, dst = _Tiny(), _Tiny()
    with torch.no_grad():
        src.bn.running_mean.uniform_()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    save_file(half, str(tmp_path / "w.safetensors"))
    load_weights(dst, tmp_path / "w.safetensors")
    assert dst.conv.weight.dtype == torch.float32
    assert torch.equal(dst.conv.weight, src.conv.weight.half().float())
    assert torch.equal(dst.bn.running_mean, src.bn.running_mean.half().float())
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    load_weights(dst, tmp_path / "w.pt")
    assert torch.equal(dst.conv.weight, src.conv.weight)


def test_load_weights_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_weights(_Tiny(), missing)
    torch.save(_Tiny(width=5).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide\.pt.*conv\.weight: expected \(4, 3, 3, 3\)"):
        load_weights(_Tiny(), tmp_path / "wide.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        load_weights(_Tiny(), tmp_path / "bad.safetensors")
    partial = {k: v for k, v in _Tiny().state_dict().items() if not k.startswith("bn.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match=r"partial\.safetensors.*missing.*bn\.weight"):
        load_weights(_Tiny(), tmp_path / "partial.safetensors")
    extra = {**_Tiny().state_dict(), "fc.weight": torch.zeros(2)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"extra\.pt.*unexpected.*fc\.weight"):
        load_weights(_Tiny(), tmp_path / "extra.pt")
    load_weights(_Tiny(), tmp_path / "extra.pt", ignore_unexpected=True)


def test_builders_load_weight_files(tmp_path: Path) -> None:
    trunk = build_drn_d22(last_stage="layer2")
    sd = {**trunk.state_dict(), "fc.weight": torch.zeros(1000, 512)}  # ImageNet head ignored
    save_file(sd, str(tmp_path / "drn.safetensors"))
    loaded = build_drn_d22(weights=str(tmp_path / "drn.safetensors"), last_stage="layer2")
    assert torch.equal(loaded.layer0[0].weight, trunk.layer0[0].weight)
    with pytest.raises(ValueError, match=r"drn\.safetensors.*missing.*layer3"):
        build_drn_d22(weights=str(tmp_path / "drn.safetensors"), last_stage="layer3")
