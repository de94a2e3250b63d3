"""Atomic file output: write to a temporary sibling, fsync, then rename over the target.

A crash or an exception at any point leaves either the previous file or nothing, never a
half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``.

    With ``directory=True`` the temporary path is an empty directory (bags are directories).
    The temporary path keeps ``target``'s suffix so that format-sniffing writers still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if not directory:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if directory and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | Path, text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))
