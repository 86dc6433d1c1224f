"""Waiting on the trail without polling the object: a caller that waits for a run or an artifact
to change (`GET runs/{id}/?wait_s=`) sleeps until a new event reaches the trail, then looks
again. Every write records an event, so no change goes unnoticed.

One thread per process at a time asks the database for the newest event id (every POLL_S,
one primary-key lookup, on its own request's connection); the others sleep on a condition and
are woken when the id moves. When the polling waiter's wait ends, another takes over. No
thread of its own, so no connection outlives its request. Each waiter also looks again every
RECHECK_S whatever happens, so a change that reached the database without an event visible to
this process (another process's uncommitted transaction, a test's own transaction) is still
seen in time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from workspaces.models import Event

T = TypeVar("T")

POLL_S = 0.1
RECHECK_S = 0.5


def latest_event_id() -> int:
    return Event.objects.order_by("-id").values_list("id", flat=True).first() or 0


class TrailWatch:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest = 0
        self._polling = False

    def wait_past(self, cursor: int, timeout: float) -> int:
        """Block until the trail holds an event after `cursor`, or `timeout` seconds passed;
        the newest id seen."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                while self._polling and self._latest <= cursor:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return self._latest
                    self._cond.wait(min(remaining, 2 * POLL_S))
                if self._latest > cursor or deadline <= time.monotonic():
                    return self._latest
                self._polling = True  # this thread polls for everyone until its wait ends
            try:
                latest = self._poll_until(cursor, deadline)
            finally:
                with self._cond:
                    self._polling = False
                    self._cond.notify_all()
            return latest

    def _poll_until(self, cursor: int, deadline: float) -> int:
        while True:
            latest = latest_event_id()
            with self._cond:
                if latest > self._latest:
                    self._latest = latest
                    self._cond.notify_all()
            remaining = deadline - time.monotonic()
            if latest > cursor or remaining <= 0:
                return latest
            time.sleep(min(POLL_S, remaining))


_watch = TrailWatch()


def wait_while(*, load: Callable[[], T], waiting: Callable[[T], bool], wait_s: float) -> T:
    """`load()` again and again until `waiting(obj)` is false or `wait_s` seconds passed;
    the last copy loaded. Loads once more after each new event on the trail, and at least
    every RECHECK_S."""
    deadline = time.monotonic() + wait_s
    cursor = latest_event_id()
    obj = load()
    while waiting(obj):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        cursor = max(cursor, _watch.wait_past(cursor, min(remaining, RECHECK_S)))
        obj = load()
    return obj
