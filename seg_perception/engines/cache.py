"""Content-addressed cache of derived artefacts: exported ONNX, its fp16 and int8 (Q/DQ) forms,
TensorRT engines.

Every artefact ``X`` is stored with a sidecar ``X.json`` holding the *key* it was built from and
the artefact's SHA-256. :func:`verify` trusts an artefact only when the sidecar exists, records
exactly the expected key, and the file's hash matches: a foreign, truncated or stale file (other
weights, TensorRT version, GPU, precision, shape range or calibration data) is rebuilt, never
loaded. Keys hash file *contents*, never paths or modification times.

Default location: ``$SEG_PERCEPTION_CACHE_DIR``, else ``$XDG_CACHE_HOME/seg_perception/engines``,
else ``~/.cache/seg_perception/engines``. Nothing here is ever committed (``.gitignore`` has
``*.onnx`` and ``*.engine``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seg_perception.atomic import write_text_atomic

__all__ = [
    "CACHE_ENV",
    "EngineKey",
    "default_cache_dir",
    "export_key",
    "fp16_onnx_key",
    "int8_onnx_key",
    "key_digest",
    "record",
    "sha256_file",
    "sidecar_path",
    "verify",
]

CACHE_ENV = "SEG_PERCEPTION_CACHE_DIR"
#: bump when the export code changes in a way that changes the ONNX graph for the same inputs.
#: 2: GUN's fusion sum as Add, its /4 input pooled from /2, the GUM grid scaled plane-wise.
#: 3: GUN's class ids through ``gum.guided_ids`` (bilinear sampling: the blend only where the 2x2
#: source cells disagree, instead of a K-channel GridSample and a full-resolution softmax).
#: 4: bilinear ``guided_ids`` samples once (the top-left cell's id, or -1 where the 2x2 cells
#: disagree, and its confidence, on a grid shifted in its constant part).
EXPORT_FORMAT = 4
TRT_PRECISIONS = ("fp32", "fp16", "int8")


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seg_perception" / "engines"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def key_digest(key: Mapping[str, Any], length: int = 32) -> str:
    """Short hex digest of a key mapping (canonical JSON, order-independent)."""
    return hashlib.sha256(_canonical(dict(key)).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class EngineKey:
    """What a TensorRT engine depends on; an engine built from other values is not reused.

    The engine is built strongly typed from ``onnx_sha256``'s graph, which carries the
    precision (an fp16 graph, or Q/DQ nodes whose scales come from the calibration data), so the
    ONNX hash covers the calibration too. ``precision`` names it for the file name and checks.
    An engine of another TensorRT version or GPU is rebuilt, never deserialised.
    """

    onnx_sha256: str
    tensorrt_version: str
    compute_capability: str
    precision: str
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    network: str = "strongly-typed"

    def __post_init__(self) -> None:
        if self.precision not in TRT_PRECISIONS:
            raise ValueError(
                f"EngineKey: precision {self.precision!r}; valid: {', '.join(TRT_PRECISIONS)}"
            )
        shapes = (self.min_shape, self.opt_shape, self.max_shape)
        if len({len(s) for s in shapes}) != 1 or not all(
            a <= b <= c for a, b, c in zip(*shapes, strict=True)
        ):
            raise ValueError(
                f"EngineKey: need min <= opt <= max shapes of one rank, got {self.min_shape}, "
                f"{self.opt_shape}, {self.max_shape}"
            )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("min_shape", "opt_shape", "max_shape"):
            d[k] = [int(v) for v in d[k]]
        return d

    def digest(self) -> str:
        return key_digest(self.as_dict())

    def file_name(self) -> str:
        sm = self.compute_capability.replace(".", "")
        return f"{self.precision}-sm{sm}-{self.digest()}.engine"


def export_key(
    *,
    kind: str,
    model: str,
    switches: Mapping[str, Any],
    weights_sha256: str | None,
    input_hw: tuple[int, int],
    num_classes: int,
    opset: int,
    torch_version: str,
    dynamic_batch: bool,
    tta: str = "none",
) -> dict[str, Any]:
    """Key of an ONNX export: the weights' content hash (or ``None`` = seeded random init, which
    depends on the torch version), the model and its switches, input size and class count, and a
    test-time procedure other than ``none`` (absent from the key otherwise, so that the keys of
    plain exports stay as they were)."""
    extra = {} if tta == "none" else {"tta": tta}
    return {
        **extra,
        "format": EXPORT_FORMAT,
        "kind": kind,
        "model": model,
        "switches": {str(k): switches[k] for k in sorted(switches)},
        "weights_sha256": weights_sha256 or "random-init-seed0",
        "input_hw": [int(input_hw[0]), int(input_hw[1])],
        "num_classes": int(num_classes),
        "opset": int(opset),
        "torch": torch_version,
        "dynamic_batch": bool(dynamic_batch),
    }


def fp16_onnx_key(*, source_sha256: str, revision: int) -> dict[str, Any]:
    """Key of the fp16 form of an ONNX export (:mod:`seg_perception.engines.fp16`)."""
    return {"source_sha256": source_sha256, "fp16": "stem-head-fp32", "revision": int(revision)}


def int8_onnx_key(
    *, source_sha256: str, calib_sha256: str, settings: Mapping[str, Any], onnxruntime: str
) -> dict[str, Any]:
    """Key of the int8 Q/DQ form of an ONNX export: its source, the calibration images, the
    quantisation settings (mode included, :func:`~seg_perception.engines.quantize.
    quantization_settings`) and the quantiser's (onnxruntime's) version."""
    return {
        "source_sha256": source_sha256,
        "calib_sha256": calib_sha256,
        "settings": dict(settings),
        "onnxruntime": onnxruntime,
    }


def sidecar_path(artefact: str | os.PathLike[str]) -> Path:
    p = Path(artefact)
    return p.with_name(p.name + ".json")


def verify(artefact: str | os.PathLike[str], key: Mapping[str, Any]) -> str | None:
    """``None`` if ``artefact`` may be used for ``key``; else why it must be (re)built."""
    p = Path(artefact)
    if not p.is_file():
        return f"{p} does not exist"
    side = sidecar_path(p)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{p} has no key file {side.name} (foreign or interrupted build)"
    except (OSError, ValueError) as exc:
        return f"{side} is unreadable: {exc}"
    if not isinstance(meta, dict) or not isinstance(meta.get("key"), dict):
        return f"{side} does not hold a key"
    want = json.loads(_canonical(dict(key)))
    if meta["key"] != want:
        fields = sorted(
            k for k in set(want) | set(meta["key"]) if meta["key"].get(k) != want.get(k)
        )
        return f"{p} was built for another key (differs in {', '.join(fields)})"
    digest = sha256_file(p)
    if meta.get("sha256") != digest:
        return f"{p} does not match the hash in {side.name} (modified or foreign file)"
    return None


def record(artefact: str | os.PathLike[str], key: Mapping[str, Any]) -> Path:
    """Write the sidecar of a freshly built ``artefact`` (after the artefact itself)."""
    p = Path(artefact)
    meta = {"key": json.loads(_canonical(dict(key))), "sha256": sha256_file(p), "file": p.name}
    return write_text_atomic(sidecar_path(p), json.dumps(meta, indent=1, sort_keys=True))
