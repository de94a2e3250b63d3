"""Waiting in tests: for a condition, with a deadline; never a fixed sleep as synchronisation.

A deadline is a bound on a hang, not a timing assertion: it is generous (tens of seconds for
what takes milliseconds on an idle machine), and when it passes the test fails naming what it
waited for. The per-test timeout of pytest-timeout (pyproject.toml) is the last resort above it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest


def poll_until(
    predicate: Callable[[], object],
    timeout: float,
    *,
    cv: threading.Condition | None = None,
    interval: float = 0.02,
) -> bool:
    """True as soon as ``predicate()`` holds, False once ``timeout`` seconds passed.

    With ``cv`` (a condition its producers notify after each change), the predicate is
    evaluated under the condition's lock and the wait wakes on every notify; without it the
    predicate is polled every ``interval`` seconds.
    """
    deadline = time.monotonic() + timeout
    if cv is not None:
        with cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                cv.wait(min(left, 0.1))
        return True
    while not predicate():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))
    return True


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str | Callable[[], str],
    *,
    cv: threading.Condition | None = None,
) -> None:
    """Wait until ``predicate()`` holds; fail the test after ``timeout`` seconds, saying
    ``what`` was awaited (a callable ``what`` is called then, to report the state reached)."""
    __tracebackhide__ = True
    if not poll_until(predicate, timeout, cv=cv):
        detail = what() if callable(what) else what
        pytest.fail(f"timed out after {timeout:g} s waiting for {detail}")


def wait_matched(publisher, nodes=(), timeout: float = 30.0) -> None:
    """Until ``publisher`` is matched at both ends: it sees a subscriber, and each of ``nodes``
    (nodes in this process that subscribe to its topic) sees it. A best-effort reader drops what
    a writer sends before the reader has matched that writer, so a first frame could be lost."""
    __tracebackhide__ = True
    topic = publisher.topic_name
    wait_for(lambda: publisher.get_subscription_count() > 0, timeout, f"a subscriber on {topic}")
    for node in nodes:
        subs = [s for s in node.subscriptions if s.topic_name == topic]
        assert subs, f"{node.get_name()} has no subscription on {topic}"
        wait_for(
            lambda subs=subs: all(s.get_publisher_count() > 0 for s in subs),
            timeout,
            f"{node.get_name()} to match the publisher on {topic}",
        )
