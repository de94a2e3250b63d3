"""``seg-perception bench train``: how well a training step uses this machine, per recipe.

For each recipe (default: the three CPU-sized synthetic recipes) and each autocast setting of
``--amp`` (default ``recipe,false``: the recipe's own ``optim.amp`` and fp32; settings that
resolve to the same dtype on this machine are measured once):

Everything runs on the CPU (the ceiling is a CPU figure).

- ``step_s``: the trainer's own step (:meth:`Trainer.step`: forward, loss, backward, gradient
  clipping, SGD update) on one real batch of the recipe (its batch size, augmentation and crop),
  median of ``--iterations`` calls after ``--warmup``; ``min_s`` the least-disturbed call;
- ``gflop``: convolution / matrix-product GFLOPs of that step, forward and backward (2 per
  multiply-add, ``torch.utils.flop_counter``); ``gflops_per_s`` = ``gflop / step_s``;
- ``ceiling_gflops``: this machine's fp32 3x3-convolution rate
  (:class:`seg_perception.engines.bench_measure.CeilingConv`), timed interleaved with the
  steps (:func:`round_robin`) so that load from other processes hits both alike;
  ``ceiling_ratio`` = ``gflops_per_s / ceiling_gflops``: the training efficiency of the design;
- ``loop_s`` (unless ``--no-loop``): the full trainer iteration, data loading included -- the
  median wall time of the iterations after ``--warmup`` of a real :meth:`Trainer.run` of
  ``warmup + iterations`` iterations (its DataLoader workers render or read the frames).

Threads: each recipe's ``run.threads`` (``--threads`` overrides). The load average before and
after is recorded: figures taken beside other jobs are slower; the ratios partly cancel that.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seg_perception.cli_paths import OutputFile
from seg_perception.config import add_key_value_option, find_data_file
from seg_perception.engines.bench_measure import CEILING_SHAPE, CeilingConv, counted_gflops
from seg_perception.engines.bench_measure import round_robin as interleaved
from seg_perception.machine import choose_amp, detect, machine_header, machine_record

if TYPE_CHECKING:
    from seg_perception.train.recipe import TrainRecipe

__all__ = [
    "DEFAULT_RECIPES",
    "add_arguments",
    "bench_recipe",
    "bench_train",
    "print_table",
    "recipe_path",
    "run",
]

DEFAULT_RECIPES = ("gun_synth", "shelfnet18_synth", "asp_synth")
COLUMNS = (
    "recipe",
    "amp",
    "autocast",
    "batch",
    "crop",
    "nhwc",
    "threads",
    "step_s",
    "min_s",
    "loop_s",
    "gflop",
    "gflops_per_s",
    "ceiling_gflops",
    "ceiling_ratio",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipes",
        default=",".join(DEFAULT_RECIPES),
        help="comma-separated recipe names in config/train or YAML paths "
        f"(default {','.join(DEFAULT_RECIPES)})",
    )
    parser.add_argument("--iterations", type=int, default=12, help="timed steps (default 12)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (default 3)")
    parser.add_argument(
        "--amp",
        default="recipe,false",
        help="optim.amp settings to compare: recipe (the recipe's own), auto, true, false "
        "(default recipe,false)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: the recipe's run.threads)"
    )
    parser.add_argument(
        "--no-loop", action="store_true", help="skip the full trainer iteration (loop_s)"
    )
    add_key_value_option(
        parser,
        "--set",
        dest="overrides",
        help="recipe overrides for every recipe, e.g. run.channels_last=false",
    )
    parser.add_argument(
        "--json", default=None, action=OutputFile, help="also write the results as JSON here"
    )


def recipe_path(name: str) -> Path:
    """A recipe file: a path as given, else ``config/train/<name>.yaml`` of this package."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    return find_data_file(f"config/train/{name}.yaml")


def amp_overrides(settings: str) -> list[list[str]]:
    """``"recipe,false"`` -> ``[[], ["optim.amp=false"]]`` (the overrides of each setting)."""
    out: list[list[str]] = []
    for s in (x.strip() for x in settings.split(",") if x.strip()):
        if s not in ("recipe", "auto", "true", "false"):
            raise ValueError(f"--amp: {s!r} is not one of recipe, auto, true, false")
        out.append([] if s == "recipe" else [f"optim.amp={s}"])
    return out


def short_run(recipe: TrainRecipe, out_dir: Path, iterations: int) -> TrainRecipe:
    """``recipe`` cut to its first stage, ``iterations`` long, writing only into ``out_dir``
    (no validation, no TensorBoard, no progress bar, one checkpoint at the end)."""
    stage = dataclasses.replace(recipe.stages[0], length=float(iterations))
    return dataclasses.replace(
        recipe,
        data=dataclasses.replace(recipe.data, val=None),
        schedule=dataclasses.replace(recipe.schedule, unit="iterations"),
        stages=(stage,),
        run=dataclasses.replace(
            recipe.run,
            out_dir=str(out_dir),
            checkpoint_every=0,
            val_every=0,
            tensorboard=False,
            progress=False,
            sample_images=0,
        ),
    )


def _significant(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits: the table's figures keep their relative precision
    at any size (a fixed number of decimals turned a tiny net's ratio 0.0125 into 0.013)."""
    return float(f"{x:.{digits}g}")


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def measure_step(recipe: TrainRecipe, *, iterations: int, warmup: int) -> dict[str, Any]:
    """The trainer's step on one batch of ``recipe``, interleaved with the ceiling conv."""
    from seg_perception.train.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        trainer = Trainer(short_run(recipe, Path(tmp), warmup + iterations))
        state = trainer.setup()
        state.log.close()
        plan = state.plans[0]
        state.module.train()
        state.module.set_stage(ohem=plan.ohem, scl=plan.scl)
        batch = next(iter(trainer.loader(state, plan)))
        lr = recipe.optim.lr * 0.1  # any small rate: timing does not depend on it

        def step() -> object:
            return trainer.step(state, batch, lr, 0, plan)

        gflop = counted_gflops(step)
        ceiling = CeilingConv()
        times = interleaved({"step": step, "ceiling": ceiling}, iterations, warmup=warmup, pause=0)
    ceiling_gflops = ceiling.gflop / _median(times["ceiling"])
    step_s = _median(times["step"])
    return {
        "autocast": trainer.amp.value or "fp32",
        "autocast_reason": trainer.amp.reason,
        "step_s": round(step_s, 4),
        "min_s": round(min(times["step"]), 4),
        "gflop": _significant(gflop),
        "gflops_per_s": _significant(gflop / step_s),
        "ceiling_gflops": _significant(ceiling_gflops),
        "ceiling_ratio": _significant(gflop / step_s / ceiling_gflops),
        "ceiling_samples_s": times["ceiling"],
    }


def measure_loop(recipe: TrainRecipe, *, iterations: int, warmup: int) -> float:
    """Median wall time of a real training run's iterations after ``warmup`` (data included)."""
    from seg_perception.train.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        result = Trainer(short_run(recipe, Path(tmp), warmup + iterations)).run()
    return round(_median(result.iteration_seconds[warmup:]), 4)


def bench_recipe(
    recipe: TrainRecipe,
    *,
    name: str,
    iterations: int,
    warmup: int,
    threads: int | None = None,
    loop: bool = True,
) -> dict[str, Any]:
    """One row of the table (see the module docstring)."""
    from seg_perception.train.trainer import torch_threads

    n = recipe.run.threads if threads is None else threads
    recipe = dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, threads=n))
    crop = recipe.augment.crop
    with torch_threads(n) as used:
        row: dict[str, Any] = {
            "recipe": name,
            "model": recipe.model.name,
            "amp": str(recipe.optim.amp).lower(),
            "batch": recipe.data.batch_size,
            "crop": f"{crop[0]}x{crop[1]}" if crop else "full",
            "nhwc": recipe.run.channels_last,
            "threads": used,
            **measure_step(recipe, iterations=iterations, warmup=warmup),
        }
        row["loop_s"] = measure_loop(recipe, iterations=iterations, warmup=warmup) if loop else None
    return row


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - platforms without it
        return None


def bench_train(
    recipes: list[str],
    *,
    amp: str = "recipe,false",
    iterations: int = 12,
    warmup: int = 3,
    threads: int | None = None,
    loop: bool = True,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Every recipe x distinct autocast setting: the rows and the machine they ran on."""
    from seg_perception.train.recipe import load_recipe

    if iterations < 1 or warmup < 0:
        raise ValueError(f"need --iterations >= 1 and --warmup >= 0, got {iterations}, {warmup}")
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    features = detect().features
    for name in recipes:
        path = recipe_path(name)
        seen: set[str | None] = set()
        for extra in amp_overrides(amp):
            recipe = load_recipe(path, [*(overrides or []), *extra])
            dtype = choose_amp(recipe.optim.amp, "cpu", features).value
            if dtype in seen:
                continue  # the same autocast dtype as a setting measured already
            seen.add(dtype)
            rows.append(
                bench_recipe(
                    recipe,
                    name=name,
                    iterations=iterations,
                    warmup=warmup,
                    threads=threads,
                    loop=loop,
                )
            )
    samples = [s for r in rows for s in r.pop("ceiling_samples_s")]
    return {
        "iterations": iterations,
        "warmup": warmup,
        "ceiling_gflops": round(CeilingConv().gflop / _median(samples), 1) if samples else None,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "rows": rows,
        "machine": machine_record(),
    }


def print_table(result: dict[str, Any]) -> None:
    print(machine_header())
    print(
        f"training step (forward + backward + SGD) on one batch of each recipe: median of "
        f"{result['iterations']} after {result['warmup']} warm-up; loop_s: trainer iteration "
        "with data loading; ceiling: fp32 3x3 conv "
        f"{CEILING_SHAPE} NHWC interleaved with the steps = {result['ceiling_gflops']} GFLOP/s; "
        f"load average before {result['load_average_before']}, after "
        f"{result['load_average_after']}"
    )
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in COLUMNS) + "|")
    for r in result["rows"]:
        cells = ["" if r.get(c) is None else str(r[c]) for c in COLUMNS]
        print("| " + " | ".join(cells) + " |")
    print("goal: GUN ceiling_ratio >= 0.40")


def run(args: argparse.Namespace) -> int:
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    result = bench_train(
        recipes,
        amp=args.amp,
        iterations=args.iterations,
        warmup=args.warmup,
        threads=args.threads,
        loop=not args.no_loop,
        overrides=list(args.overrides),
    )
    print_table(result)
    if args.json:
        from seg_perception.atomic import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(result, indent=2))
    return 0
