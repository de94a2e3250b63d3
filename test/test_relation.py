"""RelationNet blocks: correlation features, SCL targets, similarity subnet, relation module,
deformable convs and multi-step testing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from seg_perception.networks.relation import (
    DeformConv2d,
    DeformConvBlock,
    MultiStepTest,
    RelationModule,
    SimilaritySubnet,
    correlation_features,
    make_stage_deformable,
    neighbour_offsets,
    scl_targets,
    upsample_stride_aligned,
)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _hand_map() -> torch.Tensor:
    """(1, 2, 4, 4): channel c, row i, col j holds 100*c + 10*i + j + 1 (never 0)."""
    x = torch.zeros(1, 2, 4, 4)
    for c in range(2):
        for i in range(4):
            for j in range(4):
                x[0, c, i, j] = 100 * c + 10 * i + j + 1
    return x


# --------------------------------------------------------------------------- correlation features
def test_neighbour_offsets_order_and_validation() -> None:
    assert neighbour_offsets(3) == [
        (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)
    ]  # fmt: skip
    assert len(neighbour_offsets(5)) == 25
    for bad in (0, 2, 4):
        with pytest.raises(ValueError, match="odd"):
            neighbour_offsets(bad)


def test_correlation_features_fig3_by_hand() -> None:
    x = _hand_map()
    out = correlation_features(x, neighbourhood=3)
    assert out.shape == (1, 9, 4, 4, 4)
    # A few literal values of Fig. 3 (centre 4x4 map, zero-padded to 6x6).
    k_up_left, k_centre, k_down_right = 0, 4, 8
    assert out[0, k_up_left, 2:, 1, 1].tolist() == [1.0, 101.0]  # (1,1) sees (0,0)
    assert out[0, k_up_left, 2:, 0, 0].tolist() == [0.0, 0.0]  # corner: padding
    assert out[0, k_down_right, 2:, 3, 3].tolist() == [0.0, 0.0]  # bottom-right: padding
    assert out[0, k_down_right, 2:, 2, 3].tolist() == [0.0, 0.0]  # right border
    assert out[0, k_down_right, 2:, 2, 2].tolist() == [34.0, 134.0]  # (2,2) sees (3,3)
    assert out[0, 1, 2:, 0, 2].tolist() == [0.0, 0.0]  # top border, offset (-1, 0)
    assert out[0, 7, 2:, 2, 0].tolist() == [31.0, 131.0]  # (2,0) sees (3,0)
    assert torch.equal(out[0, k_centre, :2], out[0, k_centre, 2:])
    # Every position and neighbour, by direct indexing.
    for k, (dy, dx) in enumerate(neighbour_offsets(3)):
        for i in range(4):
            for j in range(4):
                assert torch.equal(out[0, k, :2, i, j], x[0, :, i, j])
                inside = 0 <= i + dy < 4 and 0 <= j + dx < 4
                expected = x[0, :, i + dy, j + dx] if inside else torch.zeros(2)
                assert torch.equal(out[0, k, 2:, i, j], expected), (k, i, j)


# --------------------------------------------------------------------------- SCL targets
def test_scl_targets_by_hand() -> None:
    labels = torch.tensor([[[0, 0, 1], [0, 255, 1], [2, 2, 1]]])
    same, valid = scl_targets(labels, neighbourhood=3, ignore_index=255)
    assert same.shape == valid.shape == (1, 9, 3, 3)
    assert same.dtype == torch.float32 and valid.dtype == torch.bool
    # (0,0)=0: right neighbour 0 -> same; down-right is ignore -> invalid; up is outside.
    assert same[0, 5, 0, 0] == 1 and valid[0, 5, 0, 0]
    assert not valid[0, 8, 0, 0] and same[0, 8, 0, 0] == 0
    assert not valid[0, 1, 0, 0]
    # (0,1)=0 vs right (0,2)=1 -> different but valid.
    assert valid[0, 5, 0, 1] and same[0, 5, 0, 1] == 0
    # The ignore pixel is invalid against everything.
    assert not valid[0, :, 1, 1].any()
    # (2,2)=1 vs up (1,2)=1 -> same; vs left (2,1)=2 -> different.
    assert same[0, 1, 2, 2] == 1 and same[0, 3, 2, 2] == 0 and valid[0, 3, 2, 2]
    # Centre is always "same" where labelled.
    assert torch.equal(same[0, 4].bool(), labels[0] != 255)


def test_scl_targets_symmetric() -> None:
    labels = torch.randint(0, 3, (2, 6, 7))
    labels[0, 2, 3] = 255
    same, valid = scl_targets(labels)
    offsets = neighbour_offsets(3)
    for k, (dy, dx) in enumerate(offsets):
        k_back = offsets.index((-dy, -dx))
        for i in range(6):
            for j in range(7):
                if 0 <= i + dy < 6 and 0 <= j + dx < 7:
                    assert same[:, k, i, j].tolist() == same[:, k_back, i + dy, j + dx].tolist()
                    assert valid[:, k, i, j].tolist() == valid[:, k_back, i + dy, j + dx].tolist()
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        scl_targets(labels[0])


# --------------------------------------------------------------------------- similarity subnet
def test_similarity_subnet_scores_each_pair() -> None:
    subnet = SimilaritySubnet(4, hidden=8).eval()
    x = torch.randn(2, 4, 5, 6)
    logits = subnet(x)
    assert logits.shape == (2, 9, 5, 6)
    # Neighbour k of pixel (i, j) is the shared classifier applied to [x(i,j), x(i+dy,j+dx)].
    for k, i, j in [(0, 2, 3), (8, 1, 1), (4, 0, 0), (2, 4, 5)]:
        dy, dx = neighbour_offsets(3)[k]
        inside = 0 <= i + dy < 5 and 0 <= j + dx < 6
        nb = x[:, :, i + dy, j + dx] if inside else torch.zeros(2, 4)
        pair = torch.cat((x[:, :, i, j], nb), dim=1)[:, :, None, None]
        expected = subnet.classifier(pair)[:, 0, 0, 0]
        torch.testing.assert_close(logits[:, k, i, j], expected)
    subnet.train()
    same, valid = scl_targets(torch.randint(0, 2, (2, 5, 6)))
    loss = F.binary_cross_entropy_with_logits(subnet(x)[valid], same[valid])
    loss.backward()
    grads = [p.grad for p in subnet.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------- relation module
def test_relation_module_spans_row_then_whole_map() -> None:
    module = RelationModule(3, 4).double().eval()
    assert module.out_channels == 8
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    x2 = x.clone()
    x2[0, :, 2, 3] += 1.0
    row_outputs: list[torch.Tensor] = []
    module.row_gru.register_forward_hook(lambda _m, _i, out: row_outputs.append(out[0]))
    y, y2 = module(x), module(x2)
    assert y.shape == (1, 8, 6, 7)
    # After the left-right pass only row 2 has changed, and all of it.
    rows_a = row_outputs[0].reshape(6, 7, 8)
    rows_b = row_outputs[1].reshape(6, 7, 8)
    changed_rows = (rows_a - rows_b).abs().amax(dim=(1, 2))
    assert (changed_rows[2] > 0) and (changed_rows[torch.arange(6) != 2] == 0).all()
    assert ((rows_a[2] - rows_b[2]).abs().amax(dim=1) > 0).all()
    # After the up-down pass every position of the map has changed.
    diff = (y - y2).abs().amax(dim=1)[0]
    assert (diff > 0).all(), diff
    with pytest.raises(ValueError):
        RelationModule(0, 4)


# --------------------------------------------------------------------------- deformable convs
@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), (1, 2)])
def test_deform_conv_starts_as_plain_conv(stride: int, dilation: int) -> None:
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=dilation, dilation=dilation, bias=True)
    deform = DeformConv2d.from_conv(conv)
    assert torch.count_nonzero(deform.offset.weight) == 0
    x = torch.randn(2, 4, 9, 10)
    torch.testing.assert_close(deform(x), conv(x), atol=1e-5, rtol=1e-5)
    deform(x).square().sum().backward()
    assert deform.offset.weight.grad is not None
    assert deform.offset.weight.grad.abs().sum() > 0  # offsets can learn


def test_deform_block_and_stage_swap() -> None:
    block = DeformConvBlock(3, 5, stride=2)
    assert block(torch.randn(2, 3, 8, 8)).shape == (2, 5, 4, 4)
    with pytest.raises(ValueError, match="odd"):
        DeformConv2d(3, 3, 2)
    stage = models.resnet18(weights=None).layer4.eval()
    x = torch.randn(1, 256, 8, 8)
    before = stage(x)
    make_stage_deformable(stage)
    assert all(isinstance(b.conv2, DeformConv2d) for b in stage)
    torch.testing.assert_close(stage(x), before, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- multi-step testing
class _Subsampler(nn.Module):
    """A fixed stride-s 'network': sample u of the output is input pixel s*u."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.output_stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.output_stride, :: self.output_stride]


@pytest.mark.parametrize(("stride", "size"), [(2, (8, 10)), (2, (7, 9)), (4, (16, 12))])
def test_multistep_reconstructs_full_resolution(stride: int, size: tuple[int, int]) -> None:
    image = torch.randn(2, 3, *size)
    tester = MultiStepTest(_Subsampler(stride), steps=stride)
    assert torch.equal(tester(image), image)
    # Plain upsampling of a single pass does not reconstruct it (the test can fail).
    single = upsample_stride_aligned(_Subsampler(stride)(image), stride, size)
    assert not torch.equal(single, image)


def test_multistep_partial_steps_exact_on_dense_grid() -> None:
    image = torch.randn(1, 2, 16, 16)
    out = MultiStepTest(_Subsampler(4), steps=2)(image)  # 4 shifted runs -> stride-2 samples
    assert out.shape == image.shape
    assert torch.equal(out[..., ::2, ::2], image[..., ::2, ::2])
    assert not torch.equal(out, image)
    ids, conf = MultiStepTest(_Subsampler(4), steps=2).forward_ids(image)
    assert ids.dtype == torch.uint8 and ids.shape == (1, 16, 16)
    assert torch.equal(ids.long(), out.argmax(1))
    assert ((conf > 0.5) & (conf <= 1)).all()


def test_multistep_validation() -> None:
    with pytest.raises(ValueError, match="divide"):
        MultiStepTest(_Subsampler(4), steps=3)
    with pytest.raises(ValueError, match="stride"):
        MultiStepTest(nn.Identity(), steps=2)
    with pytest.raises(ValueError, match="expected"):
        MultiStepTest(nn.Identity(), steps=2, stride=2)(torch.randn(1, 1, 4, 4))


def test_upsample_stride_aligned_is_linear_in_pixel_coordinate() -> None:
    ramp = torch.arange(5, dtype=torch.float64).reshape(1, 1, 1, 5).expand(1, 1, 3, 5)
    up = upsample_stride_aligned(ramp, 4, (12, 20))
    expected = torch.clamp(torch.arange(20, dtype=torch.float64) / 4, max=4.0)
    torch.testing.assert_close(up[0, 0, 5], expected)
    assert up.shape == (1, 1, 12, 20)
