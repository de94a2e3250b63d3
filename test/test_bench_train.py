"""``seg-perception bench train``: rows with FLOPs, a ceiling, a ratio and the machine (no timing
is asserted: only that every figure is there and positive)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_recipe import tiny_recipe

from seg_perception.commands.bench_train import amp_overrides, bench_train, recipe_path


def _recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    doc = tiny_recipe(tmp_path / "run", data__workers=0)
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_bench_train_rows_on_a_tiny_recipe(tmp_path: Path) -> None:
    result = bench_train([str(_recipe_file(tmp_path))], iterations=2, warmup=1)
    (row,) = result["rows"]  # the recipe's amp is false: "recipe,false" is one setting here
    assert row["autocast"] == "fp32" and row["amp"] == "false" and row["nhwc"] is True
    assert row["batch"] == 2 and row["crop"] == "32x64"
    for key in ("step_s", "min_s", "loop_s", "gflop", "gflops_per_s", "ceiling_gflops"):
        assert row[key] > 0, key
    assert row["ceiling_ratio"] == pytest.approx(
        row["gflops_per_s"] / row["ceiling_gflops"], rel=0.02
    )
    assert result["ceiling_gflops"] > 0
    assert result["machine"]["cpu_model"] and "torch" in result["machine"]["versions"]
    assert not (tmp_path / "run").exists()  # the runs it makes live in temporary folders


def test_bench_train_command_prints_the_table_and_writes_json(tmp_path: Path, capsys) -> None:
    from seg_perception.cli import main

    out = tmp_path / "train.json"
    argv = ["bench", "train", "--recipes", str(_recipe_file(tmp_path)), "--iterations", "1"]
    rc = main([*argv, "--warmup", "0", "--no-loop", "--amp", "false", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ") and "| recipe | amp |" in printed
    result = json.loads(out.read_text())
    assert result["rows"][0]["loop_s"] is None and result["rows"][0]["gflop"] > 0
    assert result["machine"]["usable_cores"] >= 1


def test_bench_train_arguments() -> None:
    assert amp_overrides("recipe, false") == [[], ["optim.amp=false"]]
    with pytest.raises(ValueError, match="bf16"):
        amp_overrides("bf16")
    assert recipe_path("gun_synth").name == "gun_synth.yaml"
