"""Trainer: recipes, schedules, resume, atomic checkpoints, NaN stop, DDP, ASP losses, overfit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_recipe import tiny_recipe

from seg_perception.config import ConfigError
from seg_perception.train.checkpoint import (
    export_weights,
    find_latest_checkpoint,
    load_checkpoint,
    network_state_dict,
)
from seg_perception.train.recipe import load_recipe, parse_recipe
from seg_perception.train.schedules import learning_rate
from seg_perception.train.trainer import DivergenceError, Trainer, parameter_digest

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "config" / "train").glob("*.yaml"))


# ------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.stages and recipe.data.train


def test_paper_recipes_hold_the_papers_numbers() -> None:
    gun = load_recipe(ROOT / "config/train/gun_cityscapes.yaml")
    assert (gun.optim.lr, gun.schedule.policy, gun.schedule.step_size, gun.data.batch_size) == (
        1e-3,
        "step",
        100,
        8,
    )
    assert gun.augment.scale == (0.5, 2.0) and sum(s.length for s in gun.stages) >= 250
    rel = load_recipe(ROOT / "config/train/relationnet_cityscapes.yaml")
    assert [(s.dataset, s.scl, s.length) for s in rel.stages] == [
        ("fine", True, 60),
        ("coarse", False, 30),
        ("fine", True, 15),
    ]
    assert rel.loss.ohem and rel.loss.ohem_threshold == 0.6 and rel.loss.scl_weight == 0.1
    asp = load_recipe(ROOT / "config/train/asp_cityscapes.yaml")
    assert (asp.optim.lr, asp.schedule.policy, asp.stages[0].length, asp.data.batch_size) == (
        5e-3,
        "poly",
        32000,
        2,
    )


def test_unknown_key_and_bad_type_name_key_and_file(tmp_path: Path) -> None:
    import yaml

    doc = tiny_recipe(tmp_path)
    doc["optim"]["learning_rate"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'learning_rate'.*'optim'"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"'optim.lr' must be float"):
        parse_recipe(tiny_recipe(tmp_path, optim__lr="fast"))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.dataset"):
        parse_recipe(tiny_recipe(tmp_path, stages=[{"dataset": "coarse", "length": 1}]))
    r = load_recipe(_write(tmp_path, tiny_recipe(tmp_path)), ["optim.lr=0.5", "stages.0.length=3"])
    assert r.optim.lr == 0.5 and r.stages[0].length == 3


def _write(tmp_path: Path, doc: dict) -> Path:
    import yaml

    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_schedules_by_hand() -> None:
    assert learning_rate(0, 100, base_lr=0.01, policy="poly") == 0.01
    assert learning_rate(50, 100, base_lr=0.01, policy="poly", power=0.9) == pytest.approx(
        0.01 * 0.5**0.9
    )
    step = {"base_lr": 1e-3, "policy": "step", "step": 100, "gamma": 0.1}
    assert learning_rate(99, 300, **step) == 1e-3
    assert learning_rate(100, 300, **step) == pytest.approx(1e-4)
    assert learning_rate(250, 300, **step) == pytest.approx(1e-5)
    lin = {"base_lr": 5e-4, "policy": "linear", "hold": 35 / 60, "final_lr": 5e-6}
    assert learning_rate(34, 60, **lin) == 5e-4
    assert learning_rate(59, 60, **lin) == pytest.approx(5e-6)
    assert 5e-6 < learning_rate(47, 60, **lin) < 5e-4


# ------------------------------------------------------------------------------------ run mgmt
def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(find_latest_checkpoint(path))["model"]


def test_resume_continues_exactly(tmp_path: Path) -> None:
    straight = Trainer(parse_recipe(tiny_recipe(tmp_path / "a"))).run()
    recipe = parse_recipe(tiny_recipe(tmp_path / "b"))
    _run_until(Trainer(recipe), 5)  # interrupted right after its checkpoint at iteration 5
    resumed = Trainer(recipe, resume=tmp_path / "b").run()
    assert resumed.iterations == straight.iterations == 10
    assert [v for _, v in resumed.losses] == [v for it, v in straight.losses if it > 5]
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _StopError(Exception):
    pass


def _run_until(trainer: Trainer, iterations: int) -> None:
    """Run ``trainer`` and kill it (an exception, like Ctrl-C) right after ``iterations``."""
    original = trainer._checkpoint

    def checkpoint_then_stop(run, iteration, stage):  # type: ignore[no-untyped-def]
        original(run, iteration, stage)
        if iteration >= iterations:
            raise _StopError

    trainer._checkpoint = checkpoint_then_stop  # type: ignore[method-assign]
    with pytest.raises(_StopError):
        trainer.run()


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch
) -> None:
    trainer = Trainer(
        parse_recipe(
            tiny_recipe(
                tmp_path, stages=[{"dataset": "train", "length": 5}], run__checkpoint_every=2
            )
        )
    )
    real_save = torch.save

    def crash_on_second(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "iter_00000004" in str(f) or ".iter_00000004" in str(f):
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        trainer.run()
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["iter_00000002.pt", "latest"]
    latest = find_latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "iter_00000002.pt"
    assert load_checkpoint(latest)["iteration"] == 2


def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    from seg_perception.train.modules import SemanticTrainModule

    real_forward = SemanticTrainModule.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        out = real_forward(self, *args, **kwargs)
        if calls["n"] == 4:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SemanticTrainModule, "forward", poisoned)
    recipe = parse_recipe(tiny_recipe(tmp_path, run__checkpoint_every=3))
    with pytest.raises(DivergenceError, match=r"iteration 3 .*iter_00000003\.pt"):
        Trainer(recipe).run()
    good = load_checkpoint(find_latest_checkpoint(tmp_path))
    assert good["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_export_weights_fp16_loads_into_the_network(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from seg_perception.networks import build_model

    Trainer(
        parse_recipe(tiny_recipe(tmp_path, stages=[{"dataset": "train", "length": 2, "scl": True}]))
    ).run()
    out = export_weights(tmp_path, tmp_path / "gun.safetensors")
    tensors = load_file(str(out))
    assert not any(k.startswith(("criterion", "net.")) for k in tensors)  # no SCL subnet, no prefix
    assert all(v.dtype == torch.float16 for v in tensors.values() if v.is_floating_point())
    net = build_model("gun", weights=str(out))
    ckpt = network_state_dict(_params(tmp_path))
    w = net.state_dict()["classifier.weight"]
    assert torch.allclose(w, ckpt["classifier.weight"], atol=1e-3, rtol=1e-3)
    for init in (find_latest_checkpoint(tmp_path), out):  # fine-tuning starts from either
        doc = tiny_recipe(tmp_path / "ft", model={"name": "gun", "init_weights": str(init)})
        start = Trainer(parse_recipe(doc))._build_module().state_dict()
        assert torch.allclose(start["net.classifier.weight"], ckpt["classifier.weight"], atol=1e-3)


def test_grad_clip_and_frozen_bn(tmp_path: Path) -> None:
    doc = tiny_recipe(
        tmp_path,
        stages=[{"dataset": "train", "length": 1}],
        optim={
            "lr": 1.0,
            "grad_clip": 1e-3,
            "weight_decay": 0.0,
            "freeze_bn": True,
            "freeze_bn_prefix": "trunk",
            "amp": False,  # fp32 on every machine (auto follows the CPU)
        },
    )
    trainer = Trainer(parse_recipe(doc))
    torch.manual_seed(3)
    before = trainer._build_module().state_dict()
    trainer.run()
    after = _params(tmp_path)
    step = torch.sqrt(
        sum(
            ((after[k] - before[k]).double() ** 2).sum()
            for k in before
            if k.endswith(("weight", "bias")) and "criterion" not in k
        )
    )
    assert step <= 1e-3 * 1.0001  # lr * clipped norm, first SGD step
    frozen = [k for k in before if k.startswith("net.trunk") and k.endswith("running_mean")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    moved = [k for k in before if k.startswith("net.fusion") and k.endswith("running_mean")]
    assert any(not torch.equal(before[k], after[k]) for k in moved)


def test_cli_trains_and_exports(tmp_path: Path) -> None:
    from seg_perception.train.__main__ import main

    recipe = _write(tmp_path, tiny_recipe(tmp_path / "run"))
    rc = main(
        [
            "--config",
            str(recipe),
            "--set",
            "stages.0.length=2",
            "run.tensorboard=true",
            "data.val={kind: synth, seed: 9, frames: 2, height: 40, width: 72}",
            "--no-progress",
            "--export-weights",
            str(tmp_path / "w.safetensors"),
        ]
    )
    assert rc == 0 and (tmp_path / "w.safetensors").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "val/miou"} <= set(tags["scalars"])
    assert "val/sample_0" in tags["images"]
    with pytest.raises(SystemExit) as exit_info:  # refused while the arguments are read
        main(["--config", str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 2


def test_alternating_stages_switch_data_and_losses(tmp_path: Path) -> None:
    doc = tiny_recipe(
        tmp_path,
        stages=[
            {"name": "s1", "dataset": "fine", "length": 2, "scl": True},
            {"name": "s2", "dataset": "coarse", "length": 2, "scl": False, "ohem": False},
            {"name": "s3", "dataset": "fine", "length": 1, "scl": True, "lr": 0.001},
        ],
    )
    fine = doc["data"]["train"].pop("train")
    doc["data"]["train"] = {"fine": fine, "coarse": {**fine, "seed": 2}}
    doc["run"].update(log_every=1, checkpoint_every=0)
    doc["schedule"] = {"policy": "constant"}
    Trainer(parse_recipe(doc)).run()
    import json

    logs = [json.loads(x)["train"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert ["loss_scl" in t for t in logs] == [True, True, False, False, True]
    assert [t["lr"] for t in logs] == [0.01, 0.01, 0.01, 0.01, 0.001]


def test_channels_last_trains_the_same_numbers(tmp_path: Path) -> None:
    """run.channels_last (default on) changes the memory layout only: one step gives the same
    loss and the same updated weights as NCHW, up to float rounding (later steps drift apart
    as any rounding change does: GUM's nearest sampling flips pixels near a tie); exported
    weights are plain contiguous tensors."""
    stages = [{"name": "fine", "dataset": "train", "length": 1, "scl": True}]
    nhwc = Trainer(parse_recipe(tiny_recipe(tmp_path / "a", stages=stages))).run()
    nchw = Trainer(
        parse_recipe(tiny_recipe(tmp_path / "b", stages=stages, run__channels_last=False))
    ).run()
    assert nhwc.losses[0][1] == pytest.approx(nchw.losses[0][1], rel=1e-5)
    assert nhwc.last_checkpoint is not None and nchw.last_checkpoint is not None
    state = network_state_dict(load_checkpoint(nhwc.last_checkpoint)["model"])
    assert any(v.dim() == 4 and not v.is_contiguous() for v in state.values())  # NHWC kept
    ref = network_state_dict(load_checkpoint(nchw.last_checkpoint)["model"])
    for k, v in state.items():
        torch.testing.assert_close(v, ref[k], rtol=1e-3, atol=1e-4)
    out = export_weights(nhwc.last_checkpoint, tmp_path / "w.safetensors", dtype=torch.float32)
    assert out.is_file()


def test_bf16_autocast_step_on_cpu(tmp_path: Path) -> None:
    # ShelfNet: GUN's straight-through GUM backward mixes bf16 and fp32 under CPU autocast.
    doc = tiny_recipe(
        tmp_path, model={"name": "shelfnet"}, stages=[{"dataset": "train", "length": 1}]
    )
    doc["optim"]["amp"] = True
    result = Trainer(parse_recipe(doc)).run()
    assert result.iterations == 1 and torch.isfinite(torch.tensor(result.losses[0][1]))


def test_amp_setting_parses_auto_true_false(tmp_path: Path) -> None:
    assert parse_recipe(tiny_recipe(tmp_path)).optim.amp is False  # the tests pin fp32
    doc = tiny_recipe(tmp_path)
    del doc["optim"]["amp"]
    assert parse_recipe(doc).optim.amp == "auto"  # the default follows the machine
    for value in ("auto", True, False):
        assert parse_recipe(tiny_recipe(tmp_path, optim__amp=value)).optim.amp == value
    r = load_recipe(_write(tmp_path, tiny_recipe(tmp_path)), ["optim.amp=auto"])
    assert r.optim.amp == "auto"
    for bad in ("yes", "bf16", 1, None):
        with pytest.raises(ConfigError, match=r"'optim.amp' must be one of auto, true, false"):
            parse_recipe(tiny_recipe(tmp_path, optim__amp=bad))
    for path in RECIPES:  # the shipped recipes leave the choice to the machine, but the ASP
        # model's: under bf16 autocast its box-regression loss was NaN at once (fp32 pinned)
        want = False if path.name.startswith("asp_") else "auto"
        assert load_recipe(path).optim.amp == want, path.name


@pytest.mark.parametrize(
    ("features", "dtype"),
    [({"avx2", "fma"}, None), ({"avx2", "fma", "avx512f", "avx512_bf16"}, "bf16")],
    ids=["avx2_only", "avx512_bf16"],
)
def test_amp_auto_follows_the_cpu(tmp_path: Path, features, dtype) -> None:
    recipe = parse_recipe(tiny_recipe(tmp_path, optim__amp="auto"))
    trainer = Trainer(recipe, cpu_features=features)  # fake CPUs: the choice is pure
    assert trainer.amp.value == dtype
    with trainer._autocast():
        assert torch.is_autocast_enabled("cpu") == (dtype is not None)
        if dtype is not None:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_amp_true_without_bf16_hardware_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An AVX2-only CPU (faked): explicit ``amp: true`` runs bf16 as asked and warns once per
    run, naming the measured cost; the choice and its reason are logged at the start."""
    doc = tiny_recipe(
        tmp_path,
        model={"name": "shelfnet"},
        stages=[{"dataset": "train", "length": 2}],
        optim__amp=True,
    )
    doc["run"].update(checkpoint_every=0, log_every=1)
    with caplog.at_level("INFO", logger="seg_perception.train"):
        result = Trainer(parse_recipe(doc), cpu_features={"avx2", "fma"}).run()
    assert result.iterations == 2
    ours = [r for r in caplog.records if r.name == "seg_perception.train"]
    warnings = [r.getMessage() for r in ours if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "lacks AVX512-BF16" in warnings[0] and "5.3 s vs 1.2 s" in warnings[0]
    infos = [r.getMessage() for r in ours if r.getMessage().startswith("autocast:")]
    assert infos == ["autocast: bf16 (optim.amp is true)"]


# ------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_keep_identical_replicas(tmp_path: Path) -> None:
    recipe = _write(
        tmp_path,
        tiny_recipe(tmp_path / "run", stages=[{"dataset": "train", "length": 2, "scl": True}]),
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        str(torchrun),
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        "-m",
        "seg_perception.train",
        "--config",
        str(recipe),
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(find_latest_checkpoint(tmp_path / "run"))
    assert ckpt["iteration"] == 2
    digests = ckpt["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    from seg_perception.networks import build_model
    from seg_perception.train.modules import SemanticTrainModule

    module = SemanticTrainModule(build_model("gun"), use_scl=True)
    module.load_state_dict(ckpt["model"])
    assert parameter_digest(module) == digests[0]  # the saved weights are the replicas' weights


def test_average_weights_is_the_mean_of_files_of_one_network(tmp_path: Path, capsys) -> None:
    import json

    from safetensors.torch import load_file, save_file

    from seg_perception.cli import main as cli_main
    from seg_perception.networks import build_model
    from seg_perception.networks.export import META_MODEL, META_SWITCHES
    from seg_perception.train.checkpoint import CheckpointError, average_weights

    def write(name: str, seed: int, model: str = "gun", width: float = 0.25) -> Path:
        torch.manual_seed(seed)
        net = build_model(model, width=width)
        for m in net.modules():  # distinct BatchNorm statistics per file
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
        state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
        # the same switches written in another key order by the second file: one network
        switches = {"width": width, "sampling": "nearest"}
        if seed == 2:
            switches = dict(reversed(switches.items()))
        meta = {META_MODEL: model, META_SWITCHES: json.dumps(switches), "x": "1"}
        save_file(state, str(tmp_path / name), metadata=meta)
        return tmp_path / name

    a, b, c = write("a.safetensors", 1), write("b.safetensors", 2), write("c.safetensors", 3)
    out = average_weights([a, b, c], tmp_path / "soup.safetensors")
    soup, parts = load_file(str(out)), [load_file(str(p)) for p in (a, b, c)]
    key = "classifier.weight"
    mean = sum(p[key].float() for p in parts) / 3
    assert soup[key].dtype == torch.float16
    assert torch.allclose(soup[key].float(), mean, atol=1e-3)
    assert not torch.allclose(soup[key], parts[0][key])
    bn = next(k for k in soup if k.endswith("running_mean"))
    assert torch.allclose(soup[bn].float(), sum(p[bn].float() for p in parts) / 3, atol=1e-3)
    net = build_model("gun", weights=str(out))  # width from the averaged file's metadata
    assert torch.allclose(net.state_dict()[key], soup[key].float())
    # files of different networks: an error naming both, nothing written
    wide = write("wide.safetensors", 4, width=0.5)
    with pytest.raises(CheckpointError, match="wide.safetensors.*a.safetensors"):
        average_weights([a, wide], tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    # the command: OUT then the inputs; OUT may be an input
    assert cli_main(["train", "--average-weights", str(a), str(a), str(b), "--dtype", "fp32"]) == 0
    assert "average of 2 files" in capsys.readouterr().out
    both = load_file(str(a))
    assert both[key].dtype == torch.float32
    assert torch.allclose(both[key], (parts[0][key].float() + parts[1][key].float()) / 2, atol=1e-3)
    assert cli_main(["train", "--average-weights", str(tmp_path / "o.safetensors"), str(b)]) == 2
