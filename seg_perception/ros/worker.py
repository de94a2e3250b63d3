"""One-slot mailboxes served by a worker thread: the node's latest-frame policy, per camera."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable
from typing import Any


class LatestWorker:
    """Runs ``handler(items)`` in its own thread on the newest item of each key (camera).

    Every key has a one-slot mailbox. ``offer`` never blocks: an item still waiting when a newer
    one of the same key arrives is replaced, and ``on_replaced`` is called for it (the node counts
    it as a dropped frame). When the thread is free it takes, with ``take="all"``, the waiting item
    of every key at once (one batch across cameras), or with ``take="one"`` the item of the key
    served least recently (round robin, for a slow model shared by the cameras). ``handler``
    receives ``{key: item}``. Exceptions from the handler go to ``on_error``; the worker keeps
    serving.

    ``take_lock`` / ``on_take``: items are taken under ``take_lock`` and passed through
    ``on_take`` while it is held. A producer that holds the same lock while it overwrites memory
    the waiting items refer to (after :meth:`withdraw`-ing them) lets items carry references
    instead of copies: only a taken item is copied, by ``on_take``, never one that is replaced.
    """

    def __init__(
        self,
        name: str,
        handler: Callable[[dict[Hashable, Any]], Any],
        *,
        take: str = "all",
        on_replaced: Callable[[Hashable, Any], None] = lambda _key, _item: None,
        on_error: Callable[[Exception], None] = lambda _exc: None,
        take_lock: threading.Lock | None = None,
        on_take: Callable[[dict[Hashable, Any]], dict[Hashable, Any]] = lambda items: items,
    ) -> None:
        if take not in ("all", "one"):
            raise ValueError(f"take must be 'all' or 'one', got {take!r}")
        self._handler = handler
        self._take = take
        self._on_replaced = on_replaced
        self._on_error = on_error
        self._take_lock = take_lock
        self._on_take = on_take
        self._slots: dict[Hashable, Any] = {}  # insertion order = service order for "one"
        self._cv = threading.Condition()
        self._running = True
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def offer(self, item: Any, key: Hashable = None) -> None:
        with self._cv:
            if key in self._slots:
                self._on_replaced(key, self._slots[key])
            self._slots[key] = item  # a replaced key keeps its place in the round robin
            self._cv.notify()

    def withdraw(self, key: Hashable) -> None:
        """Drop the item of ``key`` if it is still waiting (``on_replaced`` is called for it)."""
        with self._cv:
            if key in self._slots:
                self._on_replaced(key, self._slots.pop(key))

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being processed."""
        with self._cv:
            return not self._slots and not self.busy

    def _next(self) -> dict[Hashable, Any]:
        if self._take == "all":
            items, self._slots = self._slots, {}
            return items
        key = next(iter(self._slots))
        return {key: self._slots.pop(key)}

    def _take_next(self) -> dict[Hashable, Any] | None:
        """The next items (through ``on_take``), None when stopped; {} when withdrawn meanwhile."""
        with self._cv:
            while not self._slots and self._running:
                self._cv.wait(0.2)
            if not self._running:
                return None
        with self._take_lock or contextlib.nullcontext():
            with self._cv:
                if not self._slots:
                    return {}
                items = self._next()
                self.busy = True
            try:
                return self._on_take(items)
            except Exception:
                with self._cv:
                    self.busy = False
                raise

    def _loop(self) -> None:
        while True:
            try:
                items = self._take_next()
            except Exception as exc:
                self._on_error(exc)
                continue
            if items is None:
                return
            if not items:
                continue
            try:
                self._handler(items)
            except Exception as exc:
                self._on_error(exc)
            finally:
                with self._cv:
                    self.busy = False

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread; True when it ended within ``timeout`` (it may be inside a long
        handler call otherwise: it is a daemon and ends with the process)."""
        with self._cv:
            self._running = False
            self._cv.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()
