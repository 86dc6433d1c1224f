from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from workspaces import sealing


@dataclass(frozen=True)
class Subject:
    """What an event on the trail is about, and where it belongs (see Event)."""

    kind: str  # workspace, member, api_key, run, command, artifact, webhook, review_policy
    id: Any
    workspace_id: uuid.UUID | str
    run_id: uuid.UUID | str | None = None
    thread_id: str = ""


class Role(models.TextChoices):
    MEMBER = "member", "Member"
    ADMIN = "admin", "Admin"
    OWNER = "owner", "Owner"


class ApiKeyRole(models.TextChoices):
    MEMBER = "member", "Member"
    ADMIN = "admin", "Admin"


class Workspace(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_workspaces"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    def trail_subject(self) -> Subject:
        return Subject("workspace", self.pk, self.pk)


class Membership(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    joined_at = models.DateTimeField(default=timezone.now, editable=False)
    # Admins and owners who keep this on get an email when a run's artifacts wait for review.
    notify_reviews = models.BooleanField(
        default=True, help_text="Email me when a run's artifacts wait for review (admins, owners)."
    )

    class Meta:
        ordering = ["joined_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "user"], name="membership_unique_user"),
            models.UniqueConstraint(
                fields=["workspace"], condition=Q(role="owner"), name="membership_one_owner"
            ),
        ]
        indexes = [models.Index(fields=["user", "workspace"], name="membership_user_ws")]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.role})"

    def trail_subject(self) -> Subject:
        return Subject("member", self.user_id, self.workspace_id)


class ApiKey(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=10, choices=ApiKeyRole.choices, default=ApiKeyRole.MEMBER)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def trail_subject(self) -> Subject:
        return Subject("api_key", self.pk, self.workspace_id)


class EventType(models.TextChoices):
    """Every kind of write the trail records (SPEC §10)."""

    WORKSPACE_CREATED = "workspace.created"
    WORKSPACE_RENAMED = "workspace.renamed"
    WORKSPACE_DELETED = "workspace.deleted"
    MEMBER_ADDED = "member.added"
    MEMBER_REMOVED = "member.removed"
    MEMBER_ROLE_CHANGED = "member.role_changed"
    MEMBER_NOTIFY_CHANGED = "member.notify_changed"
    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"
    RUN_CREATED = "run.created"
    RUN_RUNNING = "run.running"
    RUN_PAUSED = "run.paused"
    RUN_RESUMED = "run.resumed"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    RUN_CANCELED = "run.canceled"
    COMMAND_STARTED = "command.started"
    COMMAND_FINISHED = "command.finished"
    FILE_UPLOADED = "file.uploaded"
    ARTIFACT_CREATED = "artifact.created"
    ARTIFACT_APPROVAL_RECORDED = "artifact.approval_recorded"
    ARTIFACT_APPROVED = "artifact.approved"
    ARTIFACT_REJECTED = "artifact.rejected"
    ARTIFACT_EXPIRED = "artifact.expired"
    REVIEW_POLICY_CHANGED = "review_policy.changed"
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_UPDATED = "webhook.updated"
    WEBHOOK_DELETED = "webhook.deleted"
    WEBHOOK_DISABLED = "webhook.disabled"
    WEBHOOK_TEST = "webhook.test"
    WEBHOOK_DELIVERY_RETRIED = "webhook.delivery_retried"


class Event(models.Model):
    """One write, on the one trail (SPEC §10): who did what to which object, in the write's own
    transaction. The id is the cursor of the events API and the stream: it only grows.

    Events outlive what they describe — a deleted workspace keeps its trail — so the workspace
    and the actor's user and key are references without a database constraint or a cascade.
    `data` holds metadata only: never artifact bytes, previews, env values or secrets."""

    id = models.BigAutoField(primary_key=True)
    workspace = models.ForeignKey(
        Workspace, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    type = models.CharField(max_length=64, choices=EventType.choices)
    actor = models.CharField(max_length=150, help_text="user:…, api_key:… or system:…")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_api_key = models.ForeignKey(
        ApiKey,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    subject_type = models.CharField(max_length=32)  # workspace, member, api_key, run, artifact, …
    subject_id = models.CharField(max_length=64)
    # Denormalised from the subject, for the run and thread filters and the run's timeline.
    run_id = models.UUIDField(null=True, blank=True)
    thread_id = models.CharField(max_length=255, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["workspace", "id"], name="event_ws_cursor"),
            models.Index(fields=["run_id", "id"], name="event_run_cursor"),
            models.Index(fields=["subject_type", "subject_id", "id"], name="event_subject"),
            models.Index(fields=["workspace", "thread_id", "id"], name="event_ws_thread"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.type} by {self.actor}"


# --- webhooks (SPEC §11) -------------------------------------------------------------------


class WebhookEndpoint(models.Model):
    """Where a workspace's events are pushed, signed (Standard Webhooks) with `secret`.

    The secret is kept because signing needs it, sealed (workspaces.sealing: encrypted under
    a key derived from SECRET_KEY); the API shows it once, on create. An endpoint
    failing every attempt since `failing_since` for WEBHOOK_DISABLE_AFTER_H is disabled
    (`active` false, `disabled_at` set) with a `webhook.disabled` event."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="webhooks")
    url = models.CharField(max_length=2000)
    event_types = models.JSONField(default=list, blank=True, help_text="Empty: every event.")
    description = models.CharField(max_length=500, blank=True)
    active = models.BooleanField(default=True)
    sealed_secret = models.TextField(editable=False, help_text="The signing secret, sealed.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name = "webhook endpoint"
        indexes = [models.Index(fields=["workspace", "active"], name="webhook_ws_active")]

    def __str__(self) -> str:
        return self.url

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types

    @property
    def secret(self) -> str:
        """The signing secret, unsealed (raises sealing.Unsealable without its key)."""
        return sealing.unseal(self.sealed_secret)

    def trail_subject(self) -> Subject:
        return Subject("webhook", self.pk, self.workspace_id)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # waiting for its next attempt (or in one)
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"  # gave up: retries exhausted, or the endpoint is disabled


class WebhookDelivery(models.Model):
    """One event for one endpoint: the outbox row. Written with the event, in its
    transaction; sent by a task after the commit, retried until it succeeds or gives up.

    `next_attempt_at` is when it is due. A sender claims a delivery by moving it past the
    attempt's lease, so a sender killed mid-attempt leaves a delivery that is due again once
    the lease ends, and the beat task sends it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    event = models.ForeignKey(
        Event, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    event_type = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    response_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # The outbox: what is due, oldest first; cost grows with what is due.
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_due",
                condition=Q(status="pending"),
            ),
            models.Index(fields=["endpoint", "-created_at"], name="delivery_endpoint_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} (event #{self.event_id})"
