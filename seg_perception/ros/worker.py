"""A one-slot mailbox served by a worker thread: the latest-frame policy of the node."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class LatestWorker:
    """Runs ``handler(item)`` in its own thread on the newest item offered.

    ``offer`` never blocks: an item still waiting when a newer one arrives is replaced and
    ``on_replaced`` is called for it (the node counts it as a dropped frame). Exceptions from the
    handler go to ``on_error``; the worker keeps serving.
    """

    def __init__(
        self,
        name: str,
        handler: Callable[[Any], None],
        *,
        on_replaced: Callable[[Any], None] = lambda _item: None,
        on_error: Callable[[Exception], None] = lambda _exc: None,
    ) -> None:
        self._handler = handler
        self._on_replaced = on_replaced
        self._on_error = on_error
        self._item: Any = None
        self._cv = threading.Condition()
        self._running = True
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def offer(self, item: Any) -> None:
        with self._cv:
            if self._item is not None:
                self._on_replaced(self._item)
            self._item = item
            self._cv.notify()

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being processed."""
        with self._cv:
            return self._item is None and not self.busy

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._item is None and self._running:
                    self._cv.wait(0.2)
                if not self._running:
                    return
                item, self._item = self._item, None
                self.busy = True
            try:
                self._handler(item)
            except Exception as exc:
                self._on_error(exc)
            finally:
                with self._cv:
                    self.busy = False

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._running = False
            self._cv.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
