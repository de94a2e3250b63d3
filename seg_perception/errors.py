"""``SegError``: the base of every *expected* failure (bad file, parameter, topic, data).

Commands let these reach :func:`seg_perception.cli.main`, which prints the message and exits
with status 2, no traceback. Anything else is a bug and keeps its traceback. Each subclass also
keeps the builtin base its callers already catch (``ValueError`` / ``RuntimeError``).
"""

from __future__ import annotations

__all__ = ["SegError"]


class SegError(Exception):
    """An expected failure; the message names the file / parameter / topic and the fix."""
