"""LatestWorker: one-slot mailboxes, replacement, withdrawal and copy-on-take."""

from __future__ import annotations

import threading

from waiting import wait_for

from seg_perception.ros.worker import LatestWorker


def test_only_taken_items_pass_through_on_take_and_withdrawn_ones_are_dropped() -> None:
    lock = threading.Lock()
    gate = threading.Event()
    taken, handled, replaced = [], [], []

    def on_take(items):
        taken.extend(items.values())
        return {k: f"copy of {v}" for k, v in items.items()}

    def handler(items):
        gate.wait(10)
        handled.extend(items.values())

    worker = LatestWorker(
        "test_worker",
        handler,
        take="one",
        on_replaced=lambda _key, item: replaced.append(item),
        take_lock=lock,
        on_take=on_take,
    )
    try:
        with lock:  # the producer holds the lock: nothing can be taken meanwhile
            worker.offer("a0", key="a")
            worker.offer("a1", key="a")  # replaces a0 before anyone took it
            worker.withdraw("a")  # the producer overwrites what a1 refers to: a1 dropped
            worker.offer("a2", key="a")
            assert taken == []
        wait_for(lambda: taken == ["a2"], 10, lambda: f"a2 taken (taken {taken})")
        worker.withdraw("a")  # nothing waiting any more: no effect
        gate.set()
        wait_for(lambda: handled == ["copy of a2"], 10, lambda: f"a2 handled ({handled})")
        assert replaced == ["a0", "a1"]  # never passed through on_take
        assert worker.idle or wait_for(lambda: worker.idle, 10, "the worker idle") is None
    finally:
        gate.set()
        assert worker.stop(5.0)
