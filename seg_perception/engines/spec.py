"""``EngineSpec``: everything an engine is made from, as one frozen value.

The node, ``eval``, every ``bench``, ``export`` and ``build-engine`` describe the engine they want
as an :class:`EngineSpec` and hand it to :func:`seg_perception.engines.factory.export` (the cached
ONNX export form), :func:`~seg_perception.engines.factory.prepare` (the artefact the backend runs:
that ONNX, its int8 QDQ version or a TensorRT plan) or :func:`~seg_perception.engines.factory.build`
(a running engine). Equal specs give the same cache keys, so an engine built by ``build-engine`` is
the one the node finds.

Every option has its default here, once: the command-line tools take their defaults from this
class (:func:`default`), the node from ``config/seg.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg_perception.choices import BACKENDS, MODEL_KINDS, PRECISIONS, TTA_MODES
from seg_perception.engines.base import SEMANTIC_OUTPUTS, EngineError
from seg_perception.machine import INT8_MODES

__all__ = [
    "BACKENDS",
    "CALIB_FRAMES",
    "MODEL_KINDS",
    "PLAN_SUFFIXES",
    "EngineSpec",
    "default",
    "parse_providers",
    "resolve_weights",
]

#: int8 calibration frames, for the node, ``bench engines`` and ``build-engine`` alike
CALIB_FRAMES = 16
#: file suffixes of a serialised TensorRT engine given as a ready artefact
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


def parse_providers(providers: str | Sequence[str]) -> tuple[str, ...]:
    """``"tensorrt, cuda,cpu"`` or a list -> ``("tensorrt", "cuda", "cpu")``."""
    items = providers.split(",") if isinstance(providers, str) else list(providers)
    out = tuple(p.strip() for p in items if p.strip())
    if not out:
        raise EngineError("parameter 'providers': no onnxruntime provider given")
    return out


def resolve_weights(
    value: str | os.PathLike[str] | None,
    *,
    model: str,
    allow_random_weights: bool,
    parameter: str = "weights",
) -> tuple[Path | None, str]:
    """``(weights file or None for seeded random weights, a note for the log)``.

    The one missing-weights policy: a missing file is refused (naming ``parameter``) unless
    ``allow_random_weights``; a file whose stored model name (exported weights carry it) is
    another network is refused with what to do.
    """
    from seg_perception.config import resolve_path
    from seg_perception.networks.export import stored_switches

    if value is None or str(value) == "":
        if allow_random_weights:
            return None, "RANDOM WEIGHTS (no weights file given; allow_random_weights is true)"
        raise EngineError(
            f"parameter '{parameter}': no weights file given; give one, or allow random "
            "weights (demo only)"
        )
    path = resolve_path(str(value))
    if not path.is_file():
        if allow_random_weights:
            return None, f"RANDOM WEIGHTS ({path} not found; allow_random_weights is true)"
        raise EngineError(
            f"parameter '{parameter}': file {path} not found. Train or copy weights there, point "
            f"'{parameter}' at a file, or set allow_random_weights:=true (demo only)."
        )
    try:
        stored, _ = stored_switches(path)
    except ValueError as exc:
        raise EngineError(f"parameter '{parameter}': {exc}") from None
    if stored is not None and stored != model:
        hint = (
            "leave 'weights' empty for each model's shipped file, or change 'model' and 'weights' "
            "together (ros2 param set_parameters_atomically / one --params-file)"
            if parameter == "weights"
            else f"point '{parameter}' at {model} weights"
        )
        raise EngineError(
            f"parameter '{parameter}': {path} holds a {stored!r} network, not {model!r}: {hint}"
        )
    return path, f"weights from {path}"


@dataclass(frozen=True)
class EngineSpec:
    """One engine: network, weights, input, classes, backend and the backend's options.

    Attributes:
        model: network name (a key of :data:`MODEL_KINDS`).
        num_classes: classes of the label table; the artefact must predict as many.
        input_hw: network input ``(H, W)``.
        weights: weights file, or ``None`` for seeded random weights (``torch.manual_seed(0)``;
            :func:`resolve_weights` allows that only with ``allow_random_weights``).
        switches: builder switches over those stored in the weights file (sorted pairs).
        artefact: a ready ONNX file (onnxruntime, tensorrt) or TensorRT plan (tensorrt) to run
            instead of exporting ``weights``; checked against I/O names, input size and classes.
        backend: ``torch``, ``onnxruntime`` or ``tensorrt``.
        precision: ``fp32``; ``bf16`` (torch); ``fp16`` (torch CUDA, TensorRT, the ORT TensorRT
            EP); ``int8`` (onnxruntime QDQ, TensorRT).
        providers: onnxruntime execution providers in order.
        threads: CPU threads (torch / onnxruntime intra-op; 0 = the library's default).
        max_batch: the most camera frames one ``infer`` call takes.
        device: torch device (``cpu`` / ``cuda:N``); its index is the TensorRT GPU.
        graph_optimization: onnxruntime graph optimisation level.
        calib, calib_topic, calib_frames: int8 calibration images: a folder, a bag (+ camera
            topic) or ``None`` for the synthetic street scenes, and how many.
        int8_mode: onnxruntime int8: ``auto`` (follow this CPU) or one of ``INT8_MODES``.
        workspace_gib: TensorRT builder workspace.
        cache_dir: exports and engines (``None``: :func:`~.cache.default_cache_dir`).
        tta: a test-time procedure of the papers wrapped around a semantic net
            (:mod:`seg_perception.networks.tta`; offline evaluation only, never the node).
        name: a label for logs and tables (default ``model/backend/precision``).
    """

    model: str
    num_classes: int
    input_hw: tuple[int, int]
    weights: Path | None = None
    switches: tuple[tuple[str, Any], ...] = ()
    artefact: Path | None = None
    backend: str = "torch"
    precision: str = "fp32"
    providers: tuple[str, ...] = ("cpu",)
    threads: int = 0
    max_batch: int = 1
    device: str = "cpu"
    graph_optimization: str = "all"
    calib: str | None = None
    calib_topic: str | None = None
    calib_frames: int = CALIB_FRAMES
    int8_mode: str = "auto"
    workspace_gib: float = 4.0
    cache_dir: Path | None = None
    tta: str = "none"
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalise once; the spec stays frozen
        set_(self, "input_hw", (int(self.input_hw[0]), int(self.input_hw[1])))
        set_(self, "switches", tuple(sorted(dict(self.switches).items())))
        set_(self, "providers", parse_providers(self.providers))
        for attr in ("weights", "artefact", "cache_dir"):
            value = getattr(self, attr)
            if value is not None:
                set_(self, attr, Path(value))
        if self.model not in MODEL_KINDS:
            raise EngineError(f"model {self.model!r}; valid: {', '.join(MODEL_KINDS)}")
        if self.backend not in BACKENDS:
            raise EngineError(
                f"parameter 'backend': {self.backend!r}; valid: {', '.join(BACKENDS)}"
            )
        if self.precision not in PRECISIONS:
            raise EngineError(
                f"parameter 'precision': {self.precision!r}; valid: {', '.join(PRECISIONS)}"
            )
        if self.num_classes < 1:
            raise EngineError(f"num_classes must be >= 1, got {self.num_classes}")
        if min(self.input_hw) < 1:
            raise EngineError(f"input size must be positive, got {self.input_hw}")
        if self.max_batch < 1:
            raise EngineError(f"parameter 'max_batch' must be >= 1, got {self.max_batch}")
        if self.kind == "panoptic" and self.max_batch != 1:
            raise EngineError(
                f"engine {self.label}: the panoptic export form takes one image per call"
            )
        if self.int8_mode != "auto" and self.int8_mode not in INT8_MODES:
            raise EngineError(f"int8 mode {self.int8_mode!r}; valid: auto, {', '.join(INT8_MODES)}")
        if self.calib_frames < 1:
            raise EngineError(f"calibration frames must be >= 1, got {self.calib_frames}")
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise EngineError(
                f"graph optimisation {self.graph_optimization!r}; valid: "
                f"{', '.join(GRAPH_OPTIMIZATIONS)}"
            )
        if self.weights is not None and not self.weights.is_file():
            raise EngineError(f"weights file {self.weights} not found")
        if self.artefact is not None:
            self._check_artefact_backend(self.artefact)
        if self.tta not in TTA_MODES:
            raise EngineError(f"test-time procedure {self.tta!r}; valid: {', '.join(TTA_MODES)}")
        if self.tta != "none" and (self.kind != "semantic" or self.artefact is not None):
            what = "a ready artefact" if self.artefact is not None else f"model {self.model}"
            raise EngineError(
                f"engine {self.label}: test-time procedure {self.tta} wraps a semantic network "
                f"built from weights, not {what}"
            )

    def _check_artefact_backend(self, path: Path) -> None:
        if self.backend == "torch":
            raise EngineError(f"engine {self.label}: backend torch runs weights, not {path}")
        if path.suffix in PLAN_SUFFIXES and self.backend != "tensorrt":
            raise EngineError(
                f"{path} is a TensorRT plan ({path.suffix}): it needs backend tensorrt, not "
                f"{self.backend}"
            )
        if path.suffix not in PLAN_SUFFIXES and path.suffix != ".onnx":
            raise EngineError(
                f"artefact {path}: expected an ONNX file (.onnx) or a TensorRT plan "
                f"({', '.join(PLAN_SUFFIXES)})"
            )
        if not path.is_file():
            what = "ONNX" if path.suffix == ".onnx" else "TensorRT plan"
            raise EngineError(f"{what} file {path} not found")

    @property
    def kind(self) -> str:
        """``semantic`` or ``panoptic``."""
        return MODEL_KINDS[self.model]

    @property
    def label(self) -> str:
        return self.name or f"{self.model}/{self.backend}/{self.precision}"

    @property
    def outputs(self) -> tuple[str, ...]:
        """The output names the engine's artefact must have, in graph order."""
        if self.kind == "panoptic":
            from seg_perception.networks.panoptic_export import OUTPUT_NAMES

            return tuple(OUTPUT_NAMES)
        return SEMANTIC_OUTPUTS

    @property
    def cache(self) -> Path:
        from seg_perception.engines.cache import default_cache_dir

        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    @property
    def gpu(self) -> int:
        """The CUDA device index of ``device`` (0 for ``cpu`` / ``cuda``)."""
        return int(self.device.split(":")[1]) if self.device.startswith("cuda:") else 0

    def with_(self, **changes: Any) -> EngineSpec:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)


def default(option: str) -> Any:
    """The default of an :class:`EngineSpec` option (for command-line defaults)."""
    for f in dataclasses.fields(EngineSpec):
        if f.name == option:
            return f.default
    raise KeyError(option)
