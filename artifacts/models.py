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
    EXPIRED = "expired", "Expired"  # pending past the workspace policy's expire_after_h


DECIDED_STATES = (ReviewState.APPROVED, ReviewState.REJECTED, ReviewState.EXPIRED)


class Artifact(ConcurrentTransitionMixin, models.Model):
    """One captured file. `review_state` moves only through the transitions below (protected
    field): `approve` and `reject` by a reviewer, `auto_approve` and `expire` by the
    workspace's review policy. ConcurrentTransitionMixin makes the save of a second,
    concurrent decision fail, so of two deciders exactly one wins. Decided artifacts are
    final. A first approval of two (SPEC §13) is an `Approval` row, not a state: the
    artifact stays pending until the second."""

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
    # A Markdown preview rendered at capture (raw HTML off, sanitised by nh3; sanitised
    # again when shown), so the run review page does not render dozens of files per view.
    preview_html = models.TextField(blank=True)
    # Risk signals (artifacts.risk), computed at capture: [{code, severity, message, line?}].
    signals = models.JSONField(default=list, blank=True)
    # Denormalised from `signals` for the review queue's counts: the codes, sorted, joined
    # by commas, and the highest severity ("" when there are none).
    signal_codes = models.CharField(max_length=100, blank=True)
    risk = models.CharField(max_length=10, blank=True)
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
        verbose_name = "artifact"

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

    @fsm_log_by
    @transition(
        field=review_state,
        source=ReviewState.PENDING,
        target=ReviewState.APPROVED,
        custom={"admin": False},
    )
    def auto_approve(self, *, rule: dict[str, Any], rule_number: int, by: Actor) -> None:
        """A rule of the workspace's review policy approved it at capture (`by` is
        system:policy); the rule is kept for the trail."""
        self._decide(reviewer=None, comment=f"Approved by review policy rule {rule_number}.")
        self._policy_rule = {"rule": rule, "rule_number": rule_number}

    @fsm_log_by
    @transition(
        field=review_state,
        source=ReviewState.PENDING,
        target=ReviewState.EXPIRED,
        custom={"admin": False},
    )
    def expire(self, *, after_h: int, by: Actor) -> None:
        """Pending longer than the policy's expire_after_h: final, like a reject."""
        self._decide(reviewer=None, comment=f"Expired: pending for more than {after_h} h.")
        self._policy_rule = {"expire_after_h": after_h}

    def signal_summary(self) -> list[str]:
        return [code for code in self.signal_codes.split(",") if code]

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
        if self.signal_codes:
            data["signals"] = self.signal_summary()
        if transition:
            data["comment"] = self.review_comment
            data.update(getattr(self, "_policy_rule", {}))
        return data


class Approval(models.Model):
    """One reviewer's approval of an artifact. Where two are required (the workspace's review
    policy) the first leaves the artifact pending; the second, by someone else, approves it.
    One per reviewer and artifact: the same person cannot give both."""

    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="approvals")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="artifact_approvals"
    )
    actor = models.CharField(max_length=150, help_text="user:… or api_key:…")
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["artifact", "reviewer"], name="approval_one_per_reviewer"
            )
        ]

    def __str__(self) -> str:
        return f"{self.actor} approved {self.artifact_id}"


REQUIRED_APPROVALS_CHOICES = ((1, "One reviewer"), (2, "Two reviewers"))
MAX_AUTO_APPROVE_RULES = 50


class ReviewPolicy(models.Model):
    """How a workspace reviews (SPEC §13). No row means the defaults: no auto-approval, one
    approval, no expiry. Written only through artifacts.policy.review_policy_set."""

    workspace = models.OneToOneField(
        Workspace, on_delete=models.CASCADE, primary_key=True, related_name="review_policy"
    )
    # [{type?, path_glob?, max_size?}]: a rule matches when every field it gives matches.
    auto_approve = models.JSONField(default=list, blank=True)
    required_approvals = models.PositiveSmallIntegerField(
        default=1, choices=REQUIRED_APPROVALS_CHOICES
    )
    second_approval_only_with_signals = models.BooleanField(default=False)
    expire_after_h = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.CharField(max_length=150, blank=True)

    class Meta:
        verbose_name = "review policy"
        verbose_name_plural = "review policies"

    def __str__(self) -> str:
        return f"review policy of {self.workspace_id}"

    def trail_subject(self) -> Subject:
        return Subject("review_policy", self.workspace_id, self.workspace_id)

    def as_json(self) -> dict[str, Any]:
        return {
            "auto_approve": self.auto_approve,
            "required_approvals": self.required_approvals,
            "second_approval_only_with_signals": self.second_approval_only_with_signals,
            "expire_after_h": self.expire_after_h,
        }

    def approvals_needed(self, artifact: Artifact) -> int:
        """How many distinct approvals this artifact needs."""
        if self.required_approvals < 2:
            return 1
        if self.second_approval_only_with_signals and not artifact.signal_codes:
            return 1
        return 2


class ReviewQueueRun(SandboxRun):
    """The review queue in the admin: runs with pending artifacts (artifacts.admin). A
    proxy: the same rows as SandboxRun, listed and linked differently."""

    class Meta:
        proxy = True
        verbose_name = "run awaiting review"
        verbose_name_plural = "review queue"
