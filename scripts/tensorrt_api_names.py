#!/usr/bin/env python3
"""Write the name list of the real TensorRT Python API of given versions (no GPU needed).

    python scripts/tensorrt_api_names.py                 # the supported versions (SUPPORTED)
    python scripts/tensorrt_api_names.py 11.5.0.1 ...    # others

For each version it downloads NVIDIA's ``tensorrt-cu12-bindings`` wheel from PyPI (~1.2 MB, the
pybind11 module alone), imports it against stub ``libnvinfer`` / ``libnvinfer_plugin`` /
``libnvonnxparser`` libraries compiled here (the module's only undefined symbols from them are a
handful of ``create*_INTERNAL`` / registry entry points, which module import never calls), and
writes ``test/data/tensorrt_api/<version>.txt``: every public class, function, enum member,
method and property of the module, one dotted name a line, methods and properties with the
TensorRT class they return (``Builder.create_network -> INetworkDefinition``), and the
overridable methods of interface classes (``IOutputAllocator.notify_shape [override]``) that
pybind11 keeps in the class docstring only. Nothing of the wheel is kept: only the names.

Why not install the real package in the tests: ``tensorrt`` needs the ``tensorrt-cu*-libs``
wheel (gigabytes of CUDA libraries) to import, and a GPU to do anything; the bindings alone
import only with their libraries present. The lists are small text files, regenerated with this
script when a TensorRT version is added. ``test/test_tensorrt_api.py`` checks the backend and
the builder against them. Needs: pip, gcc, binutils (nm, readelf), Linux x86_64, Python 3.11.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: TensorRT versions the package supports: the first and last 10.x, the 10.x of the type stubs
#: (tensorrt-stubs 10.13) and the first and current 11.x
SUPPORTED = ("10.0.1", "10.13.3.9", "10.16.1.11", "11.0.0.114", "11.4.0.106")
OUT = Path(__file__).resolve().parents[1] / "test" / "data" / "tensorrt_api"

# Runs in a child process with the stub libraries on LD_LIBRARY_PATH; prints the name list.
DUMP = r"""
import re, sys
import tensorrt_bindings as trt

def clean(t):
    t = t.strip()
    t = re.sub(r"^(typing\.)?Optional\[(.*)\]$", r"\2", t)
    t = re.sub(r"\s*\|\s*None$", "", t)
    t = re.sub(r"^(tensorrt_bindings|tensorrt)(\.tensorrt)?\.", "", t)
    known = re.fullmatch(r"[A-Za-z_]\w*", t) and isinstance(getattr(trt, t, None), type)
    return t if known else ""

def returns(doc, name):
    for line in (doc or "").splitlines():
        m = re.match(r"^\s*(?:\d+\.\s*)?" + re.escape(name) + r"\((.*)\)\s*->\s*(.+?)\s*$", line)
        if m:
            r = clean(m.group(2))
            if r:
                return r
    return ""

lines = set()

def walk(obj, prefix, depth):
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            attr = getattr(obj, name)
        except Exception:
            continue
        full = prefix + name
        ret = ""
        mro = getattr(obj, "__mro__", ())
        raw = next((k.__dict__[name] for k in mro if name in k.__dict__), None)
        if isinstance(raw, property) and raw.fget is not None:
            ret = returns(raw.fget.__doc__, "")
        elif callable(attr) and not isinstance(attr, type):
            ret = returns(getattr(attr, "__doc__", ""), name)
        lines.add(full + (" -> " + ret if ret else ""))
        if isinstance(attr, type) and depth < 3 and attr.__module__.startswith("tensorrt"):
            walk(attr, full + ".", depth + 1)
            for m in re.finditer(r"def (\w+)\(self", attr.__doc__ or ""):
                if not m.group(1).startswith("_") and not hasattr(attr, m.group(1)):
                    lines.add(full + "." + m.group(1) + " [override]")

walk(trt, "", 0)
print(trt.__version__)
print("\n".join(sorted(lines)))
"""


def run(cmd: list[str], **kw: object) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout  # type: ignore[call-overload, no-any-return]


def download(version: str, dest: Path) -> Path:
    run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
         "--platform", "manylinux_2_17_x86_64", "-d", str(dest),
         f"tensorrt-cu12-bindings=={version}"]
    )  # fmt: skip
    (wheel,) = dest.glob("tensorrt_cu12_bindings-*.whl")
    return wheel


def stub_libraries(module: Path, dest: Path) -> None:
    """Compile a stub for every NVIDIA library ``module`` links against, defining the symbols
    it leaves undefined (unversioned, i.e. not from libc / libstdc++, and not Python's)."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(lib(?:nv\w+)\.so\.\d+)\]",
                        run(["readelf", "-d", str(module)]))  # fmt: skip
    symbols = [
        line.split()[-1]
        for line in run(["nm", "-D", "--undefined-only", str(module)]).splitlines()
        if line.split()[0] == "U" and "@" not in line.split()[-1]
        and not line.split()[-1].startswith(("Py", "_Py"))
    ]  # fmt: skip
    source = dest / "stub.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
    for lib in needed:
        run(["gcc", "-shared", "-fPIC", "-o", str(dest / lib), str(source)])


def names(version: str) -> tuple[str, str, str]:
    """``(wheel file name, its sha256, the name list)`` of ``version``."""
    with tempfile.TemporaryDirectory(prefix="trt_api_") as tmp:
        root = Path(tmp)
        wheel = download(version, root)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        pkg = root / "pkg"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(pkg)
        (module,) = (pkg / "tensorrt_bindings").glob("tensorrt*.so")
        libs = root / "libs"
        libs.mkdir()
        stub_libraries(module, libs)
        env = {**os.environ, "LD_LIBRARY_PATH": str(libs), "PYTHONPATH": str(pkg)}
        out = run([sys.executable, "-c", DUMP], env=env, cwd=tmp)
    got, _, body = out.partition("\n")
    if got.strip() != version:
        raise SystemExit(f"{wheel.name}: imported version {got!r}, expected {version}")
    return wheel.name, digest, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", default=list(SUPPORTED))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for version in args.versions:
        wheel, digest, body = names(version)
        header = (
            f"# TensorRT {version} Python API names, generated by scripts/tensorrt_api_names.py\n"
            f"# from {wheel} (sha256 {digest})\n"
        )
        path = args.out / f"{version}.txt"
        path.write_text(header + body.strip() + "\n", encoding="utf-8")
        print(f"{path}: {body.count(chr(10)) + 1} names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
