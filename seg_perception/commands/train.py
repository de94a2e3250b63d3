"""``seg-perception train`` (and ``torchrun -m seg_perception.train``): train a recipe.

Examples::

    seg-perception train --config config/train/gun_synth.yaml
    seg-perception train --config config/train/gun_synth.yaml --resume      # continue the run
    seg-perception train --config config/train/gun_synth.yaml --set optim.lr=0.02 run.seed=3
    torchrun --nproc-per-node 4 -m seg_perception.train --config config/train/gun_cityscapes.yaml
    seg-perception train --export-weights runs/gun_synth models/gun_synth.safetensors
    seg-perception train --average-weights OUT.safetensors A.safetensors B.safetensors  # a soup

Exit status: 0 done, 2 bad recipe / data, 3 the loss became NaN (the last good checkpoint is
kept and named in the message).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from seg_perception.cli_paths import ExistingFile, ExistingPath, OutputDir, check_path
from seg_perception.config import add_key_value_option

DTYPES = ("fp16", "bf16", "fp32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", action=ExistingFile, help="training recipe (config/train/*.yaml)"
    )
    add_key_value_option(
        parser,
        "--set",
        dest="overrides",
        help="override recipe keys, e.g. optim.lr=0.01 stages.0.length=10 (values are YAML)",
    )
    parser.add_argument("--out", action=OutputDir, help="run directory (overrides run.out_dir)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        action=ExistingPath,
        metavar="CHECKPOINT",
        help="continue from a checkpoint file or run directory (default: the run's out_dir)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="corrupt/missing data files are errors"
    )
    parser.add_argument("--device", help="auto | cpu | cuda[:N] (overrides run.device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--export-weights",
        nargs="+",
        metavar="PATH",
        help="after training, write the net's weights to this .safetensors file; with two "
        "paths (RUN_OR_CHECKPOINT OUT) export without training",
    )
    parser.add_argument(
        "--average-weights",
        nargs="+",
        metavar="PATH",
        help="OUT IN IN [IN ...]: write the uniform average of exported weight files of one "
        "network (e.g. schedules fine-tuned from one file) to OUT, without training",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="fp16", help="exported weights dtype")


def _dtype(name: str):  # type: ignore[no-untyped-def]
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def run(args: argparse.Namespace) -> int:
    from seg_perception.train.checkpoint import average_weights, export_weights

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.average_weights:
        paths = args.average_weights
        if len(paths) < 3:
            print("--average-weights takes OUT and two or more input files", file=sys.stderr)
            return 2
        for p in paths[1:]:
            check_path(p, "file", "--average-weights IN")
        check_path(paths[0], "output_file", "--average-weights OUT")
        out = average_weights(paths[1:], paths[0], dtype=_dtype(args.dtype))
        print(f"average of {len(paths) - 1} files written to {out}")
        return 0
    exports = args.export_weights or []
    if len(exports) > 2:
        print("--export-weights takes OUT or RUN_OR_CHECKPOINT OUT", file=sys.stderr)
        return 2
    if len(exports) == 2:
        check_path(exports[0], "path", "--export-weights RUN_OR_CHECKPOINT")
    if exports:
        check_path(exports[-1], "output_file", "--export-weights OUT")
    if len(exports) == 2:
        out = export_weights(exports[0], exports[1], dtype=_dtype(args.dtype))
        print(f"weights written to {out}")
        return 0
    if not args.config:
        print("seg-perception train: --config is required", file=sys.stderr)
        return 2

    from seg_perception.train import distributed as D
    from seg_perception.train.recipe import load_recipe
    from seg_perception.train.trainer import DivergenceError, Trainer

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    if args.strict:
        overrides.append("run.strict=true")
    if args.device:
        overrides.append(f"run.device={args.device}")
    if args.no_progress:
        overrides.append("run.progress=false")
    recipe = load_recipe(args.config, overrides)
    resume = None
    if args.resume is not None:
        resume = Path(args.resume or recipe.run.out_dir)
    info = D.init_distributed(recipe.run.device)
    try:
        result = Trainer(recipe, resume=resume, dist_info=info).run()
    except DivergenceError as err:
        print(f"seg-perception train: stopped: {err}", file=sys.stderr)
        return 3
    finally:
        D.cleanup_distributed()
    if info.is_main:
        print(
            f"done: {result.iterations} iterations, "
            f"{result.seconds_per_iteration:.3f} s/iteration, last checkpoint "
            f"{result.last_checkpoint}"
        )
        flat = {k: v for k, v in result.val.items() if isinstance(v, float)}
        if flat:
            print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(flat.items())))
        if exports and result.last_checkpoint is not None:
            out = export_weights(result.last_checkpoint, exports[0], dtype=_dtype(args.dtype))
            print(f"weights written to {out}")
    return 0
