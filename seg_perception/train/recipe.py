"""Training recipes: a typed schema for ``config/train/*.yaml``.

A recipe is a YAML mapping with the sections ``model``, ``data``, ``augment``, ``loss``,
``optim``, ``schedule``, ``stages`` and ``run`` (see the shipped recipes for every key with a
comment). Unknown keys, wrong types and values out of range are :class:`ConfigError` naming the
dotted key and the file, like the node's config (:mod:`seg_perception.config`). Command-line
overrides use the same dotted keys: ``--set optim.lr=0.01 run.out_dir=runs/x``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seg_perception.choices import TTA_MODES
from seg_perception.config import ConfigError
from seg_perception.data.datasets import DATASET_KINDS, DatasetSpec
from seg_perception.data.transforms import AugmentConfig
from seg_perception.machine import AMP_SETTINGS

__all__ = [
    "DataSection",
    "LossSection",
    "ModelSection",
    "OptimSection",
    "RunSection",
    "ScheduleSection",
    "StageSection",
    "TrainRecipe",
    "apply_overrides",
    "load_recipe",
    "parse_recipe",
    "recipe_to_dict",
]

POLICIES = ("poly", "step", "linear", "constant")
UNITS = ("epochs", "iterations")


def _f(
    default: Any = dataclasses.MISSING,
    *,
    choices: tuple = (),
    minimum: float | None = None,
    maximum: float | None = None,
    factory: Any = None,
) -> Any:
    meta = {"choices": choices, "minimum": minimum, "maximum": maximum}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelSection:
    """``name``: a key of ``MODEL_BUILDERS``; ``switches``: keyword arguments of its builder;
    ``init_weights``: a state dict file loaded before training (fine-tuning); ``init_widen``:
    ``init_weights`` is of a narrower network of the same model (e.g. ``width`` 0.5 into 0.75),
    embedded so that the wider net starts computing the narrower one's function
    (:func:`seg_perception.networks.widen.widen_state_dict`); ``scl_features``:
    dotted name of the module whose *input* feeds the SCL similarity subnet (default: the top
    classifier of the net)."""

    name: str = _f("gun")
    switches: dict[str, Any] = field(default_factory=dict)
    init_weights: str = _f("")
    init_widen: bool = _f(False)
    scl_features: str = _f("")


@dataclass(frozen=True)
class DataSection:
    """``train``: named datasets that stages pick by name (e.g. ``fine``, ``coarse``);
    ``val``: the validation set (None: no validation); ``val_frames``: frames per validation
    (0: all); ``val_size``: ``[h, w]`` the semantic net runs at during validation (None: the
    frame's size; predictions are resized to the label size as the node does); ``val_tta``: the
    papers' test-time procedure of semantic validation (``none``, ``multistep``: RelationNet's
    4-step shifted testing, ``multiscale-flip``: ShelfNet's Table 2 scales with flip;
    :mod:`seg_perception.networks.tta`)."""

    train: dict[str, DatasetSpec] = field(default_factory=dict)
    val: DatasetSpec | None = None
    batch_size: int = _f(8, minimum=1)
    workers: int = _f(0, minimum=0, maximum=64)
    labels: str = _f("cityscapes")
    val_frames: int = _f(0, minimum=0)
    val_size: tuple[int, int] | None = _f(None)
    val_tta: str = _f("none", choices=TTA_MODES)


@dataclass(frozen=True)
class LossSection:
    """``ohem``: OHEM (RelationNet eq. 3) instead of plain cross-entropy in every stage that
    does not say otherwise; ``scl_weight``: lambda of eq. 2 (used in stages with ``scl: true``);
    ``aux_weight``: weight of deep-supervision heads (ShelfNet's ``deep_supervision`` switch,
    our addition, not the paper's); ``asp_weights``: per-group weights of the ASP
    multi-task sum (``box``, ``cls``, ``mask``, ``segm``; default 1)."""

    ohem: bool = _f(False)
    ohem_threshold: float = _f(0.6, minimum=0.0, maximum=1.0)
    ohem_min_kept: int = _f(0, minimum=0)
    scl_weight: float = _f(0.1, minimum=0.0)
    scl_hidden: int = _f(64, minimum=1)
    aux_weight: float = _f(0.4, minimum=0.0)
    asp_weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimSection:
    """SGD with momentum. ``grad_clip``: max global gradient norm (0: off); ``amp``: autocast,
    ``auto`` | ``true`` | ``false`` (:func:`seg_perception.machine.choose_amp`: ``auto`` is fp16 +
    GradScaler on CUDA, bf16 on CPUs with AVX512-BF16 / AMX-BF16, else fp32; ``true`` forces bf16
    on any CPU); ``freeze_bn``: BatchNorm layers whose name starts with ``freeze_bn_prefix`` keep
    their statistics (eval mode) and train only gamma/beta."""

    lr: float = _f(0.01, minimum=0.0)
    momentum: float = _f(0.9, minimum=0.0, maximum=1.0)
    weight_decay: float = _f(1e-4, minimum=0.0)
    nesterov: bool = _f(False)
    grad_clip: float = _f(0.0, minimum=0.0)
    amp: bool | str = _f("auto", choices=AMP_SETTINGS)
    freeze_bn: bool = _f(False)
    freeze_bn_prefix: str = _f("")


@dataclass(frozen=True)
class ScheduleSection:
    """Learning-rate policy within each stage. ``unit`` applies to stage lengths and
    ``step_size``. ``poly``: ``lr * (1 - t/T)**power``; ``step``: ``lr * gamma**(t // step_size)``;
    ``linear``: constant for the first ``hold`` fraction of the stage, then linear down to
    ``final_lr``; ``warmup_iterations``: linear ramp from ``lr/10`` at the start of the run."""

    policy: str = _f("poly", choices=POLICIES)
    unit: str = _f("iterations", choices=UNITS)
    power: float = _f(0.9, minimum=0.0)
    step_size: float = _f(0.0, minimum=0.0)
    gamma: float = _f(0.1, minimum=0.0, maximum=1.0)
    hold: float = _f(0.0, minimum=0.0, maximum=1.0)
    final_lr: float = _f(0.0, minimum=0.0)
    warmup_iterations: int = _f(0, minimum=0)


@dataclass(frozen=True)
class StageSection:
    """One training stage: ``dataset`` (a key of ``data.train``), ``length`` (schedule unit),
    ``lr`` (0: ``optim.lr``), ``ohem`` (None: ``loss.ohem``), ``scl`` (spatial correlation loss)."""

    name: str = _f("main")
    dataset: str = _f("train")
    length: float = _f(1.0, minimum=0.0)
    lr: float = _f(0.0, minimum=0.0)
    ohem: bool | None = _f(None)
    scl: bool = _f(False)


@dataclass(frozen=True)
class RunSection:
    """``out_dir``: checkpoints, logs and TensorBoard events; ``*_every`` in iterations (0: at
    the end of each stage only); ``device``: ``auto`` | ``cpu`` | ``cuda[:N]``; ``threads``:
    torch CPU threads (0: library default); ``strict``: corrupt or missing data files are errors;
    ``channels_last``: the model and its image batches in NHWC memory format (oneDNN's native
    layout: faster training steps on CPUs, and on GPUs with autocast)."""

    seed: int = _f(0, minimum=0)
    out_dir: str = _f("runs/train")
    checkpoint_every: int = _f(500, minimum=0)
    keep_checkpoints: int = _f(3, minimum=1)
    val_every: int = _f(0, minimum=0)
    log_every: int = _f(10, minimum=1)
    tensorboard: bool = _f(True)
    sample_images: int = _f(2, minimum=0, maximum=16)
    device: str = _f("auto")
    threads: int = _f(0, minimum=0, maximum=256)
    strict: bool = _f(False)
    progress: bool = _f(True)
    channels_last: bool = _f(True)


@dataclass(frozen=True)
class TrainRecipe:
    """A whole recipe; ``source`` is the file it came from (for messages)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    stages: tuple[StageSection, ...] = field(default_factory=tuple)
    run: RunSection = field(default_factory=RunSection)
    source: str = _f("<recipe>")


# ------------------------------------------------------------------------------ validation
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _yaml_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (recursively); return the typed value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[:-1]:  # e.g. ``bool | str``: the first type that fits
            with contextlib.suppress(ConfigError):
                return _convert(alternative, value, key, source)
        return _convert(inner[-1], value, key, source)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, source)
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{source}: '{key}' must have {len(args)} entries, got {value!r}")
        return tuple(
            _convert(a, v, f"{key}[{i}]", source)
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(
            f"{source}: '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, values: Mapping[str, Any], prefix: str, source: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(map(str, values)) - set(fields) - {"source"})
    if unknown:
        where = f"in '{prefix}'" if prefix else "at the top level"
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(repr(u) for u in unknown)} {where}; valid: "
            f"{', '.join(n for n in fields if n != 'source')}"
        )
    out = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        meta = fields[name].metadata
        choices = meta.get("choices")
        wrong = ConfigError(
            f"{source}: '{key}' must be one of {', '.join(map(_yaml_text, choices or ()))}, "
            f"got {value!r}"
        )
        try:
            v = _convert(hints[name], value, key, source)
        except ConfigError:
            if choices:
                raise wrong from None
            raise
        if choices and v not in choices:
            raise wrong
        if meta.get("minimum") is not None and v is not None and v < meta["minimum"]:
            raise ConfigError(f"{source}: '{key}' must be >= {meta['minimum']}, got {v}")
        if meta.get("maximum") is not None and v is not None and v > meta["maximum"]:
            raise ConfigError(f"{source}: '{key}' must be <= {meta['maximum']}, got {v}")
        out[name] = v
    return cls(**out)


def _check_dataset(spec: DatasetSpec, key: str, source: str) -> None:
    if spec.kind not in DATASET_KINDS:
        raise ConfigError(
            f"{source}: '{key}.kind' must be one of {', '.join(DATASET_KINDS)}, got {spec.kind!r}"
        )
    need = {"cityscapes": "root", "bag": "path"}.get(spec.kind)
    if need and not getattr(spec, need):
        raise ConfigError(f"{source}: '{key}.{need}' is required for kind {spec.kind!r}")


def parse_recipe(doc: Mapping[str, Any], *, source: str = "<recipe>") -> TrainRecipe:
    """Validate a recipe mapping; cross-field rules included (stages name existing datasets...)."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: a recipe must be a mapping, got {type(doc).__name__}")
    recipe: TrainRecipe = _build(TrainRecipe, doc, "", source)
    recipe = dataclasses.replace(recipe, source=source)
    from seg_perception.networks import MODEL_BUILDERS

    if recipe.model.name not in MODEL_BUILDERS:
        raise ConfigError(
            f"{source}: 'model.name' must be one of {', '.join(sorted(MODEL_BUILDERS))}, "
            f"got {recipe.model.name!r}"
        )
    if recipe.model.init_widen and not recipe.model.init_weights:
        raise ConfigError(
            f"{source}: 'model.init_widen' needs 'model.init_weights' (the narrow file)"
        )
    if not recipe.data.train:
        raise ConfigError(f"{source}: 'data.train' needs at least one dataset")
    for name, spec in recipe.data.train.items():
        _check_dataset(spec, f"data.train.{name}", source)
    if recipe.data.val is not None:
        _check_dataset(recipe.data.val, "data.val", source)
    if not recipe.stages:
        raise ConfigError(f"{source}: 'stages' needs at least one stage")
    for i, st in enumerate(recipe.stages):
        if st.dataset not in recipe.data.train:
            raise ConfigError(
                f"{source}: 'stages[{i}].dataset' is {st.dataset!r}; defined in data.train: "
                f"{', '.join(recipe.data.train)}"
            )
        if st.scl and recipe.model.name == "panoptic_asp":
            raise ConfigError(f"{source}: 'stages[{i}].scl' is not supported for panoptic_asp")
    aug = recipe.augment
    if not 0.0 < aug.scale[0] <= aug.scale[1]:
        raise ConfigError(f"{source}: 'augment.scale' must be [min, max] with 0 < min <= max")
    if aug.crop is not None and min(aug.crop) < 1:
        raise ConfigError(f"{source}: 'augment.crop' must be [height, width] >= 1")
    if (
        recipe.model.name != "panoptic_asp"
        and recipe.data.batch_size > 1
        and aug.crop is None
        and aug.scale != (1.0, 1.0)
    ):
        raise ConfigError(
            f"{source}: 'augment.scale' {list(aug.scale)} gives images of different sizes; a "
            f"batch of {recipe.data.batch_size} needs 'augment.crop'"
        )
    sch = recipe.schedule
    if sch.policy == "step" and sch.step_size <= 0:
        raise ConfigError(f"{source}: 'schedule.step_size' must be > 0 for policy 'step'")
    if recipe.data.val_tta != "none" and recipe.model.name == "panoptic_asp":
        raise ConfigError(f"{source}: 'data.val_tta' is for the semantic nets, not panoptic_asp")
    bad_groups = sorted(set(recipe.loss.asp_weights) - {"box", "cls", "mask", "segm"})
    if bad_groups:
        raise ConfigError(f"{source}: 'loss.asp_weights' has unknown groups {bad_groups}")
    return recipe


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for i, p in enumerate(parts[:-1]):
        if p.isdigit() and isinstance(node, list):
            idx = int(p)
            if idx >= len(node):
                raise ConfigError(f"{source}: override '{dotted}': index {idx} out of range")
            node = node[idx]
            continue
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, (dict, list)):
            raise ConfigError(
                f"{source}: override '{dotted}': '{'.'.join(parts[: i + 1])}' is not a section"
            )
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(doc: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a recipe mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not plain YAML: {exc}") from None
        _set_dotted(doc, key.strip(), value, "overrides")
    return doc


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> TrainRecipe:
    """Read, override and validate a recipe file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping")
    apply_overrides(doc, overrides)
    return parse_recipe(doc, source=str(p))


def recipe_to_dict(recipe: TrainRecipe) -> dict[str, Any]:
    """Plain mapping (YAML-ready, tuples as lists) of a recipe, without ``source``."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(recipe)
    out.pop("source", None)
    return out
