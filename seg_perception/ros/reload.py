"""Run-time reload of the real-time engine when ``model``, ``weights``, ``backend``, ... change.

The request is checked at once (valid values, the weights file exists): a bad request is refused
and the parameter keeps its value. A good one is accepted and the new engine is built and warmed
in a thread while the old engine keeps serving; the two are swapped between frames. A build that
fails keeps the old engine, puts the parameters back to the values it runs with, and is reported
(log + the engine's diagnostics WARN with ``reload_error``).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from rclpy.parameter import Parameter

from seg_perception import config as cfgmod
from seg_perception.config_schema import RELOADABLE
from seg_perception.engines import EngineError, EngineSpec, semantic_spec
from seg_perception.labels import LabelTable
from seg_perception.pipeline import Pipeline
from seg_perception.ros.diagnostics import EngineHealth
from seg_perception.ros.pylog import forward_package_logging


class ReloadHost(Protocol):
    """What the reloader uses of the node (``SegNode``), so that it needs no import of it."""

    cfg: cfgmod.SegConfig
    labels: LabelTable
    cameras: Any
    pipeline: Pipeline
    pipeline_lock: threading.Lock
    semantic_health: EngineHealth

    def get_logger(self) -> Any: ...

    def set_parameters(self, parameters: list[Parameter]) -> Any: ...

    def log_note(self, model: str, note: str) -> None: ...


class EngineReloader:
    """Reloads ``node.pipeline``'s real-time engine on parameter changes (one at a time)."""

    def __init__(self, node: ReloadHost) -> None:
        self._node = node
        self._thread: threading.Thread | None = None
        self._pending: tuple[cfgmod.SegConfig, EngineSpec, str, dict[str, Any]] | None = None
        self._reverting = False
        self.reloads = 0  # successful reloads

    @property
    def busy(self) -> bool:
        return self._pending is not None or (self._thread is not None and self._thread.is_alive())

    def request(self, changes: dict[str, Any]) -> str | None:
        """Check a parameter change; start the reload. Returns None (accepted) or the reason
        for refusing it."""
        if self._reverting:
            return None
        node = self._node
        fixed = sorted(set(changes) - RELOADABLE)
        if fixed:
            return (
                f"{', '.join(fixed)}: cannot change at run time; restart the node with the new "
                f"value (run-time changes: {', '.join(sorted(RELOADABLE))})"
            )
        if self.busy:
            return "an engine reload is in progress; set the parameter again when it finished"
        values = {**node.cfg.flat(), **changes}
        try:
            new = cfgmod.validate(values, source="parameter change")
        except cfgmod.ConfigError as exc:
            return str(exc)
        try:  # a missing file or one holding another network is refused now, not after a build
            spec, note = semantic_spec(new, node.labels, max_batch=len(node.cameras))
        except EngineError as exc:
            return f"{exc}; keeping engine {node.pipeline.engine.name}"
        if all(new.get(k) == node.cfg.get(k) for k in RELOADABLE):
            return None
        self._pending = (new, spec, note, {k: node.cfg.get(k) for k in changes})
        return None

    def start_pending(self) -> None:
        """Start the accepted reload. Called from the node's post-set-parameters callback: rclpy
        stores the new values only after the on-set callback returned, so a build that fails at
        once must not put the old values back before that (they would be overwritten)."""
        if self._pending is None or self._reverting:  # reverting: the failed reload's own call
            return
        new, spec, note, old = self._pending
        self._thread = threading.Thread(
            target=self._reload, args=(new, spec, note, old), name="seg_reload", daemon=True
        )
        self._thread.start()
        self._pending = None

    def _reload(
        self, new: cfgmod.SegConfig, spec: EngineSpec, note: str, old: dict[str, Any]
    ) -> None:
        from seg_perception.engines import factory

        node = self._node
        health = node.semantic_health
        log = node.get_logger()
        log.info(f"reloading the real-time engine: {new.model} on {new.backend}/{new.precision}")
        health.state = "reloading"
        try:
            with forward_package_logging(log):
                engine = factory.build(spec)
            node.log_note(new.model, note)
            engine.warmup(new.warmup_frames)
        except Exception as exc:
            health.state = "loaded"
            health.reload_error = f"{type(exc).__name__}: {exc}"
            log.error(
                f"reload failed, still serving {node.pipeline.engine.name}: {health.reload_error}"
            )
            self._revert(old)
            return
        pipeline = node.pipeline.with_engine(engine)
        with node.pipeline_lock:  # between two frames
            previous, node.pipeline = node.pipeline, pipeline
            node.cfg = new  # differs from the running configuration only in RELOADABLE
        previous.engine.close()
        health.name, health.state, health.reload_error = engine.name, "loaded", ""
        self.reloads += 1
        log.info(f"reloaded: now serving {engine.name} (was {previous.engine.name})")

    def _revert(self, old: dict[str, Any]) -> None:
        """Put the parameters back to the values the running engine was built with."""
        self._reverting = True
        try:
            self._node.set_parameters([Parameter(k, value=v) for k, v in old.items()])
        finally:
            self._reverting = False

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
