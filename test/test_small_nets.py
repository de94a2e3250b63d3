"""Width switches of the shipped CPU models: narrow ResNet, ShelfNet ``backbone_width``, GUN
``width``; width 1 is the papers' networks key for key; narrow weights carry their switches in
the safetensors metadata and build the narrow net through ``build_model`` and the engines."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision import models
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d

from seg_perception.data.synth import generate_frame
from seg_perception.engines.factory import build
from seg_perception.engines.spec import EngineSpec
from seg_perception.networks import build_model
from seg_perception.networks.export import SemanticExport, stored_switches
from seg_perception.networks.gun import build_gun
from seg_perception.networks.report import fp16_megabytes
from seg_perception.networks.resnet import build_resnet
from seg_perception.networks.shelfnet import (
    ResNetFeatures,
    SharedResidualBlock,
    ShelfNet,
    build_shelfnet,
)
from seg_perception.train.checkpoint import export_weights, save_checkpoint

H, W = 64, 128
K = 19
NARROW = {
    "gun": {"width": 0.5},
    "shelfnet": {
        "backbone": "resnet18",
        "backbone_width": 0.5,
        "reduced_channels": [32, 64, 128, 256],
    },
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _params(m: nn.Module) -> int:
    """Parameters without an ImageNet classifier (``fc.*``)."""
    return sum(p.numel() for k, p in m.named_parameters() if not k.startswith("fc."))


def _conv_widths(m: nn.Module) -> list[int]:
    return [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]


# ------------------------------------------------------------------------------------ ResNet
@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_width_1_is_torchvision(depth: int) -> None:
    ours = build_resnet(depth=depth)
    ref = getattr(models, f"resnet{depth}")(weights=None)
    assert type(ours) is type(ref) and _shapes(ours) == _shapes(ref)
    expansion = 1 if depth == 18 else 4
    assert ours.stage_channels == tuple(c * expansion for c in (64, 128, 256, 512))
    frozen = build_resnet(depth=depth, norm_layer=FrozenBatchNorm2d)
    assert isinstance(frozen.bn1, FrozenBatchNorm2d)
    ref_frozen = getattr(models, f"resnet{depth}")(weights=None, norm_layer=FrozenBatchNorm2d)
    assert _shapes(frozen) == _shapes(ref_frozen)


@pytest.mark.parametrize("depth", [18, 34])
def test_narrow_resnet_stages_shapes_and_params(depth: int) -> None:
    full = build_resnet(depth=depth)
    half = build_resnet(depth=depth, width=0.5)
    assert half.stage_channels == (32, 64, 128, 256)
    assert build_resnet(depth=depth, width=0.375).stage_channels == (24, 48, 96, 192)
    # the same module names as torchvision's ResNet (minus the classifier)
    full_keys = {k for k in full.state_dict() if not k.startswith("fc.")}
    assert set(half.state_dict()) == full_keys
    assert all(c % 8 == 0 for c in _conv_widths(half))
    assert 0.22 < _params(half) / _params(full) < 0.28  # ~w^2
    getter = IntermediateLayerGetter(half, {f"layer{i}": str(i) for i in range(1, 5)}).eval()
    with torch.no_grad():
        out = getter(torch.randn(1, 3, 64, 96))
    assert [tuple(v.shape) for v in out.values()] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(half.stage_channels, (4, 8, 16, 32), strict=True)
    ]


def test_narrow_resnet_in_torchvision_fpn_and_norm_layer() -> None:
    net = build_resnet(depth=18, width=0.5, norm_layer=FrozenBatchNorm2d)
    assert isinstance(net.bn1, FrozenBatchNorm2d) and isinstance(
        net.layer2[0].bn2, FrozenBatchNorm2d
    )
    fpn = BackboneWithFPN(
        net,
        {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=list(net.stage_channels),
        out_channels=16,
    ).eval()
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "0": (1, 16, 16, 16),
        "1": (1, 16, 8, 8),
        "2": (1, 16, 4, 4),
        "3": (1, 16, 2, 2),
        "pool": (1, 16, 1, 1),
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 50, "width": 0.5}, "width"),
        ({"depth": 18, "width": 0.0}, "width"),
        ({"depth": 18, "width": 1.5}, "width"),
        ({"depth": 20}, "depth"),
    ],
)
def test_resnet_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_resnet(**kwargs)


# ------------------------------------------------------------------------------------ ShelfNet
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_shelfnet_backbone_width_1_is_todays_tree(backbone: str) -> None:
    small = (16, 16, 32, 32)
    ours = build_shelfnet(backbone=backbone, backbone_width=1.0, reduced_channels=small)
    resnet = getattr(models, backbone)(weights=None)  # how the net was assembled before
    ref = ShelfNet(
        ResNetFeatures(resnet),
        num_classes=19,
        reduced_channels=small,
        block=lambda c: SharedResidualBlock(c),
    )
    assert list(_shapes(ours).items()) == list(_shapes(ref).items())  # names, order, shapes
    assert ours.backbone.channels == ref.backbone.channels
    assert _shapes(ours) == _shapes(build_shelfnet(backbone=backbone, reduced_channels=small))


def test_shelfnet_narrow_backbone_forward_and_params() -> None:
    net = build_shelfnet(**NARROW["shelfnet"], num_classes=5)
    assert net.backbone.channels == (32, 64, 128, 256)
    assert [h.in_channels for h in net.heads] == [32, 64, 128, 256]
    net.train()
    out = net(torch.randn(2, 3, H, W))
    assert out["out"].shape == (2, 5, H, W)
    assert [tuple(a.shape) for a in out["aux"]] == [(2, 5, H, W)] * 3
    net.eval()
    with torch.no_grad():
        ids, conf = net.forward_ids(torch.randn(1, 3, H, W))
    assert ids.shape == conf.shape == (1, H, W) and ids.dtype == torch.uint8
    full = build_shelfnet(num_classes=5)
    assert 0.2 < _params(net) / _params(full) < 0.3  # every width halved: ~w^2


def test_shelfnet_backbone_width_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="backbone_width"):
        build_shelfnet(backbone="resnet50", backbone_width=0.5)
    with pytest.raises(ValueError, match="backbone_width"):
        build_shelfnet(backbone_width=0.0)


# ------------------------------------------------------------------------------------ GUN
def test_gun_width_1_is_the_papers_gun() -> None:
    default = build_gun()
    assert _shapes(build_gun(width=1.0)) == _shapes(default)
    # DRN-D-22 widths of the paper's table (layer0..layer6 of the low-res branch) and the GUN
    # paper's fixed widths: fusion post-processing 128, fusion guidance 32
    outs = [_conv_widths(default.trunk.get_submodule(f"layer{i}"))[0] for i in range(7)]
    assert outs == [16, 16, 32, 64, 128, 256, 512]
    assert default.fusion.out_channels == 128
    assert default.guidance.from_fusion[0].out_channels == 32
    assert abs(_params(default) / 1e6 - 11.45) < 0.01  # the count of the full GUN


@pytest.mark.parametrize("encoder", ["enc24shared", "enc24", "baseline"])
@pytest.mark.parametrize("width", [0.5, 0.375])
def test_gun_narrow_forward_and_params(encoder: str, width: float) -> None:
    full = build_gun(num_classes=7, encoder=encoder)
    net = build_gun(num_classes=7, encoder=encoder, width=width)
    assert set(net.state_dict()) == set(full.state_dict())  # same names, other shapes
    assert net.trunk.out_channels == (256 if width == 0.5 else 192)
    heads = {net.classifier, net.guidance.head}
    assert all(
        c.out_channels % 8 == 0
        for c in net.modules()
        if isinstance(c, nn.Conv2d) and c not in heads
    )
    x = torch.randn(2, 3, H, W)
    logits = net(x)
    assert logits.shape == (2, 7, H, W)
    logits.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    ratio = _params(net) / _params(full)
    assert 0.7 * width**2 < ratio < 1.3 * width**2


def test_gun_guidance_variants_scale() -> None:
    for guidance in ("large_rf", "high_res", "fusion"):
        net = build_gun(width=0.5, guidance=guidance).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, H, W)).shape == (1, K, H, W)
    large = build_gun(width=0.5, guidance="large_rf")
    assert (large.guidance.cbr1[0].out_channels, large.guidance.cbr2[0].out_channels) == (32, 16)


def test_gun_invalid_width() -> None:
    with pytest.raises(ValueError, match="width"):
        build_gun(width=1.25)


# ------------------------------------------------------------------------ weights metadata
def _export(
    tmp_path: Path, model: str, switches: dict, *, boost: float = 1.0
) -> tuple[Path, nn.Module]:
    """A trainer checkpoint of a seeded net -> ``export_weights`` (fp16, metadata)."""
    torch.manual_seed(0)
    net = build_model(model, num_classes=K, **switches)
    head = net.classifier if model == "gun" else net.heads[0]
    with torch.no_grad():  # a random net has near-tied logits: give its classes real margins
        head.weight.mul_(boost)
        head.bias.normal_(0.0, 0.5)
    run = tmp_path / f"run_{model}"
    payload = {
        "model": {f"net.{k}": v for k, v in net.state_dict().items()},
        "model_name": model,
        "switches": {"num_classes": K, "backbone_weights": "/not/here.pth", **switches},
    }
    save_checkpoint(run, 1, payload)
    return export_weights(run, tmp_path / f"{model}.safetensors"), net


@pytest.mark.parametrize("model", ["gun", "shelfnet"])
def test_exported_switches_build_the_narrow_net(tmp_path: Path, model: str) -> None:
    path, net = _export(tmp_path, model, NARROW[model])
    name, stored = stored_switches(path)
    assert name == model and "backbone_weights" not in stored
    assert {k: v for k, v in stored.items() if k != "num_classes"} == NARROW[model]
    built = build_model(model, weights=str(path))
    assert _shapes(built) == _shapes(net)
    own = net.state_dict()
    for k, v in built.state_dict().items():  # the fp16-rounded trained values
        assert torch.equal(v, own[k].half().float() if v.is_floating_point() else own[k]), k
    # the fp16 size the report states is the file's tensor payload
    raw = path.read_bytes()
    header = struct.unpack("<Q", raw[:8])[0]
    assert len(raw) - 8 - header == round(fp16_megabytes(net) * 1e6)
    assert json.loads(raw[8 : 8 + header])["__metadata__"]["seg_perception.model"] == model


def test_weights_without_metadata_and_mismatches_name_the_file(tmp_path: Path) -> None:
    narrow = build_gun(width=0.5)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in narrow.state_dict().items()}, str(plain))
    assert stored_switches(plain) == (None, {})
    with pytest.raises(ValueError, match=str(plain)):  # default (full) GUN: shapes differ
        build_model("gun", weights=str(plain))
    assert _shapes(build_model("gun", weights=str(plain), width=0.5)) == _shapes(narrow)
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in build_gun().state_dict().items()}, str(full))
    assert _shapes(build_model("gun", weights=str(full))) == _shapes(build_gun())
    gun_file, _ = _export(tmp_path, "gun", NARROW["gun"])
    with pytest.raises(ValueError, match=f"{gun_file}.*'gun' network, not 'shelfnet'"):
        build_model("shelfnet", weights=str(gun_file))
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"seg_perception.switches": "[1, 2"})
    with pytest.raises(ValueError, match=f"{bad}.*seg_perception.switches"):
        build_model("gun", weights=str(bad))


def test_metadata_asking_for_a_huge_net_is_refused_before_building(tmp_path: Path) -> None:
    """An untrusted file's metadata may name any switches; the net is first built on the meta
    device and checked against the file's header, so a million-channel ShelfNet (1.8 T
    parameters, far beyond this machine's memory) is refused without being allocated."""
    gun_file, _ = _export(tmp_path, "gun", NARROW["gun"])
    sd = {
        k: v.contiguous() for k, v in build_model("gun", weights=str(gun_file)).state_dict().items()
    }
    huge = {"num_classes": K, "reduced_channels": [1_000_000] * 4}
    evil = tmp_path / "evil.safetensors"
    save_file(sd, str(evil), metadata={"seg_perception.switches": json.dumps(huge)})
    with pytest.raises(
        ValueError, match=rf"{evil} does not fit ShelfNet: .*(shape mismatch|missing)"
    ):
        build_model("shelfnet", weights=str(evil))
    # the same check passes for a file that matches its metadata
    assert _shapes(build_model("gun", weights=str(gun_file))) == {
        k: tuple(v.shape) for k, v in sd.items()
    }


@pytest.mark.parametrize("model", ["gun", "shelfnet"])
def test_engines_build_the_narrow_net_from_the_file(tmp_path: Path, model: str) -> None:
    path, _ = _export(tmp_path, model, NARROW[model], boost=20.0)
    ref_net = build_model(model, weights=str(path)).eval()  # the fp16-rounded weights
    images = np.stack([generate_frame(seed=5, index=i, height=H, width=W).image for i in range(2)])
    with torch.no_grad():
        ref = SemanticExport(ref_net)(torch.from_numpy(images))[0].numpy()
    assert len(np.unique(ref)) >= 3  # several classes: a meaningful comparison
    for backend in ("torch", "onnxruntime"):
        engine = build(
            EngineSpec(
                model=model,
                num_classes=K,
                input_hw=(H, W),
                weights=path,
                backend=backend,
                cache_dir=tmp_path / "cache",
                threads=1,
                max_batch=2,
            )
        )
        ids = engine.infer(images)["class_ids"]
        assert ids.shape == (2, H, W)
        assert np.mean(ids == ref) >= 0.999, backend
