"""Pause instead of kill (SPEC §15), on the E2B backend through the real SDK against the E2B
double in its own process:

- what Airlock adds to a pause and to a resume (`services.run_pause` / `run_resume`: the row
  lock, the transition, the trail event, the active-run limit) on top of the same call on
  the backend alone (`E2BBackend.pause` / `resume`, which is what the double costs), as
  interleaved pairs;
- an idle sandbox's billed seconds over a simulated hour of a run that waits for review, with
  `on_idle: "kill"` (the default idle timeout; or one long enough to outlast the review) and
  with `on_idle: "pause"`. Simulated: the clock is moved (time-machine) while the agent's
  execs, the sweep (every SANDBOX_SWEEP_INTERVAL_S) and the run's end go through the real
  services, the real sweep and the double.

    python -m bench.bench_pause        # prints its section of docs/benchmarks.md

Rerunnable against the same database: it makes its own user and workspace each time.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.bench_agent import _use_backend, setup  # noqa: E402

PAIRS = 30
WARMUP = 3
WORK_MIN = 10  # the agent works before it asks for review …
REVIEW_MIN = 60  # … the review takes an hour …
AFTER_MIN = 5  # … and the agent finishes after the approval.
EXEC_EVERY_S = 60  # the agent's calls while it works


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[-1]


def _running_run(workspace: Any, **fields: Any) -> Any:
    from sandboxes import services
    from sandboxes.models import SandboxRun

    defaults = {"max_duration_ms": 3 * 3_600_000, "idle_timeout_ms": 3_600_000}
    run = SandboxRun.objects.create(
        workspace=workspace, created_by=workspace.owner, thread_id="bench", prompt="bench",
        **{**defaults, **fields},
    )  # fmt: skip
    services.run_boot(run_id=str(run.pk))
    run.refresh_from_db()
    assert run.status == "running", run.error
    return run


# --- overhead ------------------------------------------------------------------------------


@dataclass
class Overhead:
    backend_pause: list[float]
    backend_resume: list[float]
    airlock_pause: list[float]
    airlock_resume: list[float]


def overhead(workspace: Any) -> Overhead:
    """Interleaved pairs, the order flipped every pair: the backend's pause then resume of
    one sandbox, and the services' pause then resume of a run on another."""
    from sandboxes import services
    from sandboxes.backends import get_backend
    from workspaces.access import Actor

    actor = Actor.for_user(workspace.owner)
    backend = get_backend()
    direct = _running_run(workspace)
    run = _running_run(workspace)
    result = Overhead([], [], [], [])

    def on_backend() -> tuple[float, float]:
        paused = _timed(lambda: backend.pause(direct.sandbox_id))
        resumed = _timed(lambda: backend.resume(direct.sandbox_id, timeout_s=600))
        return paused, resumed

    def through_airlock() -> tuple[float, float]:
        nonlocal run
        holder: list[Any] = []
        paused = _timed(lambda: holder.append(services.run_pause(run=run, actor=actor)))
        resumed = _timed(lambda: holder.append(services.run_resume(run=holder[0], actor=actor)))
        run = holder[1]
        return paused, resumed

    try:
        for index in range(WARMUP + PAIRS):
            if index % 2:
                airlock, plain = through_airlock(), on_backend()
            else:
                plain, airlock = on_backend(), through_airlock()
            if index >= WARMUP:
                result.backend_pause.append(plain[0])
                result.backend_resume.append(plain[1])
                result.airlock_pause.append(airlock[0])
                result.airlock_resume.append(airlock[1])
    finally:
        services.run_cancel(run=run, actor=actor)
        services.run_cancel(run=direct, actor=actor)
    return result


# --- billed seconds over an hour of review ---------------------------------------------------


@dataclass
class Waited:
    label: str
    billed_s: float
    cost_usd: str
    status_after_review: str
    end_reason: str
    continued: bool  # the agent's post-review calls ran in the same sandbox


def waiting_for_review(workspace: Any, label: str, **fields: Any) -> Waited:
    """One run, simulated minute by minute: the agent works WORK_MIN minutes (an exec every
    EXEC_EVERY_S), waits REVIEW_MIN minutes for review while the sweep runs every
    SANDBOX_SWEEP_INTERVAL_S, then works AFTER_MIN more minutes and completes."""
    import time_machine
    from django.conf import settings

    from config.exceptions import Conflict
    from sandboxes import execution, services, sweep
    from sandboxes.models import SandboxRun
    from workspaces.access import Actor

    actor = Actor.for_user(workspace.owner)
    start = datetime.now(UTC).replace(microsecond=0)
    interval = settings.SANDBOX_SWEEP_INTERVAL_S
    with time_machine.travel(start, tick=False) as clock:
        run = _running_run(workspace, **fields)

        def work(minutes: int, offset_s: int) -> bool:
            for second in range(0, minutes * 60, EXEC_EVERY_S):
                clock.move_to(start + timedelta(seconds=offset_s + second))
                current = SandboxRun.objects.get(pk=run.pk)
                try:
                    execution.run_exec(run=current, actor=actor, command="echo working")
                except Conflict:
                    return False  # the run ended: its sandbox, and the work in it, are gone
            return True

        work(WORK_MIN, 0)
        review_start = WORK_MIN * 60
        for second in range(0, REVIEW_MIN * 60 + 1, interval):
            clock.move_to(start + timedelta(seconds=review_start + second))
            sweep.sandboxes_sweep()
        after = SandboxRun.objects.get(pk=run.pk).status
        continued = work(AFTER_MIN, (WORK_MIN + REVIEW_MIN) * 60)
        clock.move_to(start + timedelta(minutes=WORK_MIN + REVIEW_MIN + AFTER_MIN))
        current = SandboxRun.objects.get(pk=run.pk)
        if current.is_live:
            current = services.run_complete(run=current, actor=actor, status="succeeded")
    return Waited(
        label=label,
        billed_s=current.sandbox_seconds,
        cost_usd=str(current.cost_usd),
        status_after_review=after,
        end_reason=current.end_reason,
        continued=continued,
    )


def main() -> None:
    from django.conf import settings
    from django.db import connection

    from tests.factories import UserFactory, make_workspace

    user: Any = UserFactory(username=f"bench-pause-{time.time_ns()}")
    workspace = make_workspace(owner=user, name="bench pause")
    settings.WORKSPACE_MAX_ACTIVE_RUNS = 100
    double, variables = common.start_e2b_double(common.free_port())
    try:
        _use_backend("e2b", variables)
        load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        measured = overhead(workspace)
        idle_ms = settings.SANDBOX_DEFAULT_IDLE_TIMEOUT_MS
        waited = [
            waiting_for_review(workspace, f"`kill`, idle timeout {idle_ms // 60000} min",
                               on_idle="kill", idle_timeout_ms=idle_ms),
            waiting_for_review(workspace, f"`kill`, idle timeout {REVIEW_MIN + 5} min (outlasts "
                               "the review)", on_idle="kill",
                               idle_timeout_ms=(REVIEW_MIN + 5) * 60_000),
            waiting_for_review(workspace, f"`pause`, idle timeout {idle_ms // 60000} min",
                               on_idle="pause", idle_timeout_ms=idle_ms),
        ]  # fmt: skip
    finally:
        os.killpg(double.pid, signal.SIGTERM)
        double.wait(20)
    load_after = ", ".join(f"{x:.2f}" for x in os.getloadavg())

    print("## Pause instead of kill\n")
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {common.machine()}. "
        f"Database `{connection.vendor}`; the E2B backend through the SDK against the E2B "
        f"double (its own process, on this machine); load average {load_before} before, "
        f"{load_after} after. {PAIRS} interleaved pairs after {WARMUP} of warm-up.\n"
    )
    print("| measure | median | p90 |")
    print("|---|---|---|")
    rows = [
        ("backend `pause` (the double's cost)", measured.backend_pause),
        ("`services.run_pause`", measured.airlock_pause),
        ("backend `resume` (the double's cost)", measured.backend_resume),
        ("`services.run_resume`", measured.airlock_resume),
    ]
    for name, samples in rows:
        print(f"| {name} | {_ms(statistics.median(samples))} | {_ms(_p90(samples))} |")
    for name, ours, theirs in (
        ("pause", measured.airlock_pause, measured.backend_pause),
        ("resume", measured.airlock_resume, measured.backend_resume),
    ):
        added = [a - b for a, b in zip(ours, theirs, strict=True)]
        print(f"| Airlock's overhead on a {name} (per pair) | {_ms(statistics.median(added))} "
              f"| {_ms(_p90(added))} |")  # fmt: skip
    print(f"\nA run that works {WORK_MIN} min (an exec a minute), waits {REVIEW_MIN} min for "
          f"review, then works {AFTER_MIN} min more and completes; the sweep every "
          f"{settings.SANDBOX_SWEEP_INTERVAL_S} s; simulated time, real services, sweep and "
          "double.\n")  # fmt: skip
    print("| on_idle | billed sandbox-seconds | cost (USD) | after the review | ended | "
          "the agent went on in the same sandbox |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in waited:
        went_on = "yes" if row.continued else "no: its sandbox was killed"
        print(f"| {row.label} | {row.billed_s:.0f} | {row.cost_usd} | {row.status_after_review} "
              f"| {row.end_reason} | {went_on} |")  # fmt: skip


if __name__ == "__main__":
    setup()
    main()
