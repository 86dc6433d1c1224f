"""Watching the trail without polling each object: a caller waiting for a run or an artifact
to change (`GET runs/{id}/?wait_s=`) and every open event stream (`GET …/events/stream/`)
sleep until new events reach the trail. Every write records an event, so no change goes
unnoticed.

One poller thread per process serves them all, and only while someone listens: every POLL_S
it reads the ids of the events after its **horizon**, the id up to which every event is
committed (or never will be). Ids are handed out when a row is inserted, not when it commits,
so a transaction may commit event 101 after another committed 102; the poller does not move
its horizon past a missing id until the id appears or the event after it is GAP_GRACE_S old
(a rolled-back transaction leaves a gap forever; one that commits an event later than that
after writing it is taken for rolled back). Streams read only up to the horizon: resuming
after an id then never skips an event that committed late. Thread waiters sleep on a
condition; asyncio subscribers (streams) are woken on their loop, and only for events of
their workspace.

The poller stops (and closes its database connection) once nobody has listened for IDLE_STOP_S.
It reads whole rows and keeps the newest RECENT in memory, so a hundred streams of a workspace
cost one read per new event, not a hundred. Polling was chosen over Redis pub/sub: it needs no
Redis (the embedded default has none), costs one indexed query per POLL_S per process while
anyone listens, and meets the latency target (bench/bench_loop.py).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from django.db import connection
from django.utils import timezone

from workspaces.models import Event

logger = logging.getLogger(__name__)

T = TypeVar("T")

POLL_S = 0.05
RECHECK_S = 0.5
GAP_GRACE_S = 5.0
IDLE_STOP_S = 1.0
SCAN_LIMIT = 1000
RECENT = 5000  # events kept in memory for the streams (at least; at most twice that)
GRACE = timedelta(seconds=GAP_GRACE_S)


def latest_event_id() -> int:
    return Event.objects.order_by("-id").values_list("id", flat=True).first() or 0


class Subscription:
    """An asyncio listener for one workspace's events (an open stream)."""

    def __init__(self, watch: TrailWatch, workspace_id: str, loop: asyncio.AbstractEventLoop):
        self.workspace_id = workspace_id
        self._watch = watch
        self._loop = loop
        self._changed = asyncio.Event()

    def wake(self) -> None:
        """From the poller thread: something may be new."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the stream is gone
            self._loop.call_soon_threadsafe(self._changed.set)

    def horizon(self) -> int | None:
        """Every event up to this id is committed; None until the poller has looked."""
        return self._watch.horizon()

    def recent(self, after: int, upto: int) -> list[Event] | None:
        """This workspace's events after `after` up to `upto`, from the poller's memory (None:
        not all there)."""
        return self._watch.recent(self.workspace_id, after, upto)

    async def changed(self, timeout: float) -> bool:
        """Wait until woken (True) or `timeout` passed (False); then listen afresh."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        finally:
            self._changed.clear()
        return True

    def close(self) -> None:
        self._watch.unsubscribe(self)


class TrailWatch:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._horizon = 0
        self._ready = False  # the horizon is current: the poller has looked since it started
        self._gaps: dict[int, float] = {}  # first missing id → when it was first missed
        # The events the poller passed lately (shared by every stream: read once per process).
        self._recent: list[Event] = []
        self._recent_ids: list[int] = []
        self._floor = 0  # every event after this id, up to the horizon, is in _recent
        self._waiters = 0
        self._subscriptions: set[Subscription] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- listeners -----------------------------------------------------------------

    def horizon(self) -> int | None:
        with self._cond:
            return self._horizon if self._ready else None

    def wait_past(self, cursor: int, timeout: float) -> int:
        """Block until an event after `cursor` is committed, or `timeout` seconds passed;
        the horizon then."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            self._start_poller()
            try:
                while not (self._ready and self._horizon > cursor):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                return self._horizon
            finally:
                self._waiters -= 1

    def subscribe(self, workspace_id: str) -> Subscription:
        """Listen for the workspace's events from the running event loop."""
        subscription = Subscription(self, str(workspace_id), asyncio.get_running_loop())
        with self._cond:
            self._subscriptions.add(subscription)
            self._start_poller()
            if self._ready:
                subscription.wake()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._cond:
            self._subscriptions.discard(subscription)

    def listeners(self) -> int:
        with self._cond:
            return self._waiters + len(self._subscriptions)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the poller now (tests, before their database goes)."""
        with self._cond:
            thread, self._stopping = self._thread, True
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._stopping = False

    # --- the poller ----------------------------------------------------------------

    def _start_poller(self) -> None:
        # Under self._cond.
        if self._thread is None:
            self._ready = False
            self._thread = threading.Thread(target=self._run, name="trail-watch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        idle_since: float | None = None
        try:
            while True:
                with self._cond:
                    if self._stopping:
                        self._thread = None
                        return
                    if self._waiters or self._subscriptions:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= IDLE_STOP_S:
                        self._thread = None
                        return
                try:
                    self._poll_once()
                except Exception:  # the database is away: say so, and look again soon
                    logger.exception("trail watch: polling failed")
                    connection.close()
                    time.sleep(1.0)
                time.sleep(POLL_S)
        finally:
            connection.close()

    def _remember(self, events: list[Event]) -> None:
        # Under self._cond. Keeps the newest events past the horizon for the streams; every
        # event after self._floor and up to the horizon is in self._recent, in id order.
        self._recent += events
        self._recent_ids += [e.pk for e in events]
        if len(self._recent) > 2 * RECENT:
            self._floor = self._recent_ids[-RECENT - 1]
            del self._recent[:-RECENT], self._recent_ids[:-RECENT]

    def recent(self, workspace_id: str, after: int, upto: int) -> list[Event] | None:
        """The workspace's events after `after` up to `upto` (≤ the horizon) from memory, or
        None when they are not all there (read the trail instead)."""
        with self._cond:
            if after < self._floor or upto > self._horizon:
                return None
            start = bisect.bisect_right(self._recent_ids, after)
            end = bisect.bisect_right(self._recent_ids, upto)
            return [e for e in self._recent[start:end] if str(e.workspace_id) == workspace_id]

    def _poll_once(self) -> None:
        if not self._ready:
            # (Re)started: nobody listened meanwhile, so what came before needs no wake-ups;
            # everything written more than GAP_GRACE_S ago has settled.
            settled = (
                Event.objects.filter(created_at__lte=timezone.now() - GRACE)
                .order_by("-id")
                .values_list("id", flat=True)
                .first()
            )
            with self._cond:
                self._horizon = max(self._horizon, settled or 0)
                self._recent, self._recent_ids, self._floor = [], [], self._horizon
        start = self._horizon
        rows = list(Event.objects.filter(id__gt=start).order_by("id")[:SCAN_LIMIT])
        now, wall = time.monotonic(), timezone.now()
        horizon, expected, touched, passed = start, start + 1, set(), []
        for event in rows:
            if event.pk > expected:  # ids expected … event.pk-1 are not visible (yet)
                # The missing ones were inserted before this event was: once it is older
                # than the grace, or the gap has been missed that long, they are gone.
                first_missed = self._gaps.setdefault(expected, now)
                old = (wall - event.created_at).total_seconds() >= GAP_GRACE_S
                if not old and now - first_missed < GAP_GRACE_S:
                    break
            horizon, expected = event.pk, event.pk + 1
            touched.add(str(event.workspace_id))
            passed.append(event)
        with self._cond:
            became_ready = not self._ready
            self._ready = True
            self._horizon = horizon
            self._remember(passed)
            self._gaps = {gap: seen for gap, seen in self._gaps.items() if gap > horizon}
            if horizon > start or became_ready:
                self._cond.notify_all()
            woken = [
                s
                for s in self._subscriptions
                if became_ready or (horizon > start and s.workspace_id in touched)
            ]
        for subscription in woken:
            subscription.wake()


_watch = TrailWatch()


def trail_watch() -> TrailWatch:
    return _watch


def wait_while(
    *,
    load: Callable[[], T],
    waiting: Callable[[T], bool],
    wait_s: float,
    workspace_id: str | None = None,
    relevant: Callable[[Event], bool] | None = None,
) -> T:
    """`load()` again and again until `waiting(obj)` is false or `wait_s` seconds passed;
    the last copy loaded. Loads once more after each new event on the trail — with
    `workspace_id` and `relevant`, only after a new event of that workspace that is
    `relevant` (the poller's memory says which) — and at least every RECHECK_S (a change this
    process cannot see as an event yet, e.g. in a test's own transaction, is still seen in
    time). Twenty clients waiting for their runs then cost a load each when their own run
    changes, not one each whenever any run does."""
    deadline = time.monotonic() + wait_s
    cursor = latest_event_id()
    obj = load()
    loaded_at = time.monotonic()
    while waiting(obj):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        recheck = max(0.0, loaded_at + RECHECK_S - time.monotonic())
        horizon = max(cursor, _watch.wait_past(cursor, min(remaining, recheck)))
        due = time.monotonic() - loaded_at >= RECHECK_S
        if not due and horizon > cursor and relevant is not None and workspace_id is not None:
            events = _watch.recent(str(workspace_id), cursor, horizon)
            if events is not None and not any(relevant(event) for event in events):
                cursor = horizon
                continue  # nothing about this object: keep waiting without a load
        cursor = horizon
        obj = load()
        loaded_at = time.monotonic()
    return obj
