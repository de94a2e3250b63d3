"""The command-line vocabulary of an engine, shared by ``export`` and ``build-engine``.

Both start from the node's configuration (the shipped ``config/seg.yaml``, ``--config``, then
``--set``), so that what they produce is keyed exactly as the node looks it up; ``--model``,
``--weights``, ``--random-weights`` and ``--network`` are the common overrides.
"""

from __future__ import annotations

import argparse
from typing import Any

from seg_perception.cli_paths import ExistingFile, OutputDir
from seg_perception.config import ConfigError, add_key_value_option, parse_hw, parse_key_values
from seg_perception.engines.spec import MODEL_KINDS, EngineSpec

__all__ = ["add_engine_arguments", "spec_from_args"]


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        choices=tuple(MODEL_KINDS),
        help="network (default: the configuration's real-time net); panoptic_asp = the ASP model",
    )
    parser.add_argument(
        "--weights",
        default=None,
        action=ExistingFile,
        help="weights file (default: the configuration's, i.e. the shipped file)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="seeded random weights instead of a file (tests and timing only)",
    )
    parser.add_argument(
        "--network", default=None, help="network input HxW (default: the configuration's)"
    )
    parser.add_argument(
        "--config", default=None, action=ExistingFile, help="node parameter file (default: shipped)"
    )
    add_key_value_option(
        parser,
        "--set",
        help="node parameters, e.g. --set backend=tensorrt precision=fp16 (YAML values)",
    )
    parser.add_argument(
        "--engine-cache",
        default=None,
        action=OutputDir,
        help="exports and engines (default: the configuration's engine_cache)",
    )


def spec_from_args(args: argparse.Namespace, **overrides: Any) -> tuple[EngineSpec, str]:
    """The spec the node would build from this configuration, with the command's overrides
    (``overrides``: spec fields, e.g. backend or calibration); and where its weights come from.
    """
    from seg_perception.config import load_config
    from seg_perception.engines import panoptic_spec, semantic_spec
    from seg_perception.labels import load_label_table

    values = parse_key_values(args.set, "--set")
    panoptic = args.model == "panoptic_asp"
    prefix = "panoptic." if panoptic else ""
    if args.model and not panoptic:
        values["model"] = args.model
    if args.weights:
        values[f"{prefix}weights"] = args.weights
    if args.network:
        h, w = parse_hw(args.network)
        values[f"{prefix}network_height"], values[f"{prefix}network_width"] = h, w
    if args.engine_cache:
        values["engine_cache"] = args.engine_cache
    cfg = load_config(args.config, values)
    labels = load_label_table(cfg.labels)
    spec, note = panoptic_spec(cfg, labels) if panoptic else semantic_spec(cfg, labels)
    if args.random_weights:
        if args.weights:
            raise ConfigError("give --weights or --random-weights, not both")
        overrides = {**overrides, "weights": None}
        note = "RANDOM WEIGHTS (--random-weights)"
    return spec.with_(**overrides) if overrides else spec, note
