"""TensorRT backend without a GPU: cache key, cache verification, calibration batching, profile
shapes, I/O name mapping, mypy against tensorrt-stubs; GPU tests skip without TensorRT + CUDA."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from seg_perception.engines.base import EngineError
from seg_perception.engines.cache import EngineKey, record, sidecar_path, verify
from seg_perception.engines.calibration import batches_sha256, calibration_batches
from seg_perception.engines.tensorrt_backend import (
    Profile,
    check_io,
    engine_key,
    io_tensors,
    profile_shapes,
    tensorrt_available,
)

REPO = Path(__file__).resolve().parents[1]
HAS_TRT = tensorrt_available()


# ------------------------------------------------------------------------------ cache key
BASE = EngineKey(
    onnx_sha256="a" * 64,
    tensorrt_version="10.13.0.35",
    compute_capability="8.6",
    precision="int8",
    input_name="image",
    min_shape=(1, 64, 128, 3),
    opt_shape=(2, 64, 128, 3),
    max_shape=(2, 64, 128, 3),
)
CHANGES = {
    "onnx_sha256": "b" * 64,
    "tensorrt_version": "10.14.1.48",
    "compute_capability": "8.9",
    "precision": "fp16",
    "input_name": "input",
    "min_shape": (2, 64, 128, 3),
    "opt_shape": (1, 64, 128, 3),
    "max_shape": (4, 64, 128, 3),
    "network": "weakly-typed",  # an engine of the old weakly typed builder is rebuilt
}


def test_cache_key_changes_with_each_input_and_only_with_them() -> None:
    assert set(CHANGES) == {f.name for f in dataclasses.fields(EngineKey)}  # every input varied
    digests = {"base": BASE.digest()}
    for name, value in CHANGES.items():
        digests[name] = dataclasses.replace(BASE, **{name: value}).digest()
    assert len(set(digests.values())) == len(digests), digests
    # only them: an equal key built anew (other tuple/list types) has the same digest and name
    same = EngineKey(**{**BASE.as_dict(), "min_shape": [1, 64, 128, 3]})  # type: ignore[arg-type]
    assert same.digest() == BASE.digest()
    assert same.file_name() == BASE.file_name()


def test_engine_key_hashes_content_not_path_or_time(tmp_path: Path) -> None:
    a = tmp_path / "a.onnx"
    a.write_bytes(b"onnx bytes")
    b = tmp_path / "sub" / "b.onnx"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    os.utime(b, (1, 1))
    prof = profile_shapes([-1, 64, 128, 3], 2)
    kw = dict(precision="fp16", profile=prof, input_name="image", tensorrt_version="10",
              compute_capability="8.6")  # fmt: skip
    assert engine_key(a, **kw) == engine_key(b, **kw)
    b.write_bytes(b"other bytes")
    assert engine_key(a, **kw).digest() != engine_key(b, **kw).digest()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"precision": "bf16"}, "precision 'bf16'"),
        ({"min_shape": (3, 64, 128, 3)}, "min <= opt <= max"),
        ({"max_shape": (2, 64, 128)}, "one rank"),
    ],
)
def test_cache_key_rejects_inconsistent_values(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(BASE, **change)


def test_cache_verify_trusts_only_a_recorded_matching_file(tmp_path: Path) -> None:
    key = BASE.as_dict()
    engine = tmp_path / BASE.file_name()
    assert "does not exist" in verify(engine, key)
    engine.write_bytes(b"serialized engine")
    assert "no key file" in verify(engine, key)  # a foreign file dropped into the cache
    record(engine, key)
    assert verify(engine, key) is None
    other = dataclasses.replace(BASE, compute_capability="9.0").as_dict()
    reason = verify(engine, other)
    assert "another key" in reason and "compute_capability" in reason
    engine.write_bytes(b"serialized engine from elsewhere")  # same name, other content
    assert "hash" in verify(engine, key)
    sidecar_path(engine).write_text("{not json")
    assert "unreadable" in verify(engine, key)


# ------------------------------------------------------------------------------ calibration
def _images(n: int, hw: tuple[int, int] = (8, 16)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


def test_calibration_batches_full_batches_in_order() -> None:
    imgs = _images(5)
    batches = calibration_batches(imgs, batch_size=2, input_hw=(8, 16))
    assert [b.shape for b in batches] == [(2, 8, 16, 3)] * 3
    assert all(b.dtype == np.uint8 for b in batches)
    flat = [img for b in batches for img in b]
    for got, want in zip(flat, [*imgs, imgs[0]], strict=True):  # last batch wraps to the start
        np.testing.assert_array_equal(got, want)
    one = calibration_batches(imgs[:1], batch_size=3, input_hw=(8, 16))
    assert len(one) == 1 and all(np.array_equal(i, imgs[0]) for i in one[0])


def test_calibration_batches_resize_and_errors() -> None:
    big = _images(2, hw=(16, 32))
    batches = calibration_batches(big, batch_size=2, input_hw=(8, 16))
    assert batches[0].shape == (2, 8, 16, 3)
    # area resizing of a constant image keeps the constant
    const = np.full((16, 32, 3), 77, np.uint8)
    assert np.all(calibration_batches([const], batch_size=1, input_hw=(8, 16))[0] == 77)
    with pytest.raises(ValueError, match="batch size"):
        calibration_batches(big, batch_size=0, input_hw=(8, 16))
    with pytest.raises(ValueError, match="no calibration images"):
        calibration_batches([], batch_size=1, input_hw=(8, 16))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        calibration_batches([np.zeros((8, 16, 3), np.float32)], batch_size=1, input_hw=(8, 16))


def test_calibration_hash_follows_content_and_order() -> None:
    batches = calibration_batches(_images(4), batch_size=2, input_hw=(8, 16))
    h = batches_sha256(batches)
    assert h == batches_sha256([b.copy() for b in batches])
    assert h != batches_sha256(batches[::-1])
    changed = [b.copy() for b in batches]
    changed[1][0, 0, 0, 0] ^= 1
    assert h != batches_sha256(changed)


# ------------------------------------------------------------------------------ profile shapes
def test_profile_shapes_dynamic_and_static_batch() -> None:
    assert profile_shapes(["batch", 64, 128, 3], 4) == Profile(
        (1, 64, 128, 3), (4, 64, 128, 3), (4, 64, 128, 3)
    )
    assert profile_shapes([-1, 64, 128, 3], 4, opt_batch=2).opt == (2, 64, 128, 3)
    assert profile_shapes([None, 8, 8, 3], 1).max == (1, 8, 8, 3)
    static = profile_shapes([1, 64, 128, 3], 8)  # the panoptic export: batch fixed to 1
    assert static.min == static.opt == static.max == (1, 64, 128, 3)


@pytest.mark.parametrize(
    ("shape", "max_batch", "opt", "match"),
    [
        (["batch", "h", 128, 3], 2, None, "static H, W, C"),
        ([-1, 64, 128], 2, None, "static H, W, C"),
        ([-1, 64, 128, 3], 0, None, "max_batch must be >= 1"),
        ([-1, 64, 128, 3], 2, 3, "opt batch 3 not in 1..2"),
    ],
)
def test_profile_shapes_errors(shape: list, max_batch: int, opt: int | None, match: str) -> None:
    with pytest.raises(EngineError, match=match):
        profile_shapes(shape, max_batch, opt)


# ------------------------------------------------------------------------------ I/O mapping
class FakeEngine:
    """Duck-typed ``trt.ICudaEngine``: modes and dtypes are objects with a ``name``."""

    def __init__(self, tensors: list[tuple[str, str, str, tuple[int, ...]]]) -> None:
        self.tensors = tensors

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return self.tensors[index][0]

    def _find(self, name: str) -> tuple[str, str, str, tuple[int, ...]]:
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_mode(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=self._find(name)[1])

    def get_tensor_dtype(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=self._find(name)[2])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._find(name)[3]


SEMANTIC = [
    ("image", "INPUT", "UINT8", (-1, 64, 128, 3)),
    ("confidence", "OUTPUT", "FLOAT", (-1, 64, 128)),
    ("class_ids", "OUTPUT", "UINT8", (-1, 64, 128)),
]


def test_io_mapping_by_name() -> None:
    io = io_tensors(FakeEngine(SEMANTIC))
    assert list(io) == ["image", "confidence", "class_ids"]  # engine order, looked up by name
    assert io["image"].is_input and not io["class_ids"].is_input
    assert (io["confidence"].dtype, io["class_ids"].dtype) == ("float32", "uint8")
    assert io["class_ids"].shape == (-1, 64, 128)
    inp, outs = check_io(io, source="e.engine", expected_outputs=["class_ids", "confidence"])
    assert inp.name == "image" and {o.name for o in outs} == {"class_ids", "confidence"}
    panoptic = [
        ("image", "INPUT", "UINT8", (1, 64, 128, 3)),
        ("boxes", "OUTPUT", "FLOAT", (-1, 4)),
        ("labels", "OUTPUT", "INT64", (-1,)),
        ("masks", "OUTPUT", "FLOAT", (-1, 1, 28, 28)),
    ]
    io = io_tensors(FakeEngine(panoptic))
    assert io["labels"].dtype == "int64" and io["masks"].shape == (-1, 1, 28, 28)


def test_io_mapping_errors_name_the_engine_and_mismatch() -> None:
    io = io_tensors(FakeEngine(SEMANTIC))
    with pytest.raises(EngineError, match=r"x\.engine: missing output tensor\(s\) \['logits'\]"):
        check_io(io, source="x.engine", expected_outputs=["logits"])
    float_in = [("image", "INPUT", "FLOAT", (-1, 3, 64, 128)), *SEMANTIC[1:]]
    with pytest.raises(EngineError, match=r"x\.engine: input 'image' must be uint8"):
        check_io(io_tensors(FakeEngine(float_in)), source="x.engine")
    two_in = [*SEMANTIC, ("mask", "INPUT", "UINT8", (-1, 64, 128))]
    with pytest.raises(EngineError, match="expected one input tensor"):
        check_io(io_tensors(FakeEngine(two_in)), source="x.engine")
    with pytest.raises(EngineError, match="unsupported type FP8"):
        io_tensors(FakeEngine([("image", "INPUT", "FP8", (1, 2, 2, 3))]))


# ------------------------------------------------------------------------------ mypy
STUB_FILES = (
    "tensorrt/__init__.pyi",
    "tensorrt_bindings/__init__.pyi",
    "tensorrt_bindings/tensorrt.pyi",
)
_DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*(?:->.*)?:\s*(?:\.\.\.)?\s*)$")


def _split_top(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur] if cur.strip() else out


def _fix_def(line: str) -> str:
    """Give a default to parameters that follow defaulted ones (a stub generator bug)."""
    m = _DEF.match(line)
    if not m:
        return line
    seen, params = False, []
    for p in _split_top(m.group(2)):
        core = p.strip()
        if core.startswith("*"):
            seen = seen and core != "*"
        elif "=" in re.sub(r"[\[(].*[\])]", "", core):
            seen = True
        elif seen:
            p += " = ..."
        params.append(p)
    return m.group(1) + ",".join(params) + m.group(3)


def sanitized_stubs(dest: Path) -> Path:
    """Copy tensorrt-stubs 10.13 into ``dest`` with its syntax errors fixed mechanically.

    The published stubs do not parse: parameters named ``in`` (a keyword) and non-default
    parameters after default ones (``add_scale_nd``). Both are renamed / defaulted; nothing
    else changes, so the backend is checked against the stubs' real signatures.
    """
    import tensorrt_stubs  # the stub distribution; its .pyi files sit beside it

    site = Path(tensorrt_stubs.__file__).resolve().parents[1]
    for rel in STUB_FILES:
        src = (site / rel).read_text(encoding="utf-8")
        src = re.sub(r"(?<=[(,\s])in(?=\s*:)", "in_", src)
        src = "\n".join(_fix_def(line) for line in src.splitlines()) + "\n"
        ast.parse(src)  # the result must be valid Python
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(src, encoding="utf-8")
    return dest


def _mypy(files: list[Path], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    stubs = sanitized_stubs(tmp_path / "stubs")
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.11\nfollow_imports = silent\n"
        f"mypy_path = {stubs}\ndisallow_untyped_defs = True\ncheck_untyped_defs = True\n"
        "warn_unused_ignores = True\nwarn_redundant_casts = True\n"
        # torch is typed but huge; its calls are Any here (the TensorRT API is what we check)
        "[mypy-torch.*]\nfollow_imports = skip\n"
        # the stubs themselves have semantic errors (a module-level ``bool`` shadows the type)
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\nignore_errors = True\n"
        "[mypy-tensorrt_libs]\nignore_missing_imports = True\n"
    )
    cache = REPO / ".mypy_cache" / "trt-stubs-test"
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(cache),
         *map(str, files)],
        capture_output=True, text=True, cwd=REPO, timeout=240, check=False,
    )  # fmt: skip


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_stubs") is None or importlib.util.find_spec("mypy") is None,
    reason="needs tensorrt-stubs and mypy",
)
def test_mypy_passes_on_tensorrt_backend_against_stubs(tmp_path: Path) -> None:
    files = [
        REPO / "seg_perception/engines/tensorrt_backend.py",
        REPO / "seg_perception/engines/tensorrt_build.py",
    ]
    # control: the same check rejects misuse of the TensorRT API, so it is not vacuous
    bad = tmp_path / "bad_trt_use.py"
    bad.write_text(
        "import tensorrt as trt\n\n\ndef f(ctx: trt.IExecutionContext) -> bool:\n"
        "    return ctx.execute_async_v3('stream')\n"
    )
    res = _mypy([*files, bad], tmp_path)
    errors = [line for line in res.stdout.splitlines() if ": error:" in line]
    assert all(line.startswith(str(bad.name)) or "bad_trt_use" in line for line in errors), (
        res.stdout + res.stderr
    )
    assert any("execute_async_v3" in line and "int" in line for line in errors), res.stdout


# ------------------------------------------------------------------------------ without TensorRT
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_says_so(tmp_path: Path) -> None:
    from seg_perception.engines.tensorrt_backend import TensorRTEngine
    from seg_perception.engines.tensorrt_build import load_or_build

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    with pytest.raises(EngineError, match="TensorRT Python package is not installed"):
        load_or_build(onnx_file, cache_dir=tmp_path, precision="fp16")
    with pytest.raises(EngineError, match="TensorRT Python package is not installed"):
        TensorRTEngine(tmp_path / "x.engine")


# ------------------------------------------------------------------------------ GPU
def _gpu_ready() -> bool:
    if not HAS_TRT:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs TensorRT and a CUDA GPU")
def test_foreign_engine_file_is_rebuilt(tmp_path: Path) -> None:  # pragma: no cover - GPU only
    import torch

    from seg_perception.engines.factory import ensure_fp16_onnx
    from seg_perception.engines.tensorrt_backend import TensorRTEngine
    from seg_perception.engines.tensorrt_build import load_or_build
    from seg_perception.networks.export import export_onnx
    from seg_perception.networks.gun import build_gun

    torch.manual_seed(0)
    fp32 = export_onnx(build_gun().eval(), tmp_path / "gun.onnx", input_hw=(64, 128))
    onnx_file = ensure_fp16_onnx(fp32, cache_dir=tmp_path)
    path = load_or_build(onnx_file, cache_dir=tmp_path, precision="fp16", max_batch=2)
    built = path.read_bytes()
    path.write_bytes(b"foreign engine bytes")  # same name, not what the key file records
    again = load_or_build(onnx_file, cache_dir=tmp_path, precision="fp16", max_batch=2)
    assert again == path and again.read_bytes() != b"foreign engine bytes"
    assert (
        verify(again, {**__import__("json").loads(sidecar_path(again).read_text())["key"]}) is None
    )
    engine = TensorRTEngine(again, expected_outputs=["class_ids", "confidence"])
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 128, 3), dtype=np.uint8)
    out = engine.infer(x)
    assert out["class_ids"].shape == (2, 64, 128) and len(built) > 0
