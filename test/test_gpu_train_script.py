"""scripts/gpu_train.sh: its two training commands are valid recipes; the calibration arithmetic."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from seg_perception.commands.train import add_arguments
from seg_perception.train import runlog
from seg_perception.train.recipe import load_recipe
from seg_perception.train.runlog import (
    RunLog,
    logged_seconds_per_iteration,
    planned_iterations,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_train.sh"


def _script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(
        ["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=60, check=False
    )


def _dry_run_recipes(tmp_path: Path, **env: str) -> dict[str, tuple[argparse.Namespace, object]]:
    done = _script(tmp_path, DRY_RUN="1", **env)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, done.stdout
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = {}
    for line in lines:
        argv = shlex.split(line)
        assert argv[:3] == [sys.executable, "-m", "seg_perception.train"]
        args = parser.parse_args(argv[3:])
        recipe = load_recipe(ROOT / args.config, args.overrides)  # every --set key must exist
        out[Path(args.out).name] = (args, recipe)
    return out


def test_dry_run_commands_are_valid_recipes_for_the_shipped_files(tmp_path: Path) -> None:
    runs = _dry_run_recipes(tmp_path)
    assert set(runs) == {"gun", "asp"}
    gun_args, gun = runs["gun"]
    asp_args, asp = runs["asp"]
    assert gun_args.no_progress and asp_args.no_progress
    assert gun.model.name == "gun" and asp.model.name == "panoptic_asp"
    # whole 512x1024 frames per sample, the shipped networks' widths, the GPU
    assert gun.augment.crop == (512, 1024) and gun.data.batch_size == 16
    assert gun.model.switches["width"] == 0.75
    assert asp.model.switches["backbone_width"] == 0.625 and asp.data.batch_size == 8
    assert gun.run.device == asp.run.device == "cuda"
    for recipe in (gun, asp):
        assert (ROOT / recipe.model.init_weights).is_file(), recipe.model.init_weights
    # distinct frame streams, none of them the validation seed
    seeds = {gun.data.train["train"].seed, asp.data.train["train"].seed}
    assert not gun.data.train["train"].cache and not asp.data.train["train"].cache
    assert len(seeds) == 2 and gun.data.val.seed not in seeds


def test_environment_overrides_reach_the_recipes(tmp_path: Path) -> None:
    runs = _dry_run_recipes(
        tmp_path, GUN_LR="0.004", ASP_SEED="44", GUN_BATCH="8", DEVICE="cpu", GUN_INIT="x.st"
    )
    gun, asp = runs["gun"][1], runs["asp"][1]
    assert gun.optim.lr == pytest.approx(0.004) and gun.data.batch_size == 8
    assert asp.data.train["train"].seed == 44 and asp.run.seed == 44
    assert gun.run.device == asp.run.device == "cpu"
    assert gun.model.init_weights == "x.st"


def test_refuses_an_out_folder_that_holds_a_run(tmp_path: Path) -> None:
    (tmp_path / "out" / "gun").mkdir(parents=True)
    done = _script(tmp_path)
    assert done.returncode == 2
    assert "out/gun" in done.stderr and "new OUT" in done.stderr
    assert not (tmp_path / "out" / "cal_gun").exists()  # nothing started


def _log(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return path


def test_seconds_per_iteration_skips_start_up_and_validation_entries(tmp_path: Path) -> None:
    log = _log(
        tmp_path / "log.jsonl",
        [
            {"iteration": 10, "train": {"loss": 1.0, "seconds_per_iteration": 9.0}},
            {"iteration": 20, "train": {"loss": 1.0, "seconds_per_iteration": 0.30}},
            {"iteration": 20, "val": {"miou": 0.8}},
            {"iteration": 30, "train": {"loss": 1.0, "seconds_per_iteration": 0.50}},
        ],
    )
    assert logged_seconds_per_iteration(log) == pytest.approx(0.40)
    assert logged_seconds_per_iteration(log, first=0) == pytest.approx((9.0 + 0.3 + 0.5) / 3)
    # 85 % of 100 s at 0.4 s/iteration
    assert planned_iterations(log, 100.0) == 212
    assert planned_iterations(log, 100.0, fraction=1.0) == 250
    assert planned_iterations(log, -5.0) == 0
    with pytest.raises(ValueError, match="fraction"):
        planned_iterations(log, 100.0, fraction=0.0)


def test_seconds_per_iteration_names_the_file_when_it_cannot_tell(tmp_path: Path) -> None:
    short = _log(
        tmp_path / "short.jsonl",
        [{"iteration": 10, "train": {"loss": 1.0, "seconds_per_iteration": 0.3}}],
    )
    with pytest.raises(ValueError, match=r"short\.jsonl: no train entry .* >= 20"):
        logged_seconds_per_iteration(short)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"iteration": 20, "train": {}}\n{"iteration": 3', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not a JSON line"):
        logged_seconds_per_iteration(broken)


def test_logged_pace_is_the_mean_of_each_window_not_one_iteration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nine data workers deliver batches in bursts: eight iterations of 0.1 s, then one of 0.8 s.
    # The calibration must read the mean pace (1.6 / 9 s), whichever iteration a log entry lands
    # on; on an H200 one iteration's time read 0.49 s against 0.186 s steady (2026-12-04).
    clock = iter([0.0] + [t for burst in range(6) for t in _burst_ends(1.6 * burst)])
    monkeypatch.setattr(runlog.time, "perf_counter", lambda: next(clock))
    log = RunLog(
        tmp_path, enabled=True, tensorboard=False, progress=False, total=54, initial=0, desc="t"
    )
    for it in range(1, 55):
        log.iteration_done(1.0, 0.01, "s")
        if it % 9 == 0:
            log.scalars("train", {"seconds_per_iteration": log.window_seconds_per_iteration()}, it)
    entries = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in entries] == [9, 18, 27, 36, 45, 54]
    for e in entries:
        assert e["train"]["seconds_per_iteration"] == pytest.approx(1.6 / 9)
    assert log.times[8] == pytest.approx(0.8)  # what a single-iteration reading would have logged
    assert planned_iterations(tmp_path / "log.jsonl", 160.0, fraction=1.0) == 900
    assert log.window_seconds_per_iteration() != log.window_seconds_per_iteration()  # empty: nan
    log.close()


def _burst_ends(start: float) -> list[float]:
    """perf_counter readings at the end of nine iterations from ``start``: 8 x 0.1 s, 1 x 0.8 s."""
    return [start + 0.1 * k for k in range(1, 9)] + [start + 1.6]
