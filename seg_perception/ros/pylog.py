"""Python ``logging`` of the package's lower layers, shown through a node's rclpy logger.

The engines (ONNX export, int8 quantisation, TensorRT builds) and the networks log with the
standard ``logging`` module, as libraries do. While a node prepares an engine, its records
of level INFO and above go to the node's rclpy logger, so that a first start, which exports and
builds for seconds to minutes, says what it is doing in the node's own log lines.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["forward_package_logging"]

PACKAGE_LOGGER = "seg_perception"


class _RclpyHandler(logging.Handler):
    """A logging handler writing each record through an rclpy logger at the matching level."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__(logging.INFO)
        self._ros = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.ERROR:
                self._ros.error(text)
            elif record.levelno >= logging.WARNING:
                self._ros.warning(text)
            else:
                self._ros.info(text)
        except Exception:  # a log line must never break an engine build
            self.handleError(record)


@contextlib.contextmanager
def forward_package_logging(ros_logger: Any) -> Iterator[None]:
    """Within the block, INFO+ records of the ``seg_perception`` loggers go to ``ros_logger``
    (``node.get_logger()``) and not to Python's default stderr handler."""
    pkg = logging.getLogger(PACKAGE_LOGGER)
    handler = _RclpyHandler(ros_logger)
    old_level, old_propagate = pkg.level, pkg.propagate
    pkg.addHandler(handler)
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    pkg.propagate = False
    try:
        yield
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)
        pkg.propagate = old_propagate
