"""Celery tasks of the workspaces app: thin, like sandboxes.tasks. Sending webhooks."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from workspaces import webhooks


# Enqueued on commit by the outbox (webhooks.SEND_TASK). No retries of the task itself: a
# failed attempt is due again at its backoff, a lost one once its lease ends, and the beat
# task below sends both. Every attempt of the batch runs at once, within WEBHOOK_TIMEOUT_S.
@shared_task(
    acks_late=True,
    name="workspaces.tasks.send_webhooks",
    soft_time_limit=settings.WEBHOOK_TIMEOUT_S + 20,
    time_limit=settings.WEBHOOK_TIMEOUT_S + 30,
)
def send_webhooks(delivery_ids: list[str]) -> int:
    return len(webhooks.deliver(delivery_ids))


# Periodic (config/celery.py): what is due — retries, and deliveries whose sender died.
@shared_task(acks_late=True, soft_time_limit=90, time_limit=120)
def deliver_due_webhooks() -> dict[str, int]:
    return webhooks.deliver_due()
