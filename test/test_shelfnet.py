"""ShelfNet: shapes and gradients per switch, the shared-weights block, deep supervision, the
export contract (forward_ids, ONNX), weight loading and the shelf's connectivity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torchvision import models

from seg_perception.networks import build_model
from seg_perception.networks.export import SemanticExport, export_onnx
from seg_perception.networks.relation import MultiStepTest, RelationModule
from seg_perception.networks.shelfnet import (
    PlainResidualBlock,
    SharedResidualBlock,
    ShelfNet,
    ShelfPair,
    build_shelfnet,
)

torch.set_num_threads(1)
SMALL = (16, 32, 64, 128)  # reduced widths that keep the CPU tests fast


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _check_train_step(net: ShelfNet, size: tuple[int, int] = (64, 64), classes: int = 19) -> None:
    """Training forward: dict of top + 3 aux heads at input size; finite CE gradients."""
    net.train()
    x = torch.randn(2, 3, *size)
    target = torch.randint(0, classes, (2, *size))
    target[0, :4] = 255
    out = net(x)
    assert isinstance(out, dict) and set(out) == {"out", "aux", "features"}
    assert out["out"].shape == (2, classes, *size)
    assert len(out["aux"]) == 3 and all(a.shape == (2, classes, *size) for a in out["aux"])
    loss = sum(F.cross_entropy(o, target, ignore_index=255) for o in [out["out"], *out["aux"]])
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert net.backbone.stem[0].weight.grad.abs().sum() > 0
    assert net.heads[0].weight.grad.abs().sum() > 0


def _check_eval_deterministic(net: ShelfNet, size: tuple[int, int] = (64, 64)) -> None:
    net.eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        a, b = net(x), net(x)
    assert isinstance(a, torch.Tensor) and a.shape == (1, net.num_classes, *size)
    assert torch.isfinite(a).all() and torch.equal(a, b)


# --------------------------------------------------------------------------- switches
@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50"])
def test_backbones(backbone: str) -> None:
    net = build_shelfnet(backbone=backbone, reduced_channels=SMALL, num_classes=5)
    _check_train_step(net, classes=5)
    _check_eval_deterministic(net)


def test_resnet101_shape() -> None:
    net = build_shelfnet(backbone="resnet101", reduced_channels=SMALL).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 19, 32, 32)


@pytest.mark.parametrize(
    "switches",
    [
        {"block": "plain"},
        {"column_pairs": 0},
        {"column_pairs": 2},
        {"relation": True},
        {"relation": True, "block": "plain", "column_pairs": 2},
    ],
)
def test_switches_train_and_eval(switches: dict) -> None:
    net = build_shelfnet(reduced_channels=SMALL, **switches)
    assert len(net.pairs) == switches.get("column_pairs", 1)
    assert (net.relation is not None) == switches.get("relation", False)
    _check_train_step(net)
    _check_eval_deterministic(net)


def test_default_paper_network_and_registry() -> None:
    net = build_model("shelfnet", num_classes=7)
    assert isinstance(net, ShelfNet) and len(net.pairs) == 1
    assert isinstance(net.decoder.blocks[0], SharedResidualBlock)
    assert [h.in_channels for h in net.heads] == [64, 128, 256, 512]
    assert net.heads[0].out_channels == 7


def test_relation_sits_before_top_classifier() -> None:
    net = build_shelfnet(reduced_channels=SMALL, relation=True).eval()
    assert isinstance(net.relation, RelationModule)
    seen: list[torch.Size] = []
    net.relation.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    net.heads[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64))
    assert seen == [torch.Size([1, 16, 16, 16])] * 2


def test_any_input_size() -> None:
    net = build_shelfnet(reduced_channels=SMALL).eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        assert net(x).shape == (1, 19, 50, 70)
        assert net.forward_lowres(x).shape == (1, 19, 13, 18)


@pytest.mark.parametrize(
    ("switches", "match"),
    [
        ({"block": "recurrent"}, "shared, plain"),
        ({"backbone": "vgg16"}, "resnet18, resnet34, resnet50, resnet101"),
        ({"column_pairs": -1}, "column_pairs"),
        ({"reduced_channels": (64, 128)}, "reduced_channels"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_switches(switches: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_shelfnet(**switches)


# --------------------------------------------------------------------------- blocks
def test_shared_block_one_weight_two_bns_dropout_between() -> None:
    c = 8
    block = SharedResidualBlock(c, dropout=0.25)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 1 and len(bns) == 2 and bns[0] is not bns[1]
    assert sum(p.numel() for p in block.parameters()) == 9 * c * c + 2 * 2 * c
    assert sum(p.numel() for p in PlainResidualBlock(c).parameters()) == 2 * 9 * c * c + 4 * c
    # Call order: the one conv runs twice, BN1 then dropout between, BN2 after.
    calls: list[str] = []
    for name, module in block.named_children():
        module.register_forward_hook(lambda m, _i, _o, name=name: calls.append(name))
    block.train()(torch.randn(2, c, 6, 6))
    assert calls == ["conv", "bn1", "dropout", "conv", "bn2"]
    assert block.dropout.p == 0.25
    # Eval output equals the formula with the same weight tensor used twice.
    block.eval()
    x = torch.randn(2, c, 6, 6)
    w = block.conv.weight
    mid = F.relu(block.bn1(F.conv2d(x, w, padding=1)))
    torch.testing.assert_close(block(x), F.relu(block.bn2(F.conv2d(mid, w, padding=1)) + x))
    # Dropout is active in training only.
    block.train()
    assert not torch.equal(block(x), block(x))


def test_shared_saves_exactly_one_conv_per_block() -> None:
    shared = build_shelfnet(block="shared", column_pairs=1)
    plain = build_shelfnet(block="plain", column_pairs=1)
    ch = (64, 128, 256, 512)
    # decoder: one block per level; encoder/decoder pair: 4 encoder + 3 decoder blocks.
    saved = sum(9 * c * c for c in ch) * 2 + sum(9 * c * c for c in ch[:3])
    n_shared = sum(p.numel() for p in shared.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_plain - n_shared == saved


# --------------------------------------------------------------------------- heads
def test_deep_supervision_heads_train_only() -> None:
    net = build_shelfnet(reduced_channels=SMALL, num_classes=4)
    called: list[int] = []
    for i, head in enumerate(net.heads):
        head.register_forward_hook(lambda _m, _i, _o, i=i: called.append(i))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        nn.init.zeros_(net.heads[2].weight)
        nn.init.zeros_(net.heads[2].bias)
        out = net.train()(x)
    assert sorted(called) == [0, 1, 2, 3]
    assert torch.count_nonzero(out["aux"][1]) == 0  # aux[1] comes from heads[2] (level C)
    assert torch.count_nonzero(out["aux"][0]) > 0
    assert out["features"].shape == (2, 16, 16, 16)
    called.clear()
    with torch.no_grad():
        y = net.eval()(x)
    assert called == [0] and isinstance(y, torch.Tensor) and y.shape == (2, 4, 64, 64)


# --------------------------------------------------------------------------- export contract
@pytest.mark.parametrize("relation", [False, True])
def test_forward_ids_matches_argmax(relation: bool) -> None:
    net = build_shelfnet(reduced_channels=SMALL, relation=relation).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = net(x)
        ids, conf = net.forward_ids(x)
    assert ids.dtype == torch.uint8 and ids.shape == (2, 64, 96)
    assert conf.dtype == torch.float32 and conf.shape == (2, 64, 96)
    assert (ids.long() == logits.argmax(1)).float().mean() >= 0.999
    torch.testing.assert_close(conf, torch.softmax(logits, 1).amax(1))


def test_multistep_wraps_shelfnet() -> None:
    net = build_shelfnet(reduced_channels=SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    tester = MultiStepTest(net, steps=2)
    with torch.no_grad():
        out = tester(x)
        direct = net(x)
    assert out.shape == direct.shape == (1, 19, 64, 64)
    # The unshifted run supplies every 4th pixel exactly (up to conv rounding).
    torch.testing.assert_close(out[..., ::4, ::4], direct[..., ::4, ::4], atol=1e-4, rtol=1e-4)


def test_onnx_export_shelfnet18(tmp_path: Path) -> None:
    """Shared SemanticExport (normalisation + forward_ids) through onnxruntime."""
    import onnxruntime as ort

    net = build_shelfnet(backbone="resnet18", relation=True).eval()
    image = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    results = {}
    for export_logits in (False, True):
        wrapper = SemanticExport(net, layout="nchw", export_logits=export_logits)
        path = export_onnx(wrapper, tmp_path / f"s{export_logits}.onnx", input_hw=(64, 96),
                           layout="nchw")  # fmt: skip
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ref = wrapper(image)
        results[export_logits] = (session.run(None, {"image": image.numpy()}), ref)
    (ids, conf), (ref_ids, ref_conf) = results[False]
    assert ids.dtype == np.uint8 and ids.shape == (1, 64, 96)
    assert (ids == ref_ids.numpy()).mean() >= 0.999
    np.testing.assert_allclose(conf, ref_conf.numpy(), atol=1e-4)
    (logits,), ref_logits = results[True]
    rel = np.abs(logits - ref_logits.numpy()).max() / np.abs(ref_logits.numpy()).max()
    assert rel <= 1e-4
    assert (ids == logits.argmax(1)).mean() >= 0.999


# --------------------------------------------------------------------------- weights
def test_weights_round_trip(tmp_path: Path) -> None:
    net = build_shelfnet(reduced_channels=SMALL, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.save(net.state_dict(), tmp_path / "shelf.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "s.safetensors")
    for name in ("shelf.pt", "s.safetensors"):
        loaded = build_shelfnet(reduced_channels=SMALL, num_classes=3, weights=str(tmp_path / name))
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), net(x))
    with pytest.raises(ValueError, match="shelf.pt"):
        build_shelfnet(reduced_channels=SMALL, num_classes=4, weights=str(tmp_path / "shelf.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_shelfnet(weights=str(tmp_path / "missing.pt"))


def test_backbone_weights(tmp_path: Path) -> None:
    resnet = models.resnet18(weights=None, num_classes=1000)
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")  # includes fc.*, which is ignored
    net = build_shelfnet(reduced_channels=SMALL, backbone_weights=str(tmp_path / "r18.pth"))
    assert torch.equal(net.backbone.stem[0].weight, resnet.conv1.weight)
    assert torch.equal(net.backbone.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    torch.save(models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="r34.pth"):
        build_shelfnet(backbone_weights=str(tmp_path / "r34.pth"))


# --------------------------------------------------------------------------- connectivity
def test_encoder_column_has_no_lateral_at_lowest_level() -> None:
    pair = ShelfPair(SMALL, lambda c: SharedResidualBlock(c, dropout=0.0)).eval()
    lateral = [torch.randn(1, c, 32 // 2**i, 32 // 2**i, requires_grad=True) for i, c in
               enumerate(SMALL)]  # fmt: skip
    out = pair(lateral)
    assert [o.shape[1] for o in out] == list(SMALL)
    sum(o.sum() for o in out).backward()
    assert all(lat.grad is not None and lat.grad.abs().sum() > 0 for lat in lateral[:3])
    assert lateral[3].grad is None


def _count_fcn_paths(levels: int, column_pairs: int, lateral_at_bottom: bool) -> int:
    """Paths from the input (A0) to the top of the last column in the shelf's graph.

    Columns: 0 backbone (down), 1 reduction (no vertical edges), 2 decoder (up), then pairs of
    encoder (down) and decoder (up). Laterals join equal levels of adjacent columns; an encoder
    column takes its bottom level laterally only if ``lateral_at_bottom``.
    """
    n_cols = 3 + 2 * column_pairs
    paths = {(0, 0): 1}  # (column, level) -> number of paths reaching it
    for lvl in range(1, levels):
        paths[(0, lvl)] = paths[(0, lvl - 1)]
    for col in range(1, n_cols):
        kind = "flat" if col == 1 else ("up" if col % 2 == 0 else "down")
        order = range(levels - 1, -1, -1) if kind == "up" else range(levels)
        for lvl in order:
            n = 0
            if kind != "down" or lvl < levels - 1 or lateral_at_bottom:
                n += paths[(col - 1, lvl)]
            if kind == "up" and lvl < levels - 1:
                n += paths[(col, lvl + 1)]
            if kind == "down" and lvl > 0:
                n += paths[(col, lvl - 1)]
            paths[(col, lvl)] = n
    return paths[(n_cols - 1, 0)]


def test_fcn_path_count_matches_paper() -> None:
    # Sec. 3.2: "for a SegNet with 4 spatial levels (A-D), the total number of FCN paths is 4;
    # for a multi-path network with the same spatial levels, the total number of FCN paths is 29".
    assert _count_fcn_paths(4, 1, lateral_at_bottom=False) == 29  # the structure built here
    assert _count_fcn_paths(4, 1, lateral_at_bottom=True) == 30  # the rejected reading
    assert _count_fcn_paths(4, 2, lateral_at_bottom=False) > 29
