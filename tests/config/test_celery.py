"""config/celery.py: the Celery app and its one beat schedule."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import signals
from celery.app.task import Context
from celery.fixups.django import DjangoWorkerFixup  # type: ignore[attr-defined]
from django.db import OperationalError, connection

from config.celery import app, beat_schedule
from sandboxes.tasks import sweep_sandboxes


def _server_dsn() -> str:
    params = connection.get_connection_params()
    return psycopg.conninfo.make_conninfo(
        **{k: v for k, v in params.items() if k in ("host", "port", "user", "password", "dbname")}
    )


def test_beat_runs_the_sweep_and_reconcile_at_their_intervals(settings: Any) -> None:
    app.loader.import_default_modules()  # what a worker does first: the autodiscovery
    schedule = {entry["task"]: entry for entry in app.conf.beat_schedule.values()}
    sweeping = schedule["sandboxes.tasks.sweep_sandboxes"]
    reconcile = schedule["sandboxes.tasks.reconcile_sandboxes"]
    assert sweeping["schedule"] == settings.SANDBOX_SWEEP_INTERVAL_S == 30
    assert reconcile["schedule"] == settings.SANDBOX_RECONCILE_INTERVAL_S == 300
    checking = schedule["sandboxes.tasks.check_background_commands"]
    assert checking["schedule"] == settings.SANDBOX_COMMAND_CHECK_INTERVAL_S == 10
    assert set(schedule) <= set(app.tasks), "every scheduled task is registered"


def test_a_periodic_message_expires_after_one_interval(settings: Any) -> None:
    # When the workers were down, beat's backlog is dropped rather than run many times over.
    settings.SANDBOX_SWEEP_INTERVAL_S = 7
    entries = {entry["task"]: entry for entry in beat_schedule().values()}
    assert entries["sandboxes.tasks.sweep_sandboxes"]["options"] == {"expires": 7}
    assert entries["sandboxes.tasks.reconcile_sandboxes"]["options"] == {
        "expires": settings.SANDBOX_RECONCILE_INTERVAL_S
    }


def test_beat_expires_pending_artifacts_at_its_interval(settings: Any) -> None:
    settings.ARTIFACT_EXPIRY_INTERVAL_S = 120
    entries = {entry["task"]: entry for entry in beat_schedule().values()}
    expiry = entries["artifacts.tasks.expire_pending_artifacts"]
    assert (expiry["schedule"], expiry["options"]) == (120, {"expires": 120})
    app.loader.import_default_modules()
    assert "artifacts.tasks.expire_pending_artifacts" in app.tasks


@pytest.fixture
def worker_fixup() -> Iterator[DjangoWorkerFixup]:
    """Celery's Django fixup as a worker installs it, removed again after the test."""
    fixup = DjangoWorkerFixup(app).install()
    max_age = connection.settings_dict["CONN_MAX_AGE"]
    connection.settings_dict["CONN_MAX_AGE"] = 60  # as configured (other tests may change it)
    connection.close()
    yield fixup
    connection.settings_dict["CONN_MAX_AGE"] = max_age
    signals.task_prerun.disconnect(fixup.on_task_prerun)
    signals.task_postrun.disconnect(fixup.on_task_postrun)
    signals.worker_process_init.disconnect(fixup.on_worker_process_init)
    signals.beat_embedded_init.disconnect(fixup.close_database)


def _task_ran() -> None:
    """The signals a worker sends around one task (not an eager one)."""
    task: Any = sweep_sandboxes
    task.request_stack.push(Context(is_eager=False))
    try:
        signals.task_prerun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        signals.task_postrun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
    finally:
        task.request_stack.pop()


@pytest.mark.django_db(transaction=True)
def test_a_worker_keeps_its_database_connection_from_task_to_task(
    worker_fixup: DjangoWorkerFixup,
) -> None:
    connection.ensure_connection()
    opened = connection.connection
    for _ in range(5):
        _task_ran()
    assert connection.connection is opened
    # The next task checks it before use (CONN_HEALTH_CHECKS), as the next request would.
    wrapper: Any = connection
    assert wrapper.health_check_enabled and not wrapper.health_check_done


@pytest.mark.django_db(transaction=True)
def test_a_worker_closes_a_connection_older_than_conn_max_age(
    worker_fixup: DjangoWorkerFixup,
) -> None:
    connection.ensure_connection()
    opened = connection.connection
    connection.close_at = time.monotonic() - 1  # past CONN_MAX_AGE
    _task_ran()  # closed before the task, which opened a new one
    assert opened.closed and connection.connection is not opened
    reopened = connection.connection
    _task_ran()
    assert connection.connection is reopened


@pytest.mark.django_db(transaction=True)
def test_a_worker_drops_a_connection_that_broke_during_a_task(
    worker_fixup: DjangoWorkerFixup,
) -> None:
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with psycopg.connect(_server_dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    task: Any = sweep_sandboxes
    task.request_stack.push(Context(is_eager=False))
    try:
        with pytest.raises(OperationalError), connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        signals.task_postrun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
    finally:
        task.request_stack.pop()
    assert connection.connection is None
    _task_ran()  # the next task works on a fresh connection


def test_celery_recycles_worker_connections_only_after_many_tasks(settings: Any) -> None:
    # None (Celery's default) would close the connection around every task.
    assert DjangoWorkerFixup(app).db_reuse_max == settings.CELERY_DB_REUSE_MAX == 1000
