"""The Celery app and the one beat schedule: every periodic task is listed here."""

import os
from typing import Any

from celery import Celery, signals
from django import db
from kombu.transport import TRANSPORT_ALIASES

# `filesystem://`, the embedded broker, is kombu's filesystem transport made safe for several
# processes (config/broker.py): registered before any connection is made.
TRANSPORT_ALIASES["filesystem"] = "config.broker:Transport"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("airlock")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def beat_schedule() -> dict[str, dict[str, Any]]:
    """Each message expires after one interval: when workers were down, beat's backlog is
    dropped instead of running the same sweep many times over once they are back."""
    from django.conf import settings

    return {
        "sweep-sandboxes": {
            "task": "sandboxes.tasks.sweep_sandboxes",
            "schedule": settings.SANDBOX_SWEEP_INTERVAL_S,
            "options": {"expires": settings.SANDBOX_SWEEP_INTERVAL_S},
        },
        "check-background-commands": {
            "task": "sandboxes.tasks.check_background_commands",
            "schedule": settings.SANDBOX_COMMAND_CHECK_INTERVAL_S,
            "options": {"expires": settings.SANDBOX_COMMAND_CHECK_INTERVAL_S},
        },
        "reconcile-sandboxes": {
            "task": "sandboxes.tasks.reconcile_sandboxes",
            "schedule": settings.SANDBOX_RECONCILE_INTERVAL_S,
            "options": {"expires": settings.SANDBOX_RECONCILE_INTERVAL_S},
        },
        # Pending artifacts past their workspace's review policy `expire_after_h` (SPEC §13).
        "expire-pending-artifacts": {
            "task": "artifacts.tasks.expire_pending_artifacts",
            "schedule": settings.ARTIFACT_EXPIRY_INTERVAL_S,
            "options": {"expires": settings.ARTIFACT_EXPIRY_INTERVAL_S},
        },
        # The webhook outbox: retries that are due, and deliveries whose sender died.
        "deliver-due-webhooks": {
            "task": "workspaces.tasks.deliver_due_webhooks",
            "schedule": settings.WEBHOOK_SWEEP_INTERVAL_S,
            "options": {"expires": settings.WEBHOOK_SWEEP_INTERVAL_S},
        },
    }


@app.on_after_configure.connect
def _install_beat_schedule(sender: Celery, **kwargs: Any) -> None:
    # Read once the app is configured, not at import: this module loads with the settings.
    sender.conf.beat_schedule = beat_schedule()


# --- database connections in workers ------------------------------------------------------
# Celery's Django fixup closes every connection before and after each task unless
# CELERY_DB_REUSE_MAX is set (it is: config/settings.py), so each task would open a new
# PostgreSQL connection (15–29% of a boot or job task's time) whatever CONN_MAX_AGE says.
# Around each task a worker does what Django does around each request instead: it closes a
# connection only when it is broken, left in a transaction or older than CONN_MAX_AGE, and the
# first query of the next task checks it again (CONN_HEALTH_CHECKS). Eager tasks (apply(), in
# tests) run inside their caller's connection and transaction: left alone.


@signals.task_prerun.connect
@signals.task_postrun.connect
def _close_old_connections(sender: Any = None, **kwargs: Any) -> None:
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    db.close_old_connections()
