"""config/celery.py: the Celery app and its one beat schedule."""

from __future__ import annotations

from typing import Any

from config.celery import app, beat_schedule


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
