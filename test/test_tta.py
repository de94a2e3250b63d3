"""The papers' test-time procedures (networks/tta.py) as options of the engines, of
``seg-perception eval --tta`` and of the recipes' validation; ShelfNet's deformable (RelationNet)
backbone and deep-supervision switches; validation's Cityscapes instance encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_perception.choices import TTA_MODES
from seg_perception.engines.base import EngineError
from seg_perception.engines.cache import export_key
from seg_perception.engines.factory import build
from seg_perception.engines.spec import EngineSpec
from seg_perception.labels import CITYSCAPES
from seg_perception.networks import build_model
from seg_perception.networks.relation import DeformConv2d, MultiStepTest
from seg_perception.networks.shelfnet import build_shelfnet
from seg_perception.networks.tta import SHELFNET_SCALES, MultiScaleFlipTest, with_tta

torch.set_num_threads(1)
SMALL = (16, 32, 64, 128)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class _RampNet(nn.Module):
    """1x1 conv logits plus a horizontal ramp: not flip-equivariant, any input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2, 2, x.shape[-1]).view(1, 1, 1, -1) * torch.arange(4.0).view(
            1, 4, 1, 1
        )
        return self.conv(x) + ramp


def test_multiscale_flip_is_the_mean_of_rescaled_and_flipped_probabilities() -> None:
    assert SHELFNET_SCALES == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # ShelfNet Table 2
    net = _RampNet().eval()
    x = torch.randn(1, 3, 8, 12)
    with torch.no_grad():
        tester = MultiScaleFlipTest(net, scales=(1.0, 0.5))
        got = tester(x)
        want = torch.zeros(1, 4, 8, 12)
        for size in ((8, 12), (4, 6)):
            xs = (
                F.interpolate(x, size, mode="bilinear", align_corners=False)
                if size != (8, 12)
                else x
            )
            p = net(xs).softmax(1) + net(xs.flip(-1)).softmax(1).flip(-1)
            want += F.interpolate(p, (8, 12), mode="bilinear", align_corners=False)
        torch.testing.assert_close(got, want / 4)
        ids, conf = tester.forward_ids(x)
    assert ids.dtype == torch.uint8 and torch.equal(ids.long(), want.argmax(1))
    torch.testing.assert_close(conf, (want / 4).amax(1))
    # the flipped run is flipped back: without it the ramp's class order would be mirrored
    no_flip = MultiScaleFlipTest(net, scales=(1.0,), flip=False)(x)
    torch.testing.assert_close(no_flip, net(x).softmax(1))


def test_with_tta_modes_and_errors() -> None:
    assert TTA_MODES == ("none", "multistep", "multiscale-flip")
    shelf = build_shelfnet(reduced_channels=SMALL, num_classes=5).eval()
    assert with_tta(shelf, "none") is shelf
    multistep = with_tta(shelf, "multistep")
    assert isinstance(multistep, MultiStepTest) and multistep.steps == 2  # the "4-steps testing"
    assert not multistep.training and not shelf.training  # the net's mode is kept
    assert isinstance(with_tta(shelf, "multiscale-flip"), MultiScaleFlipTest)
    gun = build_model("gun", num_classes=5, width=0.25).eval()
    with pytest.raises(ValueError, match="multistep needs a net with a strided"):
        with_tta(gun, "multistep")
    with pytest.raises(ValueError, match="valid: none, multistep, multiscale-flip"):
        with_tta(shelf, "tencrop")


def test_engine_runs_the_test_time_procedure(tmp_path: Path) -> None:
    """A spec with ``tta`` builds the wrapped net: its ids are the wrapper's on the normalised
    frame; the export key tells the procedures apart; a plain spec stays plain (the node)."""
    switches = {"backbone": "resnet18", "backbone_width": 0.25, "reduced_channels": [8, 16, 16, 16]}
    base = EngineSpec(
        "shelfnet", 19, (32, 64), switches=tuple(switches.items()), cache_dir=tmp_path
    )
    assert base.tta == "none"
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 64, 3), dtype=np.uint8)
    torch.manual_seed(0)
    net = build_model("shelfnet", num_classes=19, **switches).eval()
    from seg_perception.networks.export import SemanticExport

    for mode in ("multistep", "multiscale-flip"):
        engine = build(base.with_(tta=mode))
        out = engine.infer(image)
        want_ids, want_conf = SemanticExport(with_tta(net, mode))(torch.from_numpy(image))
        assert (out["class_ids"] == want_ids.numpy()).mean() > 0.999, mode
        np.testing.assert_allclose(out["confidence"], want_conf.numpy(), atol=1e-4)
    plain = build(base).infer(image)["class_ids"]
    assert (plain != out["class_ids"]).any()  # the procedure changes the prediction
    # onnxruntime runs the same graph, exported under its own cache key
    ort = build(base.with_(backend="onnxruntime", tta="multiscale-flip")).infer(image)
    assert (ort["class_ids"] == out["class_ids"]).mean() > 0.999
    assert len(list((tmp_path / "onnx").glob("shelfnet-32x64-*.onnx"))) == 1
    keys = [
        export_key(
            kind="semantic",
            model="shelfnet",
            switches=switches,
            weights_sha256=None,
            input_hw=(32, 64),
            num_classes=19,
            opset=17,
            torch_version="t",
            dynamic_batch=True,
            tta=t,
        )
        for t in TTA_MODES
    ]
    assert "tta" not in keys[0] and len({str(k) for k in keys}) == 3
    with pytest.raises(EngineError, match="multistep needs a net with a strided"):
        build(EngineSpec("gun", 19, (32, 64), switches=(("width", 0.25),), tta="multistep"))
    with pytest.raises(EngineError, match="semantic network built from weights"):
        EngineSpec("panoptic_asp", 19, (64, 128), tta="multiscale-flip")
    with pytest.raises(EngineError, match="valid: none, multistep, multiscale-flip"):
        EngineSpec("gun", 19, (32, 64), tta="flip")


# --------------------------------------------------------------------------- ShelfNet switches
def test_deformable_switch_makes_layer4_relationnets_and_starts_as_the_plain_net() -> None:
    plain = build_shelfnet(reduced_channels=SMALL, num_classes=5).eval()
    dcn = build_shelfnet(reduced_channels=SMALL, num_classes=5, deformable=True).eval()
    convs = [b.conv2 for b in dcn.backbone.layer4]
    assert convs and all(isinstance(c, DeformConv2d) for c in convs)
    assert not any(isinstance(m, DeformConv2d) for m in dcn.backbone.layer3.modules())
    res = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert res.unexpected_keys == [] and all(".offset." in k for k in res.missing_keys)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dcn(x), plain(x), atol=1e-4, rtol=1e-4)
    dcn.train()(x)["out"].square().mean().backward()
    assert convs[0].offset.weight.grad.abs().sum() > 0  # the offsets learn


def test_deformable_net_is_refused_for_onnx_and_runs_with_torch(tmp_path: Path) -> None:
    switches = (("backbone_width", 0.25), ("deformable", True), ("reduced_channels", [8, 8, 8, 8]))
    spec = EngineSpec("shelfnet", 19, (32, 32), switches=switches, cache_dir=tmp_path)
    image = np.zeros((1, 32, 32, 3), np.uint8)
    assert build(spec).infer(image)["class_ids"].shape == (1, 32, 32)
    with pytest.raises(EngineError, match="deformable convolutions.*backend torch"):
        build(spec.with_(backend="onnxruntime"))


def test_deep_supervision_switch_builds_no_aux_heads_without_it() -> None:
    from seg_perception.losses.multitask import SegmentationLoss

    net = build_shelfnet(reduced_channels=SMALL, num_classes=4, deep_supervision=False)
    assert len(net.heads) == 1
    out = net.train()(torch.randn(2, 3, 64, 64))
    assert out["aux"] == []
    terms = SegmentationLoss(aux_weight=0.4)(out, torch.randint(0, 4, (2, 64, 64)))
    assert set(terms) == {"loss_main", "loss"}
    with_aux = build_shelfnet(reduced_channels=SMALL, num_classes=4)  # the default: our addition
    assert len(with_aux.heads) == 4 and len(with_aux.train()(torch.randn(1, 3, 64, 64))["aux"]) == 3


def test_recipes_say_where_each_procedure_and_switch_comes_from() -> None:
    from seg_perception.train.recipe import load_recipe

    rel = load_recipe(ROOT / "config/train/relationnet_cityscapes.yaml")
    assert rel.model.switches["deformable"] is True and rel.data.val_tta == "multistep"
    assert rel.model.switches["deep_supervision"] is False
    shelf = load_recipe(ROOT / "config/train/shelfnet50_cityscapes.yaml")
    assert shelf.data.val_tta == "multiscale-flip"
    assert shelf.model.switches["deep_supervision"] is False  # not in the ShelfNet paper
    synth = load_recipe(ROOT / "config/train/shelfnet18_synth.yaml")
    assert synth.model.switches["deep_supervision"] is True
    text = (ROOT / "config/train/shelfnet18_synth.yaml").read_text()
    assert "OUR addition" in text and "not in the ShelfNet paper" in text
    assert load_recipe(ROOT / "config/train/gun_cityscapes.yaml").data.val_tta == "none"


def test_recipe_val_tta_is_checked(tmp_path: Path) -> None:
    from tiny_recipe import tiny_recipe

    from seg_perception.config import ConfigError
    from seg_perception.train.recipe import parse_recipe

    doc = tiny_recipe(tmp_path)
    doc["data"]["val_tta"] = "tencrop"
    with pytest.raises(ConfigError, match="'data.val_tta' must be one of none, multistep"):
        parse_recipe(doc)
    doc["data"]["val_tta"] = "multiscale-flip"
    doc["model"] = {"name": "panoptic_asp"}
    doc["stages"][0]["scl"] = False
    with pytest.raises(ConfigError, match="'data.val_tta' is for the semantic nets"):
        parse_recipe(doc)


# --------------------------------------------------------------------------- validation
def _frames(n: int = 2) -> list[dict]:
    from seg_perception.data.synth import generate_frames

    return [
        {"image": f.image, "semantic": f.semantic, "instance": f.instance}
        for f in generate_frames(n, seed=5, height=32, width=64)
    ]


def test_validation_runs_the_recipe_test_time_procedure() -> None:
    from seg_perception.data.transforms import image_to_tensor
    from seg_perception.metrics import SemanticMetrics
    from seg_perception.train.modules import SemanticTrainModule
    from seg_perception.train.validate import validate_semantic

    module = SemanticTrainModule(build_shelfnet(reduced_channels=SMALL, num_classes=19))
    data = _frames()
    results = {}
    for mode in ("none", "multistep"):
        metrics, _ = validate_semantic(module, data, device=torch.device("cpu"), tta=mode)
        results[mode] = metrics["miou"]
    assert module.training  # mode restored
    want = SemanticMetrics(labels=CITYSCAPES)
    tester = MultiStepTest(module.net.eval(), steps=2)
    with torch.no_grad():
        for s in data:
            x = module.normalise(image_to_tensor(s["image"]).unsqueeze(0))
            want.update(tester(x).argmax(1)[0].to(torch.uint8).numpy(), s["semantic"])
    assert results["multistep"] == pytest.approx(want.compute()["miou"])
    assert results["multistep"] != results["none"]


class _Oracle(nn.Module):
    """An ASP stand-in whose output is the ground truth of the one frame it is shown."""

    def __init__(self, semantic: np.ndarray, instance: np.ndarray, score: float = 1.0) -> None:
        super().__init__()
        from seg_perception.data.cityscapes import instance_targets

        self.semantic, self.targets = torch.from_numpy(semantic), instance_targets(instance)
        self.score = score

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        t = self.targets
        return [
            {
                "semantic": self.semantic,
                "masks": t["masks"].float(),
                "labels": t["labels"],
                "scores": torch.full((len(t["labels"]),), self.score),
            }
        ]


def test_validation_keeps_cityscapes_instance_index_999_in_its_class() -> None:
    """instanceId 26999 (car, the 1000th car of a frame) must stay a car: with the old
    ``trainId * 1000 + j + 1`` encoding it became 14000, the first truck. A perfect prediction
    then scores PQ 1 on cars and finds no truck."""
    from seg_perception.train.validate import validate_panoptic

    car, person = CITYSCAPES.label_to_train[26], CITYSCAPES.label_to_train[24]
    semantic = np.zeros((32, 64), np.uint8)  # road
    instance = np.full((32, 64), 7, np.int32)  # road labelId
    semantic[4:20, 4:30], instance[4:20, 4:30] = car, 26999
    semantic[4:20, 34:60], instance[4:20, 34:60] = car, 26000
    semantic[22:30, 10:20], instance[22:30, 10:20] = person, 24999
    frame = {"image": np.zeros((32, 64, 3), np.uint8), "semantic": semantic, "instance": instance}

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _Oracle(semantic, instance)

    metrics, _ = validate_panoptic(Module(), [frame], device=torch.device("cpu"))
    per_class = metrics["panoptic"]["per_class"]
    assert per_class["car"]["tp"] == 2 and per_class["car"]["fn"] == per_class["car"]["fp"] == 0
    assert per_class["person"]["tp"] == 1
    assert per_class["truck"]["tp"] + per_class["truck"]["fn"] == 0
    assert metrics["pq_things"] == pytest.approx(1.0) and metrics["pq"] == pytest.approx(1.0)


def test_validation_fuses_with_the_node_settings() -> None:
    """The trainer's ASP validation fuses as the node does: a detection scored just under the
    node's default threshold is dropped (its small segment then has no instance), and given
    settings are honoured."""
    from seg_perception.pipeline import PanopticSettings
    from seg_perception.train.validate import validate_panoptic

    car = CITYSCAPES.label_to_train[26]
    semantic = np.zeros((32, 64), np.uint8)
    instance = np.full((32, 64), 7, np.int32)
    semantic[4:20, 4:30], instance[4:20, 4:30] = car, 26000  # 416 px: below the new-instance area
    frame = {"image": np.zeros((32, 64, 3), np.uint8), "semantic": semantic, "instance": instance}
    default = PanopticSettings.from_config()
    assert default.min_new_instance_area > 416

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _Oracle(semantic, instance, score=default.score_threshold - 0.05)

    cpu = torch.device("cpu")
    node, _ = validate_panoptic(Module(), [frame], device=cpu)
    assert node["panoptic"]["per_class"]["car"]["tp"] == 0
    assert node["panoptic"]["per_class"]["car"]["fn"] == 1
    lower = PanopticSettings.from_config(score_threshold=default.score_threshold - 0.1)
    given, _ = validate_panoptic(Module(), [frame], device=cpu, settings=lower)
    assert given["panoptic"]["per_class"]["car"]["tp"] == 1
    assert given["pq_things"] == pytest.approx(1.0)
