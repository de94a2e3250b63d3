"""Losses: cross-entropy with ignore, OHEM (RelationNet eq. 3), SCL (eq. 4-6), multi-task sums."""

from __future__ import annotations

import math

import pytest
import torch

from seg_perception.losses import (
    ASP_LOSS_KEYS,
    SegmentationLoss,
    SpatialCorrelationLoss,
    asp_multitask_loss,
    cross_entropy,
    labels_at,
    ohem_cross_entropy,
    ohem_mask,
    scl_class_weights,
    spatial_correlation_loss,
)
from seg_perception.networks.relation import neighbour_offsets, scl_targets

torch.set_num_threads(1)


def _logits_with_true_probs(
    true_p: list[float], num_classes: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1, C, 1, P) whose softmax gives class 0 probability ``true_p[i]`` at pixel i."""
    probs = torch.zeros(1, num_classes, 1, len(true_p), dtype=torch.float64)
    for i, p in enumerate(true_p):
        probs[0, 0, 0, i] = p
        probs[0, 1:, 0, i] = (1.0 - p) / (num_classes - 1)
    target = torch.zeros(1, 1, len(true_p), dtype=torch.long)
    return probs.log().float(), target


# ------------------------------------------------------------------------------------ OHEM
def test_ohem_keeps_only_pixels_below_threshold() -> None:
    true_p = [0.9, 0.5, 0.59, 0.61, 0.2]
    logits, target = _logits_with_true_probs(true_p)
    target[0, 0, 4] = 255  # a low-probability pixel with the ignore label is never kept
    keep = ohem_mask(logits.softmax(1), target, threshold=0.6)
    assert keep[0, 0].tolist() == [False, True, True, False, False]
    loss = ohem_cross_entropy(logits, target, threshold=0.6)
    expected = (-math.log(0.5) - math.log(0.59)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ohem_gradient_only_from_kept_pixels() -> None:
    logits, target = _logits_with_true_probs([0.9, 0.3, 0.95, 0.1])
    logits.requires_grad_(True)
    ohem_cross_entropy(logits, target, threshold=0.6).backward()
    grad_per_pixel = logits.grad.abs().sum(1)[0, 0]
    assert grad_per_pixel[0] == 0 and grad_per_pixel[2] == 0
    assert grad_per_pixel[1] > 0 and grad_per_pixel[3] > 0


def test_ohem_all_confident_gives_zero_connected_loss() -> None:
    logits, target = _logits_with_true_probs([0.95, 0.99])
    logits.requires_grad_(True)
    loss = ohem_cross_entropy(logits, target, threshold=0.6)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert torch.count_nonzero(logits.grad) == 0


def test_ohem_min_kept_adds_the_hardest_pixels() -> None:
    logits, target = _logits_with_true_probs([0.9, 0.7, 0.95, 0.8])
    keep = ohem_mask(logits.softmax(1), target, threshold=0.6, min_kept=2)
    assert keep[0, 0].tolist() == [False, True, False, True]


def test_ohem_threshold_one_equals_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, 6, generator=g)
    target = torch.randint(0, 5, (2, 4, 6), generator=g)
    target[0, 0, :3] = 255
    a = ohem_cross_entropy(logits, target, threshold=1.0)
    b = cross_entropy(logits, target)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_cross_entropy_all_ignored_is_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="differ"):
        ohem_cross_entropy(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


# ------------------------------------------------------------------------------------ SCL
LABELS = torch.tensor([[[0, 0, 0], [0, 0, 1]]])  # (1, 2, 3)


def _hand_counts(labels: torch.Tensor) -> tuple[int, int]:
    """Positive / negative pairs over the 3x3 neighbourhood (centre included), by loops."""
    _, h, w = labels.shape
    pos = neg = 0
    for i in range(h):
        for j in range(w):
            for dy, dx in neighbour_offsets(3):
                y, x = i + dy, j + dx
                if 0 <= y < h and 0 <= x < w:
                    if labels[0, i, j] == labels[0, y, x]:
                        pos += 1
                    else:
                        neg += 1
    return pos, neg


def test_scl_alpha_beta_on_a_hand_made_label_map() -> None:
    pos, neg = _hand_counts(LABELS)
    assert (pos, neg) == (22, 6)  # also counted by hand, pixel by pixel: 4+5+3+4+5+1 / 0+1+1+0+1+3
    same, valid = scl_targets(LABELS, 3)
    alpha, beta = scl_class_weights(same, valid)
    assert alpha.item() == pytest.approx(pos / (pos + neg))  # weight of the negative pairs
    assert beta.item() == pytest.approx(neg / (pos + neg))  # weight of the positive pairs


def test_scl_targets_of_one_pixel() -> None:
    same, valid = scl_targets(LABELS, 3)
    # pixel (0, 1) (label 0): neighbours in row-major order (dy, dx) from (-1,-1) to (1,1);
    # the row above is outside the map, only the bottom-right neighbour (label 1) differs.
    assert valid[0, :, 0, 1].tolist() == [False, False, False, True, True, True, True, True, True]
    expected_same = [0, 0, 0, 1, 1, 1, 1, 1, 0]
    assert same[0, :, 0, 1].tolist() == expected_same


def test_scl_value_with_uninformative_predictions() -> None:
    pos, neg = _hand_counts(LABELS)
    alpha, beta = pos / (pos + neg), neg / (pos + neg)
    logits = torch.zeros(1, 9, 2, 3)  # P = 0.5 everywhere
    loss = spatial_correlation_loss(logits, LABELS)
    expected = math.log(2) * (beta * pos + alpha * neg) / (pos + neg)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_scl_rewards_correct_similarity_and_ignores_void() -> None:
    same, _ = scl_targets(LABELS, 3)
    good = (same * 2 - 1) * 20.0  # confident and right
    assert spatial_correlation_loss(good, LABELS).item() < 1e-6
    assert spatial_correlation_loss(-good, LABELS).item() > 5.0
    void = torch.full_like(LABELS, 255)
    assert spatial_correlation_loss(-good, void).item() == 0.0


def test_scl_module_trains_subnet_and_features() -> None:
    torch.manual_seed(0)
    scl = SpatialCorrelationLoss(8, hidden=4)
    feats = torch.randn(2, 8, 3, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 12, 16))
    loss = scl(feats, labels)
    loss.backward()
    assert torch.isfinite(loss) and feats.grad.abs().sum() > 0
    assert all(p.grad is not None for p in scl.parameters())


def test_labels_at_takes_the_stride_aligned_pixels() -> None:
    labels = torch.arange(64).view(1, 8, 8)
    assert torch.equal(labels_at(labels, (2, 2)), labels[:, ::4, ::4])


# ------------------------------------------------------------------------------------ sums
def test_segmentation_loss_deep_supervision_and_stage_switch() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 4, (1, 8, 8))
    out = {
        "out": torch.randn(1, 4, 8, 8),
        "aux": [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)],
    }
    crit = SegmentationLoss(aux_weight=0.5, scl=SpatialCorrelationLoss(6, hidden=4), scl_weight=0.1)
    terms = crit(out, target, torch.randn(1, 6, 2, 2))
    assert set(terms) == {"loss_main", "loss_aux1", "loss_aux2", "loss_scl", "loss"}
    assert terms["loss_aux1"].item() == pytest.approx(
        0.5 * cross_entropy(out["aux"][0], target).item(), rel=1e-5
    )
    total = sum(v.item() for k, v in terms.items() if k != "loss")
    assert terms["loss"].item() == pytest.approx(total, rel=1e-6)
    crit.set_stage(ohem=True, scl=False)  # alternating training, stage 2
    terms2 = crit(out, target)
    assert "loss_scl" not in terms2
    assert terms2["loss_main"].item() == pytest.approx(
        ohem_cross_entropy(out["out"], target).item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="SCL"):
        SegmentationLoss().set_stage(ohem=False, scl=True)


def test_asp_multitask_sum_groups_the_terms() -> None:
    values = dict(zip(ASP_LOSS_KEYS, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], strict=True))
    losses = {k: torch.tensor(v) for k, v in values.items()}
    total, groups = asp_multitask_loss(losses)
    assert total.item() == pytest.approx(21.0)
    assert groups["box"].item() == values["loss_box_reg"] + values["loss_rpn_box_reg"]
    assert groups["cls"].item() == values["loss_classifier"] + values["loss_objectness"]
    weighted, _ = asp_multitask_loss(losses, {"segm": 0.0})
    assert weighted.item() == pytest.approx(21.0 - values["loss_segm"])
    with pytest.raises(KeyError, match="loss_segm"):
        asp_multitask_loss({k: v for k, v in losses.items() if k != "loss_segm"})


@pytest.mark.parametrize("ohem", [True, False], ids=["ohem", "cross_entropy"])
def test_losses_through_guided_logits_equal_the_sampled_logits(ohem: bool) -> None:
    from seg_perception.networks.gum import guided_logits, guided_upsample

    g = torch.Generator().manual_seed(1)
    low = (torch.randn(2, 6, 5, 7, generator=g) * 2).requires_grad_(True)
    off = (torch.randn(2, 2, 20, 28, generator=g) * 0.5).requires_grad_(True)
    target = torch.randint(0, 6, (2, 20, 28), generator=g)
    target[0, :4] = 255
    loss_fn = ohem_cross_entropy if ohem else cross_entropy
    expected = loss_fn(guided_upsample(low, off, size=(20, 28)), target)
    expected.backward()
    grads = (low.grad.clone(), off.grad.clone())
    low.grad = off.grad = None
    got = loss_fn(guided_logits(low, off, size=(20, 28)), target)
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(low.grad, grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(off.grad, grads[1], rtol=1e-5, atol=1e-6)
    confident = guided_logits(
        torch.full((1, 3, 2, 2), 0.0).index_fill(1, torch.tensor([0]), 9.0),
        torch.zeros(1, 2, 4, 4),
        size=(4, 4),
    )
    assert ohem_cross_entropy(confident, torch.zeros(1, 4, 4, dtype=torch.long)).item() == 0.0
