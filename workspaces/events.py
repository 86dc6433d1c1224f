"""The one place that writes the trail (SPEC §10): every service of every app calls `record`
inside the transaction of the write it describes, so the event commits or rolls back with it.

State-machine transitions reach the trail the same way: django-fsm-log's storage backend
(`TrailBackend`, configured as DJANGO_FSM_LOG_STORAGE_METHOD) calls `record` when a transition
runs, with the actor passed to the transition as `by=`. The transition record and the event are
one row.

What an event sets off is registered here (`on_record`) and runs inside the same transaction,
so it commits or rolls back with the event: the webhook outbox (workspaces.webhooks writes the
event's deliveries) and the reviewers' notifications (registered by the artifacts app, which
workspaces never imports). A hook only writes rows or registers `transaction.on_commit` work;
it never calls the network.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from django.db import transaction
from django.utils import timezone
from django_fsm_log.backends import BaseBackend
from django_fsm_log.helpers import FSMLogDescriptor

from workspaces.access import Actor
from workspaces.models import Event, EventType, Subject


@runtime_checkable
class OnTrail(Protocol):
    """A model whose writes are recorded: it says what it is as a subject."""

    def trail_subject(self) -> Subject: ...


@runtime_checkable
class TransitionsOnTrail(OnTrail, Protocol):
    """A model with a state machine: it also says what its transitions record (metadata only)."""

    def trail_data(self, transition: str) -> dict[str, Any]: ...


RecordHook = Callable[[Event], None]
_record_hooks: list[RecordHook] = []


def on_record(hook: RecordHook) -> RecordHook:
    """Run `hook(event)` for every event recorded from now on, in the event's transaction."""
    if hook not in _record_hooks:
        _record_hooks.append(hook)
    return hook


def record(
    *,
    actor: Actor,
    type: EventType | str,
    subject: Subject | OnTrail,
    data: dict[str, Any] | None = None,
) -> Event:
    """Write one event for a write the caller is making now, in the caller's transaction."""
    if not transaction.get_connection().in_atomic_block:
        # Outside a transaction the event could commit without its write, or the reverse.
        raise RuntimeError(f"record({type}) must run inside the write's transaction.atomic()")
    about = subject if isinstance(subject, Subject) else subject.trail_subject()
    event = Event.objects.create(
        workspace_id=about.workspace_id,
        type=str(type),
        actor=str(actor),
        actor_user=actor.user,
        actor_api_key=actor.api_key,
        subject_type=about.kind,
        subject_id=str(about.id),
        run_id=about.run_id,
        thread_id=about.thread_id,
        data=data or {},
    )
    for hook in _record_hooks:
        hook(event)
    return event


def as_json(event: Event) -> dict[str, Any]:
    """An event as the API, the stream and webhooks show it (one shape everywhere; the
    events route's EventOut documents it)."""
    return {
        "id": event.pk,
        "workspace_id": str(event.workspace_id),
        "type": event.type,
        "actor": event.actor,
        "subject": {"type": event.subject_type, "id": event.subject_id},
        "run_id": str(event.run_id) if event.run_id else None,
        "thread_id": event.thread_id,
        "created_at": as_iso(event.created_at),
        "data": event.data,
    }


def as_iso(value: datetime) -> str:
    text = timezone.localtime(value, UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"  # as DRF writes datetimes


class TrailBackend(BaseBackend):
    """django-fsm-log storage backend: a transition is an event on the trail.

    Transitions are called with `by=<Actor>` (`fsm_log_by`); the event's type is
    `<subject kind>.<target state>`, e.g. `run.running` or `artifact.approved`, unless the
    model says otherwise with `trail_type(transition, target)`."""

    @staticmethod
    def setup_model(model: Any) -> None:
        pass

    @staticmethod
    def pre_transition_callback(*args: Any, **kwargs: Any) -> None:
        pass

    @staticmethod
    def post_transition_callback(
        sender: Any, instance: Any, name: str, source: str, target: str | None, **kwargs: Any
    ) -> None:
        if target is None:
            return
        try:
            actor = FSMLogDescriptor(instance, "by").get()
        except AttributeError:
            actor = None
        if not isinstance(actor, Actor):
            raise TypeError(f"{sender.__name__}.{name} must be called with by=<Actor>")
        if not isinstance(instance, TransitionsOnTrail):
            raise TypeError(f"{sender.__name__} does not say what its transitions record")
        subject = instance.trail_subject()
        # `<kind>.<target>` unless the model names the event itself (a run's resume is
        # `run.resumed`, though it goes back to running).
        trail_type = getattr(instance, "trail_type", None)
        event_type = trail_type(name, target) if trail_type else f"{subject.kind}.{target}"
        record(
            actor=actor,
            type=event_type,
            subject=subject,
            data={"transition": name, "from": source, "to": target, **instance.trail_data(name)},
        )
