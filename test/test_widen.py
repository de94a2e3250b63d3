"""Widening a narrow net into a wider one (networks.widen, model.init_widen of the trainer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_recipe import tiny_recipe
from torch import nn

from seg_perception.config import ConfigError
from seg_perception.networks import build_model
from seg_perception.networks.widen import widen_into, widen_state_dict
from seg_perception.train.recipe import parse_recipe
from seg_perception.train.trainer import Trainer

torch.set_num_threads(1)


def _trained_looking(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, non-zero offset head: every tensor
    matters to the output, as in a trained net (a fresh net's BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for name in ("running_mean", "weight", "bias"):
                    t = getattr(m, name)
                    t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (name == "weight"))
                for name, t in m.named_buffers():
                    if name.startswith("running_var"):
                        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        head = model.guidance.head.weight  # zero-initialised: make the GUM steer
        head.copy_(torch.randn(head.shape, generator=g) * 0.05)
    return model


def _narrow_gun(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _trained_looking(build_model("gun", num_classes=5, width=0.25), seed)


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_widened_gun_computes_the_narrow_gun(train_mode: bool) -> None:
    narrow = _narrow_gun()
    torch.manual_seed(1)
    wide = build_model("gun", num_classes=5, width=0.5)
    widen_into(wide, narrow.state_dict(), source="narrow")
    n_narrow = sum(p.numel() for p in narrow.parameters())
    assert sum(p.numel() for p in wide.parameters()) > 2 * n_narrow
    x = torch.randn(2, 3, 64, 128, generator=torch.Generator().manual_seed(2))
    narrow.train(train_mode)
    wide.train(train_mode)
    with torch.no_grad():
        a, b = narrow(x), wide(x)
    assert a.abs().max() > 1.0  # a signal worth comparing
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    # the new channels carry signal (they are not dead): the trunk's output differs from zero
    with torch.no_grad():
        feats = wide.trunk(x[:, :, ::4, ::4])
    old = narrow.trunk.out_channels
    assert feats[:, old:].abs().amax() > 0


def test_widening_keeps_old_weights_and_zeroes_only_new_to_old() -> None:
    narrow = _narrow_gun()
    wide = build_model("gun", num_classes=5, width=0.5)
    state = widen_state_dict(wide, narrow.state_dict())
    key = "classifier.weight"
    n, w = narrow.state_dict()[key], state[key]
    assert torch.equal(w[:, : n.shape[1]], n)
    assert torch.count_nonzero(w[:, n.shape[1] :]) == 0  # the classifier reads old channels only
    conv = next(
        k for k, v in state.items() if v.ndim == 4 and v.shape != narrow.state_dict()[k].shape
    )
    n, w = narrow.state_dict()[conv], state[conv]
    assert torch.count_nonzero(w[: n.shape[0], n.shape[1] :]) == 0
    assert torch.count_nonzero(w[n.shape[0] :]) > 0  # new outputs keep the fresh initialisation


def test_widening_refuses_what_it_cannot_preserve() -> None:
    narrow = _narrow_gun()
    with pytest.raises(ValueError, match=r"tensor .* in the model: the file must be of a narrower"):
        widen_state_dict(build_model("gun", num_classes=5, width=0.125), narrow.state_dict())
    with pytest.raises(ValueError, match=r"narrow.pt does not hold the tensors of GUN"):
        widen_state_dict(
            build_model("gun", num_classes=5, width=0.5),
            {k: v for k, v in narrow.state_dict().items() if "classifier" not in k},
            source="narrow.pt",
        )
    depthwise = {"0.weight": torch.zeros(8, 1, 3, 3)}
    with pytest.raises(ValueError, match=r"'0.weight' .* is a grouped convolution"):
        widen_state_dict(nn.Sequential(nn.Conv2d(16, 16, 3, groups=16, bias=False)), depthwise)


def test_trainer_starts_a_wider_gun_from_a_narrow_file(tmp_path: Path) -> None:
    narrow = _narrow_gun()
    path = tmp_path / "narrow.safetensors"
    save_file({k: v.contiguous() for k, v in narrow.state_dict().items()}, str(path))
    doc = tiny_recipe(
        tmp_path / "run",
        model={
            "name": "gun",
            "switches": {"num_classes": 5, "width": 0.5},
            "init_weights": str(path),
            "init_widen": True,
        },
    )
    net = Trainer(parse_recipe(doc))._build_module().net.eval()
    narrow.eval()
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(net(x), narrow(x), atol=1e-4, rtol=1e-4)
    # without init_widen the narrow file does not fit: a shape error naming the file
    doc["model"]["init_widen"] = False
    with pytest.raises(ValueError, match=r"narrow.safetensors does not fit GUN"):
        Trainer(parse_recipe(doc))._build_module()
    del doc["model"]["init_weights"]
    doc["model"]["init_widen"] = True
    with pytest.raises(ConfigError, match=r"'model.init_widen' needs 'model.init_weights'"):
        parse_recipe(doc)
