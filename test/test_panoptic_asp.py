"""Tests of the panoptic ASP model (Mask R-CNN R50-FPN + ASP semantic head) and its export form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from asp_targets import ASP_LOSSES, check_inference_outputs, two_object_targets
from torch import nn

from seg_perception.labels import CITYSCAPES
from seg_perception.networks import build_model
from seg_perception.networks.asp_head import (
    AtrousSpatialPyramid,
    ConvGNReLU,
    RefinementPyramid,
    SemanticHead,
    TwoConvHead,
    UpsampleAdd,
)
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
    paste_masks,
)

H, W = 128, 256
SMALL = {
    "min_size": H,
    "max_size": W,
    "box_score_thresh": 0.0,  # random weights: keep every detection so that boxes exist
    "box_detections_per_img": 8,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 100,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "box_batch_size_per_image": 64,
}
THINGS = set(CITYSCAPES.thing_train_ids)


def _image(seed: int, h: int = H, w: int = W) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def _condition(model: PanopticASP) -> None:
    """Seeded, well-conditioned weights: a small last BN gain (0.1) in every bottleneck (residual
    branches start near identity) and calibrate the frozen statistics on an image. Random frozen
    statistics (mean 0, var 1) give an unnormalised ResNet whose outputs amplify float rounding
    noise far beyond 1e-4, which would make the ONNX comparison meaningless."""
    body = model.detector.backbone.body
    for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
        for block in layer:
            nn.init.constant_(block.bn3.weight, 0.1)
    calibrate_frozen_bn(model, [_image(100)])


@pytest.fixture(scope="module")
def model() -> PanopticASP:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = build_panoptic_asp(**SMALL)
    _condition(m)
    return m.eval()


@pytest.fixture(scope="module")
def train_step(model: PanopticASP) -> dict:
    """One training step on two images of different sizes (the second is resized x2)."""
    torch.manual_seed(1)
    bn = {n: m for n, m in model.named_modules() if isinstance(m, AffineFrozenBatchNorm2d)}
    stats_before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bn.items()}
    l4_bn = model.detector.backbone.body.layer4[0].bn3
    weight_before = l4_bn.weight.detach().clone()
    images = [_image(1), _image(2, H // 2, W // 2)]
    targets = two_object_targets([(H, W), (H // 2, W // 2)])
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.zero_grad()
    try:
        losses = model(images, targets)
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
        weight_after = l4_bn.weight.detach().clone()
        stats_after = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bn.items()}
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)  # later tests see the conditioned weights again
    return {
        "losses": losses,
        "grads": grads,
        "stats": (stats_before, stats_after),
        "bn_weight": (weight_before, weight_after),
    }


def test_training_losses_and_grads(train_step: dict) -> None:
    losses = train_step["losses"]
    assert set(losses) == ASP_LOSSES
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    # 19 classes, random init: the cross-entropy is near log(19), far from 0
    assert 1.0 < losses["loss_segm"].item() < 10.0
    grads = train_step["grads"]
    for name in (
        "semantic_head.classifier.weight",
        "semantic_head.level_heads.p5.branches.3.0.weight",
        "detector.roi_heads.mask_head.0.0.weight",
        "detector.rpn.head.conv.0.0.weight",
        "detector.backbone.body.layer4.0.conv1.weight",
    ):
        g = grads[name]
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())


def test_backbone_bn_frozen_stats_trainable_affine(model: PanopticASP, train_step: dict) -> None:
    body = model.detector.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    frozen = {n: m for n, m in body.named_modules() if isinstance(m, AffineFrozenBatchNorm2d)}
    assert len(frozen) == 53  # stem + 3 per bottleneck (16) + 4 downsample
    before, after = train_step["stats"]
    for name in before:
        assert torch.equal(before[name][0], after[name][0]), name
        assert torch.equal(before[name][1], after[name][1]), name
    # trainable_backbone_layers=3: layer2..4 train (affine included), stem and layer1 frozen
    for name, m in frozen.items():
        assert isinstance(m.weight, nn.Parameter) and isinstance(m.bias, nn.Parameter)
        trainable = name.split(".")[0] in ("layer2", "layer3", "layer4")
        assert m.weight.requires_grad is trainable and m.bias.requires_grad is trainable, name
    grads = train_step["grads"]
    assert grads["detector.backbone.body.layer1.0.bn1.weight"] is None
    w_before, w_after = train_step["bn_weight"]
    assert not torch.equal(w_before, w_after)  # the SGD step moved gamma


def test_affine_frozen_bn_equals_batchnorm_eval() -> None:
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        ref.running_mean.uniform_(-1, 1)
        ref.running_var.uniform_(0.5, 2)
        ref.weight.uniform_(0.5, 2)
        ref.bias.uniform_(-1, 1)
    frozen = AffineFrozenBatchNorm2d(6)
    frozen.load_state_dict(ref.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(frozen.train()(x), ref(x), rtol=1e-5, atol=1e-5)


def test_inference_outputs(model: PanopticASP) -> None:
    images = [_image(3), _image(4, 100, 180)]
    with torch.no_grad():
        out = model(images)
    check_inference_outputs(images, out, max_k=SMALL["box_detections_per_img"], things=THINGS)


def test_semantic_logits_switch(model: PanopticASP) -> None:
    model.return_semantic_logits = True
    try:
        with torch.no_grad():
            res = model([_image(5, 96, 160)])[0]
    finally:
        model.return_semantic_logits = False
    assert res["semantic_logits"].shape == (19, 96, 160)
    assert torch.equal(res["semantic_logits"].argmax(0), res["semantic"])


def test_asp_head_structure_with_hooks(model: PanopticASP) -> None:
    head = model.semantic_head
    calls: list[tuple[str, nn.Module, tuple, torch.Tensor]] = []
    handles = []
    for name, mod in head.named_modules():
        if name:

            def hook(m, args, out, name=name):
                calls.append((name, m, args, out))

            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model([_image(6)])
    finally:
        for h in handles:
            h.remove()
    by_name = {name: (m, args, out) for name, m, args, out in calls}
    strides = {"p5": 32, "p4": 16, "p3": 8, "p2": 4}
    for level, stride in strides.items():
        m, args, _ = by_name[f"level_heads.{level}"]
        assert args[0].shape[-2:] == (H // stride, W // stride), level
        convs = [
            (m2.kernel_size, m2.dilation)
            for n, m2, _, _ in calls
            if n.startswith(f"level_heads.{level}.") and isinstance(m2, nn.Conv2d)
        ]
        norms = [
            m2
            for n, m2, _, _ in calls
            if n.startswith(f"level_heads.{level}.") and isinstance(m2, nn.GroupNorm)
        ]
        assert len(norms) == len(convs)
        if stride >= 16:
            assert isinstance(m, AtrousSpatialPyramid)
            # 1x1, three 3x3 with dilation 6/12/18, then the 1x1 reduction of the concatenation
            asp = [((1, 1), (1, 1)), ((3, 3), (6, 6)), ((3, 3), (12, 12)), ((3, 3), (18, 18))]
            assert convs == [*asp, ((1, 1), (1, 1))]
            proj_in = by_name[f"level_heads.{level}.project"][1][0]
            assert proj_in.shape[1] == 4 * 128
        else:
            assert isinstance(m, TwoConvHead)
            assert convs == [((3, 3), (1, 1)), ((3, 3), (1, 1))]
        assert by_name[f"level_heads.{level}"][2].shape[1] == 128
    # refinement pyramid: adds run coarse -> fine, each on the previous sum
    adds = [(n, args, out) for n, m, args, out in calls if isinstance(m, UpsampleAdd)]
    fine_sizes = [(H // 16, W // 16), (H // 8, W // 8), (H // 4, W // 4)]
    assert [a[1][1].shape[-2:] for a in adds] == fine_sizes
    assert torch.equal(adds[0][1][0], by_name["level_heads.p5"][2])
    assert torch.equal(adds[0][1][1], by_name["level_heads.p4"][2])
    assert torch.equal(adds[1][1][0], adds[0][2]) and torch.equal(adds[2][1][0], adds[1][2])
    assert torch.equal(adds[2][1][1], by_name["level_heads.p2"][2])
    cls_in = by_name["classifier"][1][0]
    assert cls_in.shape[1:] == (512, H // 4, W // 4)


def test_unified_head_has_no_asp_and_no_refinement() -> None:
    torch.manual_seed(0)
    head = SemanticHead(256, 19, head="unified")
    assert head.refine is None
    assert not any(isinstance(m, (AtrousSpatialPyramid, RefinementPyramid)) for m in head.modules())
    called: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, a, o: called.append(m)) for m in head.modules()]
    feats = {
        k: torch.randn(1, 256, 32 // s, 64 // s) for k, s in zip("0123", (1, 2, 4, 8), strict=True)
    }
    out = head(feats)
    for h in handles:
        h.remove()
    assert out.shape == (1, 19, 32, 64)
    assert not any(isinstance(m, UpsampleAdd) for m in called)
    convs = [m for m in called if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 8 and all(c.dilation == (1, 1) for c in convs)
    assert sum(isinstance(m, ConvGNReLU) for m in called) == 8
    full = build_model("panoptic_asp", head="unified", min_size=H, max_size=W)
    assert isinstance(full.semantic_head.level_heads["p5"], TwoConvHead)
    assert full.semantic_head.refine is None


def test_eval_determinism(model: PanopticASP) -> None:
    image = _image(7)
    with torch.no_grad():
        a = model([image])[0]
        b = model([image])[0]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_build_errors_and_label_mapping(model: PanopticASP) -> None:
    with pytest.raises(ValueError, match="unknown head 'fpn'"):
        build_panoptic_asp(head="fpn")
    with pytest.raises(ValueError, match="num_things=5"):
        build_panoptic_asp(num_things=5)
    assert model.detection_to_train_ids(torch.arange(9)).tolist() == [
        255,
        *CITYSCAPES.thing_train_ids,
    ]
    assert model.train_to_detection_labels(torch.tensor([18, 11])).tolist() == [8, 1]
    with pytest.raises(ValueError, match=r"\[0, 5\] are not thing trainIds"):
        model.train_to_detection_labels(torch.tensor([0, 5, 12]))


def test_weights_files(model: PanopticASP, tmp_path: Path) -> None:
    import torchvision
    from safetensors.torch import save_file

    # a full checkpoint round-trips strictly
    full = tmp_path / "panoptic.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(full))
    again = build_panoptic_asp(weights=full, **SMALL)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    # an ImageNet ResNet-50 (nn.BatchNorm2d keys incl. num_batches_tracked) fills the body
    torch.manual_seed(3)
    resnet = torchvision.models.resnet50(weights=None).state_dict()
    resnet["bn1.running_var"].fill_(4.0)
    path = tmp_path / "resnet50.pt"
    torch.save(resnet, path)
    m = build_panoptic_asp(backbone_weights=path, **SMALL)
    body = m.detector.backbone.body
    assert torch.equal(body.layer3[2].conv2.weight, resnet["layer3.2.conv2.weight"])
    assert torch.equal(body.bn1.running_var, resnet["bn1.running_var"]) and body.bn1.eps == 1e-5
    # a torchvision Mask R-CNN (COCO layout, 91 classes): class-specific predictors are skipped
    coco = {k: v.clone() for k, v in model.detector.state_dict().items()}
    coco["backbone.body.layer2.0.conv1.weight"].normal_()
    for key, rows in (("box_predictor.cls_score", 91), ("box_predictor.bbox_pred", 364)):
        coco[f"roi_heads.{key}.weight"] = torch.zeros(rows, 1024)
        coco[f"roi_heads.{key}.bias"] = torch.zeros(rows)
    coco["roi_heads.mask_predictor.mask_fcn_logits.weight"] = torch.zeros(91, 256, 1, 1)
    torch.save(coco, tmp_path / "maskrcnn_coco.pt")
    m = build_panoptic_asp(backbone_weights=tmp_path / "maskrcnn_coco.pt", **SMALL)
    layer2 = m.detector.backbone.body.layer2[0]
    assert torch.equal(layer2.conv1.weight, coco["backbone.body.layer2.0.conv1.weight"])
    assert m.detector.roi_heads.box_predictor.cls_score.weight.shape == (9, 1024)
    assert layer2.bn1.eps == 0.0  # torchvision's COCO_V1 Mask R-CNN convention
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        build_panoptic_asp(backbone_weights=tmp_path / "nope.pt")


def test_semantic_loss_ignores_void_and_padding(model: PanopticASP) -> None:
    from torchvision.models.detection.image_list import ImageList

    # image resized to 16x32 inside a 32x64 padded batch; its target is 8x16 (resized x2)
    image_list = ImageList(torch.zeros(1, 3, 32, 64), [(16, 32)])
    logits = torch.zeros(1, 19, 8, 16)
    logits[:, 4] = 20.0  # class 4 everywhere inside the image
    semantic = torch.full((8, 16), 4)
    semantic[:2] = 255
    good = model._semantic_loss(logits, image_list, [{"semantic": semantic}])
    assert good.item() < 1e-6
    # logit rows >= 5 / cols >= 9 reach (bilinear x4) only padded pixels (rows >= 18, cols >= 34)
    logits[:, 7, 5:, :] = 50.0
    logits[:, 7, :, 9:] = 50.0
    assert model._semantic_loss(logits, image_list, [{"semantic": semantic}]).item() < 1e-6
    wrong = model._semantic_loss(logits, image_list, [{"semantic": torch.full((8, 16), 7)}])
    assert wrong.item() > 10.0


def test_paste_masks_geometry() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((28, 28)).astype(np.float32)
    # a 28x28 box on integer pixels: each mask cell centre is a pixel centre -> exact copy
    out = paste_masks(mask[None, None], np.array([[5.0, 7.0, 33.0, 35.0]]), 40, 45)
    assert out.shape == (1, 40, 45) and out.dtype == bool
    assert np.array_equal(out[0, 7:35, 5:33], mask >= 0.5)
    assert out[0].sum() == (mask >= 0.5).sum()
    # an all-ones mask fills exactly its box, clipped at the image border
    ones = np.ones((2, 28, 28), np.float32)
    out = paste_masks(ones, np.array([[10, 20, 30, 40], [50, 5, 70, 30]]), 32, 60)
    assert np.array_equal(np.argwhere(out[0]).min(0), [20, 10])
    assert np.array_equal(np.argwhere(out[0]).max(0), [31, 29])
    assert out[1].sum() == 25 * 10
    assert paste_masks(np.zeros((0, 1, 28, 28)), np.zeros((0, 4)), 8, 8).shape == (0, 8, 8)
    with pytest.raises(ValueError, match="do not match"):
        paste_masks(ones, np.zeros((3, 4)), 8, 8)


def test_paste_masks_agrees_with_torchvision() -> None:
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    yy, xx = np.mgrid[0:28, 0:28]
    blob = ((yy - 14) ** 2 + (xx - 12) ** 2 < 100).astype(np.float32) * 0.9 + 0.05
    masks = np.stack([blob, blob.T, blob[::-1]])[:, None]
    boxes = np.array([[10.3, 5.2, 50.7, 40.1], [0, 0, 28, 28], [60.5, 30, 90, 70]], np.float32)
    ours = paste_masks(masks, boxes, 60, 80)
    ref = paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), (60, 80))
    ref = ref[:, 0].numpy() >= 0.5
    for a, b in zip(ours, ref, strict=True):
        # torchvision rounds boxes to integers and sizes them w+1: up to ~1 px of boundary shift
        assert (a & b).sum() / (a | b).sum() > 0.85


def test_onnx_export_matches_pytorch(model: PanopticASP, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    export = PanopticExport(model, (H, W)).train()
    try:
        path = export_panoptic_onnx(export, tmp_path / "panoptic.onnx", input_hw=(H, W))
        assert model.training and model.detector.roi_heads.training  # modes restored
    finally:
        export.eval()
    assert [p.name for p in tmp_path.iterdir()] == ["panoptic.onnx"]  # no temp file left
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    dims = [
        [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output
    ]
    assert dims == [["K", 4], ["K"], ["K"], ["K", 1, 28, 28], [H, W]]
    image = torch.randint(
        0, 256, (1, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(9)
    )
    with torch.no_grad():
        ref = [t.numpy() for t in export(image)]
        eager = model([image[0].permute(2, 0, 1).float() / 255.0])[0]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    boxes, labels, scores, masks, sem = sess.run(None, {"image": image.numpy()})
    assert boxes.dtype == np.float32 and labels.dtype == np.int64 and sem.dtype == np.uint8
    assert len(boxes) > 0 and masks.shape == (len(boxes), 1, 28, 28) and sem.shape == (H, W)
    np.testing.assert_allclose(boxes, ref[0], atol=1e-4)
    np.testing.assert_array_equal(labels, ref[1])
    np.testing.assert_allclose(scores, ref[2], atol=1e-4)
    np.testing.assert_allclose(masks, ref[3], atol=1e-4)
    assert (sem == ref[4]).mean() >= 0.999
    assert set(labels.tolist()) <= THINGS
    # the export form is the eager model: same detections and ids without the resize step
    np.testing.assert_allclose(ref[0], eager["boxes"].numpy(), atol=1e-4)
    np.testing.assert_array_equal(ref[1], eager["labels"].numpy())
    assert (ref[4] == eager["semantic"].numpy()).mean() >= 0.999
    pasted = paste_masks(masks, boxes, H, W)
    agree = (pasted == (eager["masks"].numpy() >= 0.5)).mean()
    assert agree > 0.99


def test_export_nearest_semantic(model: PanopticASP) -> None:
    image = torch.randint(
        0, 256, (1, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    bilinear = PanopticExport(model, (H, W)).eval()
    nearest = PanopticExport(model, (H, W), semantic_upsample="nearest").eval()
    with torch.no_grad():
        a = bilinear(image)[4]
        b = nearest(image)[4]
    coarse = b[::4, ::4]
    assert torch.equal(b, coarse.repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert (a == b).float().mean() > 0.5  # same logits, different upsampling
    with pytest.raises(ValueError, match=r"expected uint8 image \(1, 128, 256, 3\)"):
        nearest(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
