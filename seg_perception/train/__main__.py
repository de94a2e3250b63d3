"""``python -m seg_perception.train`` / ``torchrun --nproc-per-node N -m seg_perception.train``."""

from __future__ import annotations

import argparse
import sys

from seg_perception.commands.train import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg_perception.train", description="Train a seg_perception network."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"seg_perception.train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
