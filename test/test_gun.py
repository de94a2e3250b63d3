"""GUN, its DRN-D-22 trunk and the Guided Upsampling Module (tiny CPU inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg_perception.networks import build_model
from seg_perception.networks.drn import build_drn_d22
from seg_perception.networks.gum import guided_ids
from seg_perception.networks.gun import (
    DECODERS,
    ENCODERS,
    FUSIONS,
    GUIDANCES,
    GUN,
    SAMPLINGS,
    build_gun,
    guided_upsample,
)

H, W = 64, 128


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _randomise_offset_head(model: GUN, std: float = 0.3) -> None:
    """The offset head starts at zero (plain upsampling); give it weights so offsets vary."""
    assert model.guidance is not None
    with torch.no_grad():
        model.guidance.head.weight.normal_(0.0, std)


CONFIGS = (
    [{"encoder": e} for e in ENCODERS]
    + [{"fusion": f} for f in FUSIONS if f != "postproc_sum"]
    + [{"decoder": "bilinear"}]
    + [{"guidance": g} for g in GUIDANCES if g != "fusion"]
    + [{"sampling": "bilinear"}]
)


@pytest.mark.parametrize("switches", CONFIGS, ids=lambda s: "-".join(s.values()))
def test_switch_shapes_gradients_determinism(switches: dict[str, str]) -> None:
    model = build_gun(num_classes=7, **switches)
    x = torch.randn(2, 3, H, W)
    target = torch.randint(0, 7, (2, H, W))
    logits = model(x)
    assert logits.shape == (2, 7, H, W)
    F.cross_entropy(logits, target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert model.classifier.weight.grad.abs().sum() > 0
    if model.guidance is not None:
        # The zero-initialised offset head must still receive a learning signal (for nearest
        # sampling through the straight-through bilinear gradient).
        assert model.guidance.head.weight.grad.abs().sum() > 0
    model.eval()
    if model.guidance is not None:
        _randomise_offset_head(model)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)


def test_invalid_switches_list_valid_values() -> None:
    for key, valid in [
        ("encoder", ENCODERS),
        ("fusion", FUSIONS),
        ("decoder", DECODERS),
        ("guidance", GUIDANCES),
        ("sampling", SAMPLINGS),
    ]:
        with pytest.raises(ValueError, match=key) as err:
            build_gun(**{key: "nope"})
        assert all(v in str(err.value) for v in valid)


def test_build_model_registry_builds_default_gun() -> None:
    model = build_model("gun", num_classes=5)
    assert isinstance(model, GUN)
    assert (model.encoder, model.decoder, model.guidance_kind, model.sampling) == (
        "enc24shared",
        "gum",
        "fusion",
        "nearest",
    )
    assert model.classifier.out_channels == 5


def test_drn_d22_layout() -> None:
    drn = build_drn_d22().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        taps = drn.forward_taps(x, stop_after="layer8", taps=("layer2", "layer4", "layer6"))
    assert taps["layer2"].shape == (1, 32, 32, 48)
    assert taps["layer4"].shape == (1, 128, 8, 12)  # medium-branch output: 128 ch, stride 8
    assert taps["layer6"].shape == (1, 512, 8, 12)
    assert taps["layer8"].shape == (1, 512, 8, 12)
    # Dilated stages keep the resolution: layer5 blocks dilation 2, layer6 dilation 4.
    assert drn.layer5[0].conv1.dilation == (2, 2) and drn.layer6[1].conv2.dilation == (4, 4)
    assert drn.layer7[0].dilation == (2, 2) and drn.layer8[0].dilation == (1, 1)
    assert not hasattr(drn.layer7, "downsample")  # degridding tail has no residual
    with pytest.raises(ValueError, match="layer9"):
        drn.forward_features(x, stop_after="layer9")
    short = build_drn_d22(last_stage="layer4")
    assert not hasattr(short, "layer5") and short.out_channels == 128


def test_enc24shared_shares_the_trunk() -> None:
    shared, separate = build_gun(encoder="enc24shared"), build_gun(encoder="enc24")
    trunk_ids = {id(p) for p in shared.trunk.parameters()}
    medium = list(shared.medium_encoder().named_parameters())
    assert medium and all(id(p) in trunk_ids for _, p in medium)
    assert shared.medium_encoder().layer4[1].conv2.weight is shared.trunk.layer4[1].conv2.weight
    sep_trunk = {id(p) for p in separate.trunk.parameters()}
    assert not any(id(p) in sep_trunk for p in separate.medium_encoder().parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    n_front = sum(p.numel() for p in separate.medium_encoder().parameters())
    assert n_separate - n_shared == n_front > 0


@pytest.mark.parametrize(("h", "w", "out"), [(4, 6, (16, 24)), (8, 16, (64, 128))])
def test_gum_zero_offsets_equals_interpolate(h: int, w: int, out: tuple[int, int]) -> None:
    u = torch.randn(2, 3, h, w)
    zero = torch.zeros(2, 2, *out)
    near = guided_upsample(u, zero, size=out, mode="nearest")
    assert torch.equal(near, F.interpolate(u, size=out, mode="nearest"))
    bil = guided_upsample(u, zero, size=out, mode="bilinear")
    ref = F.interpolate(u, size=out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(bil, ref, rtol=0, atol=2e-6)  # coordinate rounding only


def test_gum_nearest_exact_for_non_integer_factor() -> None:
    u = torch.randn(1, 2, 5, 7)
    out = guided_upsample(u, torch.zeros(1, 2, 16, 24), size=(16, 24), mode="nearest")
    assert torch.equal(out, F.interpolate(u, size=(16, 24), mode="nearest-exact"))


@pytest.mark.parametrize("mode", SAMPLINGS)
def test_gum_offsets_are_in_low_res_pixels(mode: str) -> None:
    # Upsampling factor 4; an offset of k low-res pixels equals sampling the map shifted by k.
    # The first/last 4 output columns/rows are skipped where only one side clamps at the border.
    u = torch.randn(1, 3, 6, 8)
    zero = torch.zeros(1, 2, 24, 32)
    off = zero.clone()
    off[:, 0] = 1.0  # p = +1: one low-res pixel to the right
    shifted = torch.cat([u[..., 1:], u[..., -1:]], dim=-1)
    got = guided_upsample(u, off, size=(24, 32), mode=mode)
    expected = guided_upsample(shifted, zero, size=(24, 32), mode=mode)
    torch.testing.assert_close(got[..., 4:], expected[..., 4:], rtol=0, atol=2e-6)
    assert not torch.allclose(got, guided_upsample(u, zero, size=(24, 32), mode=mode))
    off = zero.clone()
    off[:, 1] = -2.0  # q = -2: two low-res rows up
    shifted = torch.cat([u[..., :1, :], u[..., :1, :], u[..., :-2, :]], dim=-2)
    got = guided_upsample(u, off, size=(24, 32), mode=mode)
    expected = guided_upsample(shifted, zero, size=(24, 32), mode=mode)
    torch.testing.assert_close(got[..., :-4, :], expected[..., :-4, :], rtol=0, atol=2e-6)


@pytest.mark.parametrize("mode", SAMPLINGS)
def test_gum_differentiable_wrt_offsets(mode: str) -> None:
    u = torch.randn(1, 4, 6, 8, requires_grad=True)
    off = (torch.randn(1, 2, 24, 32) * 0.7).requires_grad_(True)
    out = guided_upsample(u, off, size=(24, 32), mode=mode)
    with torch.no_grad():
        plain = guided_upsample(u, off, size=(24, 32), mode=mode)
    assert torch.equal(out, plain)  # straight-through does not change the forward values
    (out * torch.randn_like(out)).sum().backward()
    assert off.grad is not None and off.grad.abs().sum() > 0
    assert torch.isfinite(off.grad).all()
    assert u.grad is not None and u.grad.abs().sum() > 0


def test_gum_rejects_bad_offsets_and_mode() -> None:
    u = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(N, 2, 8, 8\)"):
        guided_upsample(u, torch.zeros(1, 2, 4, 4), size=(8, 8))
    with pytest.raises(ValueError, match="bicubic"):
        guided_upsample(u, torch.zeros(1, 2, 8, 8), size=(8, 8), mode="bicubic")


@pytest.mark.parametrize("switches", [{}, {"guidance": "high_res"}, {"sampling": "bilinear"}])
def test_forward_ids_matches_argmax(switches: dict[str, str]) -> None:
    model = build_gun(**switches).eval()
    _randomise_offset_head(model)
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        logits = model(x)
        offsets = model.forward_parts(x)[1]
        ids, conf = model.forward_ids(x)
    assert offsets is not None and offsets.abs().max() > 0.5  # the guidance really steers
    assert ids.dtype == torch.uint8 and ids.shape == (2, H, W)
    assert torch.equal(ids, logits.argmax(1).to(torch.uint8))  # 100 % of the pixels
    if switches.get("sampling") != "bilinear":  # bilinear: see test_guided_ids_bilinear_*
        torch.testing.assert_close(conf, logits.softmax(1).amax(1))
    assert ((conf > 0) & (conf <= 1)).all()


def _source_cells(offsets: torch.Tensor, in_hw: tuple[int, int]) -> list[torch.Tensor]:
    """Flat low-res indices ``(N, H, W)`` of the 2x2 cells eq. 4 blends for each output pixel,
    computed independently of gum: pixel-centre grid + offsets, clamped to the map."""
    h, w = in_hw
    out_h, out_w = offsets.shape[-2:]
    xs = (torch.arange(out_w, dtype=torch.float64) + 0.5) * w / out_w - 0.5
    ys = (torch.arange(out_h, dtype=torch.float64) + 0.5) * h / out_h - 0.5
    x = (xs.view(1, 1, -1) + offsets[:, 0].double()).clamp(0, w - 1)
    y = (ys.view(1, -1, 1) + offsets[:, 1].double()).clamp(0, h - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    return [yy * w + xx for yy, xx in ((y0, x0), (y0, x1), (y1, x0), (y1, x1))]


@pytest.mark.parametrize(
    "n, k, h, w, out, spread", [(2, 19, 8, 16, (64, 128), 1.5), (1, 5, 7, 9, (30, 41), 3.0)]
)
def test_guided_ids_bilinear_is_the_argmax_of_eq4(
    n: int, k: int, h: int, w: int, out: tuple[int, int], spread: float
) -> None:
    # Piecewise-constant class regions plus noise: large areas where the 2x2 source cells
    # agree, boundaries where they do not; offsets that also leave the map (border clamping).
    blocks = torch.randn(n, k, max(h // 3, 1), max(w // 3, 1)) * 4
    low = F.interpolate(blocks, size=(h, w), mode="nearest") + 0.5 * torch.randn(n, k, h, w)
    offsets = spread * torch.randn(n, 2, *out)
    ref = guided_upsample(low, offsets, size=out, mode="bilinear")
    ids, conf = guided_ids(low, offsets, size=out, mode="bilinear")
    assert ids.dtype == torch.uint8 and ids.shape == (n, *out) and conf.shape == (n, *out)
    assert torch.equal(ids, ref.argmax(1).to(torch.uint8))  # every pixel, both batch items
    # Confidence: the blend's max probability where the 2x2 cells disagree on the argmax, the
    # top-left cell's elsewhere.
    cells = _source_cells(offsets, (h, w))
    amax = low.argmax(1).flatten(1)
    cell_ids = [amax.gather(1, c.flatten(1)).view(n, *out) for c in cells]
    mixed = (
        (cell_ids[0] != cell_ids[1]) | (cell_ids[0] != cell_ids[2]) | (cell_ids[0] != cell_ids[3])
    )
    assert 0.02 < mixed.float().mean() < 0.9  # both kinds of pixel are exercised
    torch.testing.assert_close(conf[mixed], ref.softmax(1).amax(1)[mixed])
    cell_conf = low.softmax(1).amax(1).flatten(1).gather(1, cells[0].flatten(1)).view(n, *out)
    torch.testing.assert_close(conf[~mixed], cell_conf[~mixed])
    with pytest.raises(ValueError, match="bicubic"):
        guided_ids(low, offsets, size=out, mode="bicubic")


def test_forward_ids_bilinear_decoder() -> None:
    model = build_gun(decoder="bilinear").eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        logits, (ids, conf) = model(x), model.forward_ids(x)
    assert torch.equal(ids, logits.argmax(1).to(torch.uint8))
    assert ((conf > 0) & (conf <= 1)).all()


def test_enc24shared_keeps_running_statistics_per_branch():
    from seg_perception.networks.layers import BranchBatchNorm2d

    torch.manual_seed(0)
    net = build_gun(num_classes=5)
    norms = [m for m in net.modules() if isinstance(m, BranchBatchNorm2d)]
    assert norms and all(m.num_branches == 2 for m in norms)
    net.train()
    net(torch.rand(2, 3, 64, 128) * 4)
    first = norms[0]  # the stem sees the /4 input (branch 0) and the /2 input (branch 1)
    assert not torch.allclose(first.running_var, first.running_var_b1)
    net.eval()
    x = torch.rand(1, 3, 64, 128)
    before = net(x)
    for m in norms:
        m.running_mean_b1.add_(1.0)  # only the medium branch's statistics change...
    assert not torch.allclose(before, net(x))  # ...and the eval output depends on them
    # one set of affine weights shared by both branches; enc24 has separate BNs instead
    assert sum(isinstance(m, BranchBatchNorm2d) for m in build_gun(encoder="enc24").modules()) == 0


def test_gum_trains_under_cpu_bf16_autocast():
    torch.manual_seed(0)
    net = build_gun(num_classes=5).train()
    x = torch.rand(2, 3, 64, 128)
    target = torch.randint(0, 5, (2, 64, 128))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(net(x).float(), target)
    loss.backward()
    offset_grads = [p.grad for n, p in net.named_parameters() if "guidance" in n]
    assert torch.isfinite(loss) and any(g is not None and g.abs().sum() > 0 for g in offset_grads)


@pytest.mark.parametrize(
    ("channels_last", "low_hw", "offset_scale"),
    [
        (False, (6, 8), 0.7),
        (True, (6, 8), 0.7),
        (False, (6, 8), 4.0),  # many samples clipped at every border
        (False, (2, 2), 1.0),  # the smallest map with a bilinear cell
        (False, (1, 8), 1.0),  # one row: no cell, the full-size fallback
    ],
    ids=["nchw", "nhwc", "far-offsets", "2x2", "one-row"],
)
def test_guided_logits_read_the_sampled_log_probabilities(
    channels_last: bool, low_hw: tuple[int, int], offset_scale: float
) -> None:
    """Training reads log-probabilities through the unsampled logits: the values of the sampled
    logits' log-softmax (to float rounding: log_softmax's kernel differs with the map's size),
    and the same gradients to the logits and the offsets (the
    offsets' from a low-resolution table, checked against autograd through the full-size
    straight-through sampling, borders included)."""
    from seg_perception.networks.gum import guided_logits

    torch.manual_seed(0)
    u = torch.randn(2, 5, *low_hw) * 2
    if channels_last:
        u = u.contiguous(memory_format=torch.channels_last)
    u.requires_grad_(True)
    off = (torch.randn(2, 2, 24, 32) * offset_scale).requires_grad_(True)
    target = torch.randint(0, 5, (2, 24, 32))
    weights = torch.rand(2, 24, 32)
    full = guided_upsample(u, off, size=(24, 32), mode="nearest")
    expected = F.log_softmax(full, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    (expected * weights).sum().backward()
    grads = (u.grad.clone(), off.grad.clone())
    assert grads[1].abs().sum() > 0  # the offsets get a gradient to compare
    u.grad = off.grad = None
    guided = guided_logits(u, off, size=(24, 32))
    assert guided.shape == full.shape and torch.equal(guided.materialise(), full)
    got = guided.target_log_prob(target)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    (got * weights).sum().backward()
    torch.testing.assert_close(u.grad, grads[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(off.grad, grads[1], rtol=1e-5, atol=1e-5)


def test_gun_forward_train_is_the_forward_for_the_loss() -> None:
    from seg_perception.networks.gum import GuidedLogits

    net = build_gun(num_classes=5, width=0.5).train()
    x = torch.rand(1, 3, 64, 128)
    guided = net.forward_train(x)
    assert isinstance(guided, GuidedLogits)
    torch.testing.assert_close(guided.materialise(), net(x))  # train-mode BN: same batch
    bilinear = build_gun(num_classes=5, width=0.5, sampling="bilinear").train()
    assert isinstance(bilinear.forward_train(x), torch.Tensor)
