"""The machine this process runs on, and the choices that follow it.

One place knows the hardware: CPU model, cores, the instruction-set features that change what is
fast or exact, CUDA devices. :func:`detect` asks torch (``torch.cpu.get_capabilities()``, the
cpuinfo library torch dispatches its own kernels on) and falls back to the ``flags`` line of
``/proc/cpuinfo`` on Linux only where torch reports nothing. The result is a frozen
:class:`MachineInfo`, computed once per process.

The choices are pure functions of a feature set (tests pass fake ones), each returning a
:class:`Choice` with the reason it was made:

* :func:`choose_amp`: training autocast (``optim.amp``: ``auto`` | ``true`` | ``false``);
* :func:`cpu_bf16_refusal`: whether the torch backend may run ``precision: bf16`` on this CPU;
* :func:`choose_int8_mode`: how onnxruntime int8 models are quantised for this CPU.

:func:`machine_record` / :func:`machine_header` are what every benchmark writes into its JSON
(key ``"machine"``) and prints above its table. Low layer: the standard library here, torch
imported inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import platform
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AMP_SETTINGS",
    "BF16_FEATURES",
    "FEATURES",
    "INT8_MODES",
    "VNNI_FEATURES",
    "Choice",
    "CudaDevice",
    "MachineInfo",
    "choose_amp",
    "choose_int8_mode",
    "cpu_bf16_refusal",
    "detect",
    "has_bf16",
    "has_vnni",
    "library_versions",
    "machine_header",
    "machine_record",
    "parse_cpuinfo",
]

#: The CPU features that change what is fast or exact here, in display order (the names of the
#: Linux ``/proc/cpuinfo`` flags).
FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
#: native bf16 dot products (oneDNN's bf16 convolutions and matrix products use them)
BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16"})
#: 8-bit dot products without the saturating VPMADDUBSW step of onnxruntime's u8s8 kernels
VNNI_FEATURES = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
#: ``torch.cpu.get_capabilities()`` key -> feature name
_TORCH_NAMES = {
    "avx2": "avx2",
    "fma3": "fma",
    "avx512_f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
}
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})

AMP_SETTINGS: tuple[str | bool, ...] = ("auto", True, False)
#: ``u8s8``: uint8 activations, int8 weights (onnxruntime's advice for CPUs with VNNI);
#: ``u8s8_reduce_range``: the same with 7-bit weights (its advice for x86 CPUs without VNNI);
#: ``s8s8_symmetric``: symmetric int8 activations and weights, zero point 0, fp32 biases -- what
#: TensorRT's explicit quantization takes (``auto`` picks it for TensorRT, never for the CPU).
INT8_MODES = ("u8s8", "u8s8_reduce_range", "s8s8_symmetric")
#: what bf16 without bf16 hardware costs (the GUN synth recipe, 2 cores of an AVX2-only Zen 3)
BF16_EMULATION_COST = "~4x slower: 5.3 s vs 1.2 s per training iteration on an AVX2-only Zen 3"


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    capability: str  # compute capability "major.minor"
    memory_gib: float


@dataclass(frozen=True)
class MachineInfo:
    """What :func:`detect` found. ``features``: the :data:`FEATURES` this CPU has;
    ``feature_source``: where they came from; ``torch_dispatch``: the ATen CPU kernel level
    (``torch.backends.cpu.get_cpu_capability()``); ``usable_cores``: the CPUs this process may
    run on (affinity / container limits)."""

    cpu_model: str
    cpu_id: str  # vendor family/model/stepping where the OS tells (a VM may hide the model name)
    architecture: str
    physical_cores: int
    logical_cores: int
    usable_cores: int
    features: frozenset[str]
    feature_source: str
    torch_dispatch: str
    cuda_devices: tuple[CudaDevice, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (features in :data:`FEATURES` order)."""
        out = dataclasses.asdict(self)
        out["features"] = [f for f in FEATURES if f in self.features]
        out["cuda_devices"] = [dataclasses.asdict(d) for d in self.cuda_devices]
        return out

    def summary(self) -> str:
        """One line: model, cores, architecture."""
        ident = f" ({self.cpu_id})" if self.cpu_id else ""
        return (
            f"{self.cpu_model}{ident}, {self.architecture}, {self.physical_cores} physical / "
            f"{self.logical_cores} logical cores ({self.usable_cores} usable)"
        )

    def feature_line(self) -> str:
        names = [f for f in FEATURES if f in self.features]
        return f"{' '.join(names) or 'none of ' + ', '.join(FEATURES)} (from {self.feature_source})"


@dataclass(frozen=True)
class Choice:
    """A hardware-dependent choice: ``value`` (``None``: the feature stays off), why it was
    made, and a warning when the setting works against the machine."""

    value: str | None
    reason: str
    warning: str = ""


# ------------------------------------------------------------------------------ detection
def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The first processor of a ``/proc/cpuinfo`` text: ``model``, ``id`` and ``flags``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    ident = [
        f"{k} {fields[n]}"
        for k, n in (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))
        if n in fields
    ]
    return {
        "model": fields.get("model name", ""),
        "id": " ".join(ident),
        "flags": frozenset(fields.get("flags", "").split()),
    }


def _read_cpuinfo() -> dict[str, Any]:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace"))
    except OSError:  # not Linux
        return parse_cpuinfo("")


def _torch_capabilities() -> Mapping[str, Any]:
    """``torch.cpu.get_capabilities()``; empty in a torch without it, and then
    every feature comes from ``/proc/cpuinfo``."""
    import torch

    get = getattr(torch.cpu, "get_capabilities", None)
    return get() if get is not None else {}


def _cuda_devices() -> tuple[CudaDevice, ...]:
    import torch

    if not torch.cuda.is_available():
        return ()
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(CudaDevice(i, p.name, f"{p.major}.{p.minor}", round(p.total_memory / 2**30, 1)))
    return tuple(out)


@functools.cache
def detect() -> MachineInfo:
    """This machine (computed once per process)."""
    import torch

    caps = _torch_capabilities()
    proc = _read_cpuinfo()
    arch = str(caps.get("architecture") or platform.machine())
    from_torch = {ours for key, ours in _TORCH_NAMES.items() if caps.get(key) is True}
    # the OS flags fill in only what torch does not report at all (a torch without
    # get_capabilities, or one that predates a feature)
    unnamed = {ours for key, ours in _TORCH_NAMES.items() if key not in caps}
    from_proc = unnamed & proc["flags"]
    source = "torch cpuinfo"
    if unnamed:
        all_proc = len(unnamed) == len(_TORCH_NAMES)
        source = "/proc/cpuinfo" if all_proc else "torch cpuinfo + /proc/cpuinfo"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return MachineInfo(
        cpu_model=str(caps.get("cpu_name") or proc["model"] or platform.processor() or arch),
        cpu_id=proc["id"],
        architecture=arch,
        physical_cores=int(caps.get("num_physical_cores") or os.cpu_count() or 1),
        logical_cores=int(caps.get("num_logical_cores") or os.cpu_count() or 1),
        usable_cores=usable,
        features=frozenset(from_torch | from_proc),
        feature_source=source,
        torch_dispatch=torch.backends.cpu.get_cpu_capability(),
        cuda_devices=_cuda_devices(),
    )


#: name -> distributions that provide it (the first installed one counts)
_VERSIONED: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnx": ("onnx",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python"),
    "rclpy": ("ros-rclpy", "rclpy"),  # the PyPI wheels, or a ROS 2 install's egg-info
}


def _dist_version(names: tuple[str, ...]) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def library_versions() -> dict[str, str]:
    """Python and the installed libraries that set the speed (``""``: not installed). From the
    package metadata: nothing is imported."""
    out = {"python": platform.python_version(), "seg_perception": _own_version()}
    out.update({name: _dist_version(dists) for name, dists in _VERSIONED.items()})
    if "torch" in sys.modules:  # the local build tag (e.g. +cu130) is only in torch itself
        out["torch"] = str(sys.modules["torch"].__version__)
    return out


def _own_version() -> str:
    from seg_perception import __version__

    return __version__


def machine_record() -> dict[str, Any]:
    """What a benchmark writes under its JSON key ``"machine"``."""
    return {**detect().as_dict(), "versions": library_versions()}


def machine_header() -> str:
    """What a benchmark prints above its table: CPU, cores, features, library versions."""
    info = detect()
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items() if v)
    lines = [f"machine: {info.summary()}", f"features: {info.feature_line()}"]
    lines += [f"cuda: {_cuda_line(info)}", f"versions: {versions}"]
    return "\n".join(lines)


def _cuda_line(info: MachineInfo) -> str:
    devices = [
        f"cuda:{d.index} {d.name} (sm {d.capability}, {d.memory_gib} GiB)"
        for d in info.cuda_devices
    ]
    return "; ".join(devices) or "none"


# ------------------------------------------------------------------------------ choices
def has_bf16(features: Collection[str]) -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX-BF16)."""
    return bool(BF16_FEATURES & set(features))


def has_vnni(features: Collection[str]) -> bool:
    """8-bit dot products in one instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return bool(VNNI_FEATURES & set(features))


def choose_amp(setting: str | bool, device_type: str, features: Collection[str]) -> Choice:
    """Training autocast dtype (``"bf16"``, ``"fp16"`` or ``None`` = fp32) for ``optim.amp``.

    ``auto``: fp16 on CUDA; bf16 on a CPU with bf16 hardware; else fp32. ``true``: fp16 on
    CUDA, bf16 on CPU -- with a warning where the CPU emulates bf16. ``false``: fp32.
    """
    if setting not in AMP_SETTINGS or not isinstance(setting, (str, bool)):
        raise ValueError(f"optim.amp must be auto, true or false, got {setting!r}")
    if setting is False:
        return Choice(None, "optim.amp is false")
    if device_type == "cuda":
        return Choice("fp16", f"optim.amp is {_yaml(setting)} on CUDA: fp16 with GradScaler")
    bf16 = has_bf16(features)
    kinds = "AVX512-BF16/AMX-BF16"
    if setting == "auto":
        if bf16:
            return Choice("bf16", f"optim.amp is auto and this CPU has {kinds}")
        return Choice(None, f"optim.amp is auto and this CPU lacks {kinds} (bf16 is emulated)")
    if bf16:
        return Choice("bf16", f"optim.amp is true; this CPU has {kinds}")
    return Choice(
        "bf16",
        "optim.amp is true",
        f"optim.amp is true but this CPU lacks {kinds}: bf16 autocast is emulated and slower "
        f"than fp32 ({BF16_EMULATION_COST}); set optim.amp to auto or false",
    )


def _yaml(setting: str | bool) -> str:
    return str(setting).lower() if isinstance(setting, bool) else setting


def cpu_bf16_refusal(features: Collection[str], cpu: str = "this CPU") -> str | None:
    """``None`` when the torch backend may run ``precision: bf16`` on this CPU, else why not.

    Refused rather than warned: without bf16 hardware oneDNN emulates bf16, which is slower
    than fp32 *and* less exact, so no setting is served by it; fp32 is the clear alternative.
    """
    if has_bf16(features):
        return None
    return (
        f"precision bf16 on CPU needs AVX512-BF16 or AMX-BF16, which {cpu} lacks (features: "
        f"{' '.join(f for f in FEATURES if f in features) or 'none'}); emulated bf16 is slower "
        f"than fp32 ({BF16_EMULATION_COST}) and less exact: use precision fp32"
    )


def choose_int8_mode(setting: str, features: Collection[str], architecture: str) -> Choice:
    """How onnxruntime int8 models are quantised: ``setting`` ``auto`` or one of
    :data:`INT8_MODES`.

    ``auto``: ``u8s8_reduce_range`` on x86 CPUs without VNNI, else ``u8s8``. Without VNNI
    onnxruntime's u8s8 kernels multiply with VPMADDUBSW, whose 16-bit pair sums saturate for
    8-bit weights; onnxruntime's ``quantize_static`` docstring: "x86/x64 CPU without VNNI [...]
    set ``reduce_range=True``. The ``reduce_range`` flag quantizes weights to 7-bit to reduce the
    risk of integer saturation on CPUs that typically lack the VNNI dot-product instruction;
    this is particularly helpful for per-channel weight quantization." With VNNI: "Use
    activation_type=QuantType.QUInt8 and weight_type=QuantType.QInt8 with reduce_range=False".
    """
    if setting != "auto":
        if setting not in INT8_MODES:
            raise ValueError(f"int8 mode {setting!r}; valid: auto, {', '.join(INT8_MODES)}")
        return Choice(setting, f"int8 mode {setting} set explicitly")
    if architecture.lower() not in _X86:
        return Choice("u8s8", f"int8 mode auto on {architecture}: u8s8 (no VPMADDUBSW)")
    if has_vnni(features):
        return Choice("u8s8", "int8 mode auto and this CPU has VNNI: u8s8 with 8-bit weights")
    return Choice(
        "u8s8_reduce_range",
        "int8 mode auto and this x86 CPU lacks VNNI (AVX512-VNNI/AVX-VNNI): 7-bit weights "
        "(reduce_range), as onnxruntime documents, so its u8s8 kernels cannot saturate",
    )
