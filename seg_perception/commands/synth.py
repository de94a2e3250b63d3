"""``seg-perception synth``: write synthetic street scenes as a rosbag or a Cityscapes folder.

Hook into a CLI with :func:`add_synth_arguments` and :func:`run_synth` (aliases ``add_arguments`` /
``run`` as ``seg_perception.cli`` expects); also runnable alone as
``python -m seg_perception.commands.synth --frames 100 --out /tmp/synth_bag``.
"""

from __future__ import annotations

import argparse
import sys

from seg_perception.cli_paths import OutputDir
from seg_perception.config import hw_argument
from seg_perception.data.bag_io import DEFAULT_START_NS, BagError, write_synth_bag
from seg_perception.data.cityscapes_io import frame_name, write_cityscapes_folder
from seg_perception.data.synth import generate_frames


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``synth`` options to ``parser`` (returns it)."""
    parser.add_argument("--frames", type=int, required=True, help="number of frames")
    parser.add_argument(
        "--out", action=OutputDir, required=True, help="bag directory or dataset root"
    )
    parser.add_argument("--format", choices=("bag", "cityscapes"), default="bag")
    parser.add_argument(
        "--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage"
    )
    parser.add_argument("--seed", type=int, default=0, help="sequence seed (>= 0)")
    parser.add_argument("--start", type=int, default=0, help="index of the first frame")
    parser.add_argument(
        "--camera", type=hw_argument, default=(1024, 2048), help="frame HxW (1024x2048)"
    )
    parser.add_argument("--fps", type=float, default=10.0, help="bag frame rate")
    parser.add_argument("--namespace", default="/camera", help="bag topic namespace")
    parser.add_argument("--frame-id", default="camera", help="header frame_id in the bag")
    parser.add_argument("--start-stamp-ns", type=int, default=DEFAULT_START_NS)
    parser.add_argument("--no-raw", action="store_true", help="bag: omit {ns}/image")
    parser.add_argument(
        "--no-compressed", action="store_true", help="bag: omit {ns}/image/compressed"
    )
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--split", default="train", help="cityscapes split folder")
    parser.add_argument("--city", default="synth", help="cityscapes city name")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Run the command; returns the process exit code (0 ok, 1 failed, 2 bad arguments)."""
    height, width = args.camera
    if args.frames < 1 or args.seed < 0 or args.start < 0 or height < 16 or width < 16:
        print(
            "synth: need --frames >= 1, --seed >= 0, --start >= 0 and a size of at least 16x16; "
            f"got frames={args.frames} seed={args.seed} start={args.start} "
            f"size={height}x{width}",
            file=sys.stderr,
        )
        return 2
    sequence = args.seed % 1_000_000  # the Cityscapes name's middle number
    if args.format == "cityscapes":
        # check the names of the first and the last frame before anything is drawn or written
        try:
            for index in (args.start, args.start + args.frames - 1):
                frame_name(args.city, sequence, index)
        except ValueError as exc:
            print(f"synth: --city / --start / --frames: {exc}", file=sys.stderr)
            return 2
    frames = generate_frames(
        args.frames, seed=args.seed, height=height, width=width, start=args.start
    )
    try:
        if args.format == "bag":
            out = write_synth_bag(
                args.out,
                frames,
                storage=args.storage,
                fps=args.fps,
                namespace=args.namespace,
                frame_id=args.frame_id,
                start_stamp_ns=args.start_stamp_ns,
                compressed=not args.no_compressed,
                raw=not args.no_raw,
                jpeg_quality=args.jpeg_quality,
                progress=not args.quiet,
                overwrite=args.overwrite,
                total=args.frames,
            )
            print(f"synth: wrote {args.frames} frames to bag {out}")
        else:
            names = write_cityscapes_folder(
                args.out,
                frames,
                split=args.split,
                city=args.city,
                sequence=sequence,
                progress=not args.quiet,
                total=args.frames,
            )
            print(f"synth: wrote {len(names)} frames to {args.out} (split {args.split})")
    except (BagError, ValueError, OSError) as exc:
        print(f"synth: {exc}", file=sys.stderr)
        return 1
    return 0


# names used by ``seg_perception.cli`` (every command module exposes add_arguments / run)
add_arguments = add_synth_arguments
run = run_synth
synth_command = run_synth


def main(argv: list[str] | None = None) -> int:
    parser = add_synth_arguments(
        argparse.ArgumentParser(prog="seg-perception synth", description=__doc__)
    )
    return run_synth(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
