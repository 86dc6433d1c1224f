"""What the run commands share: resolving people and runs the way the API would."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from sandboxes.models import SandboxRun
from workspaces.access import Actor


def actor_for(username: str | None, *, default_user: AbstractBaseUser | None = None) -> Actor:
    if username is None:
        if default_user is None:
            raise CommandError("Say who acts: --as <username>.")
        return Actor.for_user(default_user)
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise CommandError(f"No active user {username!r}.")
    return Actor.for_user(user)


def run_by_id(run_id: str) -> SandboxRun:
    try:
        return SandboxRun.objects.select_related("workspace").get(pk=run_id)
    except (SandboxRun.DoesNotExist, ValidationError) as exc:
        raise CommandError(f"No run {run_id!r}.") from exc


def describe(run: SandboxRun) -> str:
    parts = [str(run.pk), run.status]
    if run.end_reason:
        parts.append(run.end_reason)
    if run.exit_code is not None:
        parts.append(f"exit {run.exit_code}")
    if run.error:
        parts.append(f"{run.error.get('code')}: {run.error.get('message')}")
    return "  ".join(parts)
