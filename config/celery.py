"""The Celery app and the one beat schedule: every periodic task is listed here."""

import os

from celery import Celery
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("airlock")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Each message expires after one interval: when workers were down, beat's backlog is dropped
# instead of running the same sweep many times over once they are back.
app.conf.beat_schedule = {
    "sweep-sandboxes": {
        "task": "sandboxes.tasks.sweep_sandboxes",
        "schedule": settings.SANDBOX_SWEEP_INTERVAL_S,
        "options": {"expires": settings.SANDBOX_SWEEP_INTERVAL_S},
    },
    "reconcile-sandboxes": {
        "task": "sandboxes.tasks.reconcile_sandboxes",
        "schedule": settings.SANDBOX_RECONCILE_INTERVAL_S,
        "options": {"expires": settings.SANDBOX_RECONCILE_INTERVAL_S},
    },
}
