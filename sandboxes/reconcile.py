"""Reconcile (SPEC §6): match the backend's sandboxes against the runs. Sandboxes whose run
is over or unknown (orphans, e.g. of a worker that died between creating a sandbox and saving
its id) are killed; running runs whose sandbox is gone fail as sandbox_lost.

Runs from beat (config/celery.py) through a thin task, and from `manage.py
reconcile_sandboxes`, a dry run unless told otherwise. Backend calls run on the sweep's
bounded thread pool, outside transactions; state changes go through the transitions, on the
trail as `system:reconcile`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone
from django_fsm import TransitionNotAllowed

from config.exceptions import Conflict
from sandboxes import maintenance
from sandboxes.backends import SandboxBackend, SandboxInfo, SandboxNotFound, app_tags, get_backend
from sandboxes.models import SANDBOX_STATUSES, TERMINAL_STATUSES, EndReason, SandboxRun
from sandboxes.services import run_transition
from sandboxes.sweep import Action, kill_sandbox, sweep_pool
from workspaces.access import Actor

logger = logging.getLogger(__name__)

SYSTEM_RECONCILE = Actor.system("reconcile")


@dataclass
class ReconcileReport:
    """`killed`: orphan sandboxes killed (their run is terminal, unknown, or uses another
    sandbox). `lost`: running runs whose sandbox is gone, now failed as sandbox_lost.
    `errors`: kills or checks that failed; the next reconcile tries again."""

    killed: int = 0
    lost: int = 0
    errors: int = 0
    actions: list[Action] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"killed": self.killed, "lost": self.lost, "errors": self.errors}


@dataclass(frozen=True)
class _RunState:
    status: str
    sandbox_id: str


def sandboxes_reconcile(*, dry_run: bool = False) -> ReconcileReport:
    """Match the backend's sandboxes (only those tagged with this app and DEPLOY_ENV) against
    the runs: kill sandboxes whose run is terminal or unknown (orphans, e.g. of a worker that
    died between creating a sandbox and saving its id), and fail running or paused runs whose
    sandbox is gone (sandbox_lost); a paused run's paused sandbox is neither. Booting runs
    are left to the boot and its timeout: their sandbox id is not saved yet."""
    report = ReconcileReport()
    backend = get_backend()
    tags = app_tags()
    # Taken before listing: a run that became running later may own a sandbox the listing
    # could not include, so only runs running before this moment can be judged lost.
    listed_at = timezone.now()
    # The filter is checked again here: never touch another deployment's sandboxes, even if
    # a backend ignored part of the query.
    listed = [
        info
        for info in backend.list_sandboxes(tags)
        if all(info.metadata.get(key) == value for key, value in tags.items())
    ]
    orphans = _orphans(listed)
    suspects = _runs_missing_their_sandbox({info.sandbox_id for info in listed}, listed_at)

    with sweep_pool() as pool:
        checks = {pool.submit(_sandbox_exists, backend, run.sandbox_id): run for run in suspects}
        kills: dict[Future[Any], tuple[SandboxInfo, str]] = {}
        if not dry_run:
            kills = {
                pool.submit(kill_sandbox, backend, info.sandbox_id): (info, why)
                for info, why in orphans
            }
        else:
            for info, why in orphans:
                report.actions.append(Action("would kill", why, _run_id(info), info.sandbox_id))
        for future in as_completed([*checks, *kills]):
            if future in kills:
                info, why = kills[future]
                _record_kill(future, info, why, report)
            else:
                _judge_lost(future, checks[future], dry_run, report)
    logger.info("reconcile: killed=%d lost=%d errors=%d", report.killed, report.lost, report.errors)
    if not dry_run:
        maintenance.pass_count("reconcile", report)
    return report


def _run_id(info: SandboxInfo) -> str:
    return info.metadata.get("run_id", "")


def _orphans(listed: list[SandboxInfo]) -> list[tuple[SandboxInfo, str]]:
    """Listed sandboxes no run owns, with why."""
    runs = _run_states(_run_id(info) for info in listed)
    orphans = []
    for info in listed:
        run = runs.get(_run_id(info))
        if run is None:
            orphans.append((info, "unknown run"))
        elif run.status in TERMINAL_STATUSES:
            orphans.append((info, f"run {run.status}"))
        elif run.status in SANDBOX_STATUSES and run.sandbox_id != info.sandbox_id:
            orphans.append((info, "not the run's sandbox"))  # a duplicate the boot never used
    return orphans


def _run_states(run_ids: Iterable[str]) -> dict[str, _RunState]:
    valid = set()
    for run_id in run_ids:
        try:
            valid.add(uuid.UUID(run_id))
        except (ValueError, TypeError):
            continue  # not a run id at all: the sandbox is an orphan
    rows = SandboxRun.objects.filter(pk__in=valid).values_list("pk", "status", "sandbox_id")
    return {str(pk): _RunState(status, sandbox_id) for pk, status, sandbox_id in rows}


def _runs_missing_their_sandbox(listed_ids: set[str], listed_at: datetime) -> list[SandboxRun]:
    # Paused runs too: a paused sandbox is listed like a running one (E2B lists both; local
    # keeps its frozen sandbox), so a paused run whose sandbox is not listed has lost it.
    running = (
        SandboxRun.objects.filter(status__in=SANDBOX_STATUSES, running_at__lt=listed_at)
        .exclude(sandbox_id="")
        .only("id", "status", "sandbox_id")
    )
    return [run for run in running.iterator() if run.sandbox_id not in listed_ids]


def _sandbox_exists(backend: SandboxBackend, sandbox_id: str) -> bool:
    """Asked once more, by id: a listing may lag behind a sandbox that just started."""
    try:
        backend.get_info(sandbox_id)
    except SandboxNotFound:
        return False
    return True


def _record_kill(future: Future[Any], info: SandboxInfo, why: str, report: ReconcileReport) -> None:
    error = future.exception()
    if error is not None:
        report.errors += 1
        report.actions.append(Action("error", why, _run_id(info), info.sandbox_id, str(error)))
        logger.warning("reconcile: kill of orphan %s failed: %s", info.sandbox_id, error)
        return
    report.killed += 1
    report.actions.append(Action("killed", why, _run_id(info), info.sandbox_id))
    logger.info(
        "reconcile: killed orphan sandbox=%s run=%s (%s)", info.sandbox_id, _run_id(info), why
    )


def _judge_lost(
    future: Future[bool], run: SandboxRun, dry_run: bool, report: ReconcileReport
) -> None:
    error = future.exception()
    if error is not None:
        report.errors += 1
        report.actions.append(
            Action("error", EndReason.SANDBOX_LOST, str(run.pk), run.sandbox_id, str(error))
        )
        return
    if future.result():
        return  # alive after all: the listing missed it
    if dry_run:
        report.actions.append(
            Action("would fail", EndReason.SANDBOX_LOST, str(run.pk), run.sandbox_id)
        )
        return
    error_body = {"code": "sandbox_not_found", "message": "The run's sandbox is gone."}

    def fail_if_same_sandbox(current: SandboxRun) -> None:
        if current.status not in SANDBOX_STATUSES or current.sandbox_id != run.sandbox_id:
            raise TransitionNotAllowed(f"the run is {current.status}")
        current.fail(reason=EndReason.SANDBOX_LOST, error=error_body, by=SYSTEM_RECONCILE)

    try:
        run_transition(run.pk, fail_if_same_sandbox)
    except Conflict:
        return  # ended meanwhile
    report.lost += 1
    report.actions.append(Action("lost", EndReason.SANDBOX_LOST, str(run.pk), run.sandbox_id))
    logger.warning("reconcile: run=%s lost its sandbox %s", run.pk, run.sandbox_id)
