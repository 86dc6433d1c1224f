"""django-fsm-log storage backend for models with UUID primary keys (see TransitionLog).

Transitions are called with `by=<User or None>` and `description=<actor string>`
(`fsm_log_by` / `fsm_log_description`); the row is written when the transition runs, inside
the caller's transaction, so it rolls back with a save that loses a race."""

from __future__ import annotations

from typing import Any

from django.contrib.contenttypes.models import ContentType
from django_fsm_log.backends import BaseBackend
from django_fsm_log.helpers import FSMLogDescriptor


def _descriptor(instance: Any, name: str) -> Any:
    try:
        return FSMLogDescriptor(instance, name).get()
    except AttributeError:
        return None


class TransitionLogBackend(BaseBackend):
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
        from sandboxes.models import TransitionLog

        if target is None:
            return
        TransitionLog.objects.create(
            content_type=ContentType.objects.get_for_model(sender),
            object_id=str(instance.pk),
            transition=name,
            source_state=source or "",
            state=target,
            by=_descriptor(instance, "by"),
            actor=_descriptor(instance, "description") or "unknown",
        )
