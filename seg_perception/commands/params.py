"""``seg-perception params``: the node's parameters, their defaults and descriptions."""

from __future__ import annotations

import argparse

from seg_perception.cli_paths import ExistingFile
from seg_perception.config import SegConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action=ExistingFile,
        help="parameter file to show instead of the shipped defaults",
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    types = SegConfig.field_types()
    for key in SegConfig.names():
        print(f"{key} ({types[key].__name__}) = {cfg.get(key)!r}")
        print(f"    {SegConfig.description(key)}")
    return 0
