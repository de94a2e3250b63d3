"""``seg-perception models``: every network with its switches, parameters, fp16 size and GFLOPs
(:mod:`seg_perception.networks.report`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from seg_perception.cli_paths import OutputFile
from seg_perception.networks.report import builder_switches, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network", default=None, help="HxW for every model (default: each paper's input size)"
    )
    parser.add_argument(
        "--json", default=None, action=OutputFile, help="also write the rows as JSON here"
    )
    parser.add_argument(
        "--variants",
        choices=("paper", "cpu", "all"),
        default="paper",
        help="the papers' networks, the width-reduced CPU variants, or both",
    )


def run(args: argparse.Namespace) -> int:
    from seg_perception.config import parse_hw

    rows = report(parse_hw(args.network) if args.network else None, variants=args.variants)
    print(f"| {'model':<52} | {'input':>9} | {'params (M)':>10} | {'fp16 MB':>8} | {'GFLOPs':>8} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 12}|{'-' * 10}|{'-' * 10}|")
    for r in rows:
        hw = f"{r.input_hw[0]}x{r.input_hw[1]}"
        print(
            f"| {r.label:<52} | {hw:>9} | {r.params_m:10.2f} | {r.fp16_mb:8.1f} | {r.gflops:8.1f} |"
        )
    print("\nswitches (defaults):")
    for name in dict.fromkeys(r.model for r in rows):
        switches = ", ".join(f"{k}={v!r}" for k, v in builder_switches(name).items())
        print(f"  {name}: {switches}")
    if args.json:
        from seg_perception.atomic import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps([asdict(r) for r in rows], indent=2))
    return 0
