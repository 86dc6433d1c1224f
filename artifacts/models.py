"""Artifacts: files a run produced, held in storage until a reviewer approves or rejects them."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition
from django_fsm_log.decorators import fsm_log_by

from sandboxes.models import SandboxRun
from workspaces.access import Actor
from workspaces.models import Subject, Workspace

PREVIEW_MAX_CHARS = 4096
REVIEW_COMMENT_MAX_CHARS = 2000


class ArtifactType(models.TextChoices):
    FILE = "file", "File"
    IMAGE = "image", "Image"
    CODE = "code", "Code"
    LOG = "log", "Log"
    OTHER = "other", "Other"


class ReviewState(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class Artifact(ConcurrentTransitionMixin, models.Model):
    """One captured file. `review_state` moves only through `approve`/`reject` (protected
    field); ConcurrentTransitionMixin makes the save of a second, concurrent decision fail,
    so of two reviewers exactly one wins. Decided artifacts are final."""

    # Declared: django-stubs cannot infer the manager through django-fsm's mixin.
    objects: ClassVar[models.Manager[Artifact]] = models.Manager()

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(SandboxRun, on_delete=models.CASCADE, related_name="artifacts")
    # Denormalised from the run: every list is scoped by workspace and filtered by thread
    # without a join.
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="artifacts")
    thread_id = models.CharField(max_length=255)
    type = models.CharField(max_length=10, choices=ArtifactType.choices)
    title = models.CharField(max_length=255)
    file = models.FileField(max_length=400)  # default storage; the key is made by the service
    content_type = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    sandbox_path = models.CharField(max_length=1024, blank=True)  # empty for the command log
    preview_text = models.TextField(blank=True)  # text types only, ≤ PREVIEW_MAX_CHARS
    review_state = FSMField(
        default=ReviewState.PENDING, choices=ReviewState.choices, protected=True
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reviewed_artifacts",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_comment = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The review queue: pending, oldest first.
            models.Index(fields=["review_state", "created_at"], name="artifact_review_queue"),
            models.Index(fields=["run", "-created_at"], name="artifact_run_newest"),
            models.Index(fields=["workspace", "-created_at"], name="artifact_ws_newest"),
            models.Index(fields=["thread_id", "-created_at"], name="artifact_thread_newest"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(review_state=ReviewState.PENDING) | Q(reviewed_at__isnull=False),
                name="artifact_decided_has_time",
            ),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_pending(self) -> bool:
        return self.review_state == ReviewState.PENDING

    # --- transitions: they change fields only; permission checks and storage live in services

    def _decide(self, *, reviewer: Any, comment: str) -> None:
        self.reviewed_by = reviewer
        self.reviewed_at = timezone.now()
        self.review_comment = comment

    @fsm_log_by
    @transition(
        field=review_state,
        source=ReviewState.PENDING,
        target=ReviewState.APPROVED,
        custom={"label": "Approve", "help_text": "Release the file to members and agents."},
    )
    def approve(self, *, reviewer: Any, comment: str = "", by: Actor) -> None:
        self._decide(reviewer=reviewer, comment=comment)

    @fsm_log_by
    @transition(
        field=review_state,
        source=ReviewState.PENDING,
        target=ReviewState.REJECTED,
        custom={"label": "Reject", "help_text": "Keep the file in the airlock for good."},
    )
    def reject(self, *, reviewer: Any, comment: str, by: Actor) -> None:
        self._decide(reviewer=reviewer, comment=comment)

    # --- on the trail ----------------------------------------------------------------

    def trail_subject(self) -> Subject:
        return Subject(
            "artifact", self.pk, self.workspace_id, run_id=self.run_id, thread_id=self.thread_id
        )

    def trail_data(self, transition: str = "") -> dict[str, Any]:
        """Metadata only: never the bytes or the preview."""
        data: dict[str, Any] = {
            "title": self.title,
            "type": self.type,
            "sandbox_path": self.sandbox_path,
            "size": self.size,
            "sha256": self.sha256,
        }
        if transition:
            data["comment"] = self.review_comment
        return data
