"""Path arguments of the command line: exists, right kind, clear one-line errors.

Two ways to use one set of rules (:func:`path_problem`):

* as argparse actions (``action=ExistingFile``, :class:`ExistingDir`, :class:`ExistingPath`,
  :class:`ExistingBag`, :class:`OutputFile`, :class:`OutputDir`, :func:`existing_path_or`):
  the parse stops with the one line ``<prog>: error: argument --bag: <problem>`` and exit
  status 2, before any heavy import or work;
* as :func:`check_path` inside a command's ``run`` for arguments whose kind depends on other
  arguments (e.g. ``train --export-weights RUN_OR_CHECKPOINT OUT``); it raises
  :class:`PathArgumentError` (a ``ValueError``, which ``seg_perception.cli.main`` prints as one
  line with exit status 2).

Arguments are stored unchanged (``str``), so commands keep their own ``Path(...)`` handling.
Outputs that do not exist yet are fine (the commands create them); an output whose path is
taken by the wrong kind (a file where a folder goes, or the reverse) is an error. Nothing here
imports more than the standard library, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seg_perception.errors import SegError

__all__ = [
    "KINDS",
    "ExistingBag",
    "ExistingDir",
    "ExistingFile",
    "ExistingPath",
    "OutputDir",
    "OutputFile",
    "PathAction",
    "PathArgumentError",
    "check_path",
    "existing_path_or",
    "path_problem",
]

#: first bytes of the two rosbag2 storage formats (what ``rosbags`` opens as a single file)
_BAG_MAGIC = {".mcap": b"\x89MCAP0\r\n", ".db3": b"SQLite format 3\x00"}

#: the kinds :func:`path_problem` knows
KINDS = ("file", "dir", "path", "bag", "output_file", "output_dir")


class PathArgumentError(SegError, ValueError):
    """A path argument does not exist or is not the expected kind; the message names both."""


def _taken_ancestor(p: Path) -> Path | None:
    """The nearest existing ancestor of ``p`` if it is not a folder (``p`` cannot be made)."""
    for parent in p.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _bag_problem(p: Path) -> str | None:
    if p.is_dir():
        if not (p / "metadata.yaml").is_file():
            return f"{p} is a folder without metadata.yaml, not a rosbag2 bag"
        return None
    magic = _BAG_MAGIC.get(p.suffix)
    if magic is None:
        return f"{p} is not a rosbag2 bag (expected a bag folder, a .mcap or a .db3 file)"
    try:
        with p.open("rb") as fh:
            head = fh.read(len(magic))
    except OSError as exc:
        return f"cannot read {p}: {exc.strerror or exc}"
    if head != magic:
        return f"{p} is not a {p.suffix} bag file (its first bytes are not the {p.suffix} magic)"
    return None


def path_problem(value: str, kind: str) -> str | None:
    """What is wrong with ``value`` as a path of ``kind`` (see :data:`KINDS`), or ``None``.

    ``file`` / ``dir`` / ``path``: must exist as a file / a folder / either; ``bag``: a rosbag2
    folder (with ``metadata.yaml``) or a ``.mcap`` / ``.db3`` file; ``output_file`` /
    ``output_dir``: may be missing, but must not exist as the other kind, and no existing
    ancestor may be a file.
    """
    if kind not in KINDS:
        raise ValueError(f"path_problem: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not str(value):
        return "empty path"
    p = Path(value)
    if kind.startswith("output_"):
        blocker = _taken_ancestor(p)
        if blocker is not None:
            return f"cannot create {p}: {blocker} is a file, not a folder"
        if kind == "output_file" and p.is_dir():
            return f"{p} is a folder, expected a file path"
        if kind == "output_dir" and p.exists() and not p.is_dir():
            return f"{p} is a file, expected a folder"
        return None
    if not p.exists():
        noun = {"file": "file", "dir": "folder"}.get(kind, "file or folder")
        return f"no such {noun}: {p}"
    if kind == "file" and not p.is_file():
        return f"{p} is {'a folder' if p.is_dir() else 'not a regular file'}, expected a file"
    if kind == "dir" and not p.is_dir():
        return f"{p} is a file, expected a folder"
    if kind == "bag":
        return _bag_problem(p)
    return None


def check_path(value: str, kind: str, arg: str) -> str:
    """``value`` if it is a valid ``kind`` path, else :class:`PathArgumentError` naming ``arg``."""
    problem = path_problem(value, kind)
    if problem is not None:
        raise PathArgumentError(f"{arg}: {problem}")
    return value


class PathAction(argparse.Action):
    """argparse action: check the path(s) given for the option, then store them unchanged.

    A problem ends the program with one line on stderr, ``<prog>: error: argument <option>:
    <problem>``, and exit status 2 (argparse's status for bad arguments), without the usage
    block that a ``type=`` error would print first. Defaults are not checked (they are the
    command's own); an option with ``nargs="?"`` given without a value stores its ``const``
    unchecked. Subclasses set :attr:`kind` (see :data:`KINDS`) and may allow :attr:`keywords`.
    """

    kind = "path"
    keywords: tuple[str, ...] = ()

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given = values if isinstance(values, list) else [values]
        for value in given:
            if value is None or (self.nargs == "?" and value == self.const):
                continue
            if str(value) in self.keywords:
                continue
            problem = path_problem(str(value), self.kind)
            if problem is not None:
                if self.keywords:
                    problem += f" (nor {' or '.join(repr(k) for k in self.keywords)})"
                name = option_string or self.metavar or self.dest
                parser.exit(2, f"{parser.prog}: error: argument {name}: {problem}\n")
        setattr(namespace, self.dest, values)


class ExistingFile(PathAction):
    """An existing regular file."""

    kind = "file"


class ExistingDir(PathAction):
    """An existing folder."""

    kind = "dir"


class ExistingPath(PathAction):
    """An existing file or folder."""

    kind = "path"


class ExistingBag(PathAction):
    """A rosbag2 folder (with ``metadata.yaml``) or a ``.mcap`` / ``.db3`` file."""

    kind = "bag"


class OutputFile(PathAction):
    """A file to write: may be missing, must not be a folder."""

    kind = "output_file"


class OutputDir(PathAction):
    """A folder to write: may be missing, must not be a file."""

    kind = "output_dir"


def existing_path_or(*keywords: str) -> type[PathAction]:
    """Action: one of ``keywords`` as given (e.g. ``"synthetic"``), else an existing path."""
    return type("ExistingPathOr", (ExistingPath,), {"keywords": tuple(keywords)})
