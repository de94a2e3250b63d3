"""The CPU-sized panoptic ASP variants (narrow ResNet, FPN and heads) and the default's identity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from asp_targets import ASP_LOSSES, check_inference_outputs, two_object_targets
from torch import nn

from seg_perception.labels import CITYSCAPES
from seg_perception.networks import build_model
from seg_perception.networks.asp_head import SemanticHead
from seg_perception.networks.panoptic_asp import (
    AffineFrozenBatchNorm2d,
    PanopticASP,
    build_panoptic_asp,
    calibrate_frozen_bn,
)
from seg_perception.networks.panoptic_export import (
    OUTPUT_NAMES,
    PanopticExport,
    export_panoptic_onnx,
)

H, W = 128, 256
DETECTOR = {
    "box_score_thresh": 0.0,  # random weights: keep every detection so that boxes exist
    "box_detections_per_img": 8,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 100,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "box_batch_size_per_image": 64,
}
# the smallest configuration of the brief; plain JSON values only
TINY = {
    "backbone": "resnet18",
    "backbone_width": 0.5,
    "fpn_channels": 64,
    "box_representation": 256,
    "mask_channels": 64,
    "head_channels": 64,
}
THINGS = set(CITYSCAPES.thing_train_ids)


def _image(seed: int, h: int = H, w: int = W) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def _condition(model: PanopticASP) -> None:
    """Residual branches start small (last BN gain 0.1) and frozen statistics are calibrated, so
    activations stay O(1) and float rounding cannot decide the ONNX comparison."""
    body = model.detector.backbone.body
    for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
        for block in layer:
            last = block.bn3 if hasattr(block, "bn3") else block.bn2
            nn.init.constant_(last.weight, 0.1)
    calibrate_frozen_bn(model, [_image(100)])


@pytest.fixture(scope="module")
def tiny() -> PanopticASP:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = build_panoptic_asp(min_size=H, max_size=W, **TINY, **DETECTOR)
    _condition(m)
    return m.eval()


def test_default_is_the_paper_model() -> None:
    """No switches: the torchvision R50-FPN Mask R-CNN + ASP head, built the way it was before
    the switches existed, module for module, key for key and (same seed) weight for weight."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ours = build_panoptic_asp(min_size=H, max_size=W)
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,
        norm_layer=AffineFrozenBatchNorm2d,
        trainable_layers=3,
    )
    detector = MaskRCNN(backbone, num_classes=9, min_size=H, max_size=W)
    ref = PanopticASP(
        detector,
        SemanticHead(256, 19),
        thing_train_ids=CITYSCAPES.thing_train_ids,
    )
    assert [(n, type(m)) for n, m in ours.named_modules()] == [
        (n, type(m)) for n, m in ref.named_modules()
    ]
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    for key, value in ref_sd.items():
        assert torch.equal(ours_sd[key], value), key
    assert [(n, p.requires_grad) for n, p in ours.named_parameters()] == [
        (n, p.requires_grad) for n, p in ref.named_parameters()
    ]
    # the paper sizes, spelled out
    assert ours.detector.backbone.out_channels == 256
    assert ours_sd["detector.roi_heads.box_head.fc6.weight"].shape == (1024, 256 * 7 * 7)
    assert ours_sd["detector.roi_heads.mask_head.3.0.weight"].shape == (256, 256, 3, 3)
    assert ours_sd["semantic_head.classifier.weight"].shape == (19, 512, 1, 1)


def test_tiny_widths_and_budget(tiny: PanopticASP) -> None:
    sd = tiny.state_dict()
    body = tiny.detector.backbone.body
    assert [body[f"layer{i}"][-1].conv2.out_channels for i in (1, 2, 3, 4)] == [32, 64, 128, 256]
    assert sd["detector.backbone.fpn.inner_blocks.3.0.weight"].shape == (64, 256, 1, 1)
    assert sd["detector.backbone.fpn.layer_blocks.0.0.weight"].shape == (64, 64, 3, 3)
    assert sd["detector.rpn.head.conv.0.0.weight"].shape == (64, 64, 3, 3)
    assert sd["detector.roi_heads.box_head.fc6.weight"].shape == (256, 64 * 7 * 7)
    assert sd["detector.roi_heads.box_predictor.cls_score.weight"].shape == (9, 256)
    assert sd["detector.roi_heads.box_predictor.bbox_pred.weight"].shape == (36, 256)
    for i in range(4):
        assert sd[f"detector.roi_heads.mask_head.{i}.0.weight"].shape == (64, 64, 3, 3)
    assert sd["detector.roi_heads.mask_predictor.conv5_mask.weight"].shape == (64, 64, 2, 2)
    assert sd["detector.roi_heads.mask_predictor.mask_fcn_logits.weight"].shape == (9, 64, 1, 1)
    assert sd["semantic_head.level_heads.p5.branches.0.0.weight"].shape == (64, 64, 1, 1)
    assert sd["semantic_head.classifier.weight"].shape == (19, 256, 1, 1)
    # frozen BN everywhere in the body; layer2..4 train (trainable_backbone_layers=3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in tiny.modules())
    for name, p in body.named_parameters():
        assert p.requires_grad is name.startswith(("layer2", "layer3", "layer4")), name
    # the shipped-weights budget of issue 6: <= 18 MB as fp16
    numel = sum(v.numel() for v in sd.values() if v.is_floating_point())
    assert numel * 2 <= 18e6


def test_tiny_training_step(tiny: PanopticASP) -> None:
    torch.manual_seed(1)
    bn = [m for m in tiny.modules() if isinstance(m, AffineFrozenBatchNorm2d)]
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in bn]
    saved = {k: v.clone() for k, v in tiny.state_dict().items()}
    images = [_image(1), _image(2, H // 2, W // 2)]
    tiny.train()
    tiny.zero_grad()
    try:
        losses = tiny(images, two_object_targets([(H, W), (H // 2, W // 2)]))
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in tiny.named_parameters()}
    finally:
        tiny.eval()
        tiny.zero_grad(set_to_none=True)
        tiny.load_state_dict(saved)
    assert set(losses) == ASP_LOSSES
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value) and value.item() >= 0, name
    assert 1.0 < losses["loss_segm"].item() < 10.0  # ~log(19) at random init
    for name in (
        "semantic_head.classifier.weight",
        "detector.roi_heads.mask_head.0.0.weight",
        "detector.roi_heads.box_head.fc6.weight",
        "detector.rpn.head.conv.0.0.weight",
        "detector.backbone.fpn.layer_blocks.0.0.weight",
        "detector.backbone.body.layer4.0.conv1.weight",
        "detector.backbone.body.layer2.0.bn1.weight",
    ):
        g = grads[name]
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert grads["detector.backbone.body.layer1.0.conv1.weight"] is None
    for m, (mean, var) in zip(bn, stats, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)


def test_tiny_inference_outputs(tiny: PanopticASP) -> None:
    images = [_image(3), _image(4, 100, 180)]
    with torch.no_grad():
        out = tiny(images)
    check_inference_outputs(images, out, max_k=DETECTOR["box_detections_per_img"], things=THINGS)


def test_tiny_onnx_matches_pytorch(tiny: PanopticASP, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    export = PanopticExport(tiny, (H, W)).eval()
    path = export_panoptic_onnx(export, tmp_path / "tiny.onnx", input_hw=(H, W))
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    image = torch.randint(
        0, 256, (1, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(9)
    )
    with torch.no_grad():
        ref = [t.numpy() for t in export(image)]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    boxes, labels, scores, masks, sem = sess.run(None, {"image": image.numpy()})
    assert len(boxes) > 0 and masks.shape == (len(boxes), 1, 28, 28) and sem.shape == (H, W)
    np.testing.assert_allclose(boxes, ref[0], atol=1e-4)
    np.testing.assert_array_equal(labels, ref[1])
    np.testing.assert_allclose(scores, ref[2], atol=1e-4)
    np.testing.assert_allclose(masks, ref[3], atol=1e-4)
    assert (sem == ref[4]).mean() >= 0.999
    assert set(labels.tolist()) <= THINGS


def test_switches_round_trip_through_json_metadata(tiny: PanopticASP, tmp_path: Path) -> None:
    """What the engine factory does with shipped weights: switches stored as JSON in the
    safetensors metadata, read back by ``build_model``, the model rebuilt strictly from them."""
    from safetensors.torch import save_file

    from seg_perception.networks.export import META_MODEL, META_SWITCHES, stored_switches

    path = tmp_path / "tiny.safetensors"
    state = {k: v.contiguous().half() for k, v in tiny.state_dict().items()}
    meta = {META_MODEL: "panoptic_asp", META_SWITCHES: json.dumps(TINY)}
    save_file(state, str(path), metadata=meta)
    assert path.stat().st_size <= 18e6
    name, switches = stored_switches(path)
    assert name == "panoptic_asp"
    assert switches == TINY
    # build_model applies the stored switches itself (the engine factory passes only the name)
    again = build_model("panoptic_asp", weights=str(path), min_size=H, max_size=W)
    assert again.detector.backbone.out_channels == 64
    for key, value in tiny.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value.half().to(value.dtype))
    # the weights do not fit the paper model: a clear error, not a silent partial load
    with pytest.raises(ValueError, match=r"tiny\.safetensors does not fit .* shape mismatch"):
        build_panoptic_asp(weights=path, min_size=H, max_size=W)


def test_backbone_weights_must_fit_the_width(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    full = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(full, tmp_path / "resnet18.pt")
    m = build_panoptic_asp(backbone="resnet18", backbone_weights=tmp_path / "resnet18.pt")
    assert torch.equal(
        m.detector.backbone.body.layer3[1].conv2.weight, full["layer3.1.conv2.weight"]
    )
    with pytest.raises(ValueError, match=r"resnet18\.pt: .* expected \(32, 3, 7, 7\)"):
        build_panoptic_asp(
            backbone="resnet18", backbone_width=0.5, backbone_weights=tmp_path / "resnet18.pt"
        )


@pytest.mark.parametrize(
    ("switches", "message"),
    [
        ({"backbone": "resnet101"}, "unknown backbone 'resnet101'; valid: resnet18"),
        ({"backbone": "resnet50"}, "BasicBlock depth"),
        ({"backbone_width": "0.5"}, "backbone_width must be a number"),
        ({"fpn_channels": 64.0}, "fpn_channels must be a positive int, got 64.0"),
        ({"box_representation": 0}, "box_representation must be a positive int"),
        ({"mask_channels": True}, "mask_channels must be a positive int"),
        ({"trainable_backbone_layers": 6}, "trainable_backbone_layers must be 0..5"),
        ({"box_head": nn.Identity()}, r"box_head \(use fpn_channels / box_representation\)"),
        ({"head_channels": 48}, "not divisible by num_groups=32"),
    ],
)
def test_switch_errors(switches: dict, message: str) -> None:
    kwargs = {**TINY, **switches}
    with pytest.raises(ValueError, match=message):
        build_panoptic_asp(**kwargs)


@pytest.mark.parametrize("layers", [0, 5])
def test_trainable_layers_on_basic_blocks(layers: int) -> None:
    torch.manual_seed(0)
    m = build_panoptic_asp(trainable_backbone_layers=layers, **TINY)
    body = m.detector.backbone.body
    flags = {p.requires_grad for p in body.parameters()}
    assert flags == {layers == 5}
    # the FPN and every head train regardless
    assert all(p.requires_grad for n, p in m.named_parameters() if ".body." not in n)
