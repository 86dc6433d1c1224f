"""Reads of artifacts, always scoped to what the actor may see.

Members see every artifact's metadata, but its content (the bytes and the text preview) only
once it is approved; admins and owners see everything in their workspaces."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import (
    BooleanField,
    Case,
    Count,
    Exists,
    IntegerField,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Right

from artifacts.models import Approval, Artifact, ReviewPolicy, ReviewState
from artifacts.risk import CODES
from config.exceptions import NotFound
from sandboxes.models import Command, RunStatus, SandboxRun
from workspaces import access, watch
from workspaces import selectors as workspace_selectors
from workspaces.access import Actor
from workspaces.models import Event, Role

ARTIFACT_RELATED = ("workspace", "workspace__review_policy", "run", "reviewed_by")
SIGNAL_CODES = CODES


def with_approval_count(queryset: QuerySet[Artifact]) -> QuerySet[Artifact]:
    """Annotates `approval_count` (one subquery, no query per artifact)."""
    approvals = (
        Approval.objects.filter(artifact=OuterRef("pk"))
        .order_by()
        .values("artifact")
        .annotate(n=Count("id"))
        .values("n")
    )
    return queryset.annotate(
        approval_count=Coalesce(Subquery(approvals, output_field=IntegerField()), 0)
    )


def _with_content_visibility(queryset: QuerySet[Artifact], actor: Actor) -> QuerySet[Artifact]:
    """Annotates `content_visible`: approved, or the actor reviews in that workspace."""
    reviewable = access.administered_workspaces(actor)
    if reviewable is None:
        return queryset.annotate(content_visible=Value(True, output_field=BooleanField()))
    return queryset.annotate(
        content_visible=Case(
            When(Q(review_state=ReviewState.APPROVED) | Q(workspace__in=reviewable), then=True),
            default=False,
            output_field=BooleanField(),
        )
    )


def artifact_list(
    *, actor: Actor, workspace: Any = None, run: SandboxRun | None = None
) -> QuerySet[Artifact]:
    """Artifacts of one run, one workspace, or of every workspace the actor belongs to.

    Callers pass a run or workspace they already resolved through a scoped selector."""
    queryset = with_approval_count(Artifact.objects.select_related(*ARTIFACT_RELATED))
    if run is not None:
        queryset = queryset.filter(run=run)
    elif workspace is not None:
        queryset = queryset.filter(workspace=workspace)
    else:
        visible = access.visible_workspaces(actor)
        if visible is not None:
            queryset = queryset.filter(workspace__in=visible)
    return _with_content_visibility(queryset, actor)


def artifact_role(*, actor: Actor, artifact: Artifact) -> Role | None:
    """The actor's role in the artifact's workspace; None for an outsider."""
    return access.role_in(actor, artifact.workspace_id)


def artifact_get(
    *,
    actor: Actor,
    artifact_id: uuid.UUID | str,
    minimum: Role = Role.MEMBER,
    content: bool = False,
) -> tuple[Artifact, Role]:
    """The artifact and the actor's role in its workspace: 404 for outsiders, 403 below
    `minimum`. With `content`, also 404 when the actor may not have its bytes: a member
    is not told, byte-wise, what waits in the airlock."""
    artifact = (
        with_approval_count(Artifact.objects.select_related(*ARTIFACT_RELATED))
        .filter(pk=artifact_id)
        .first()
    )
    role = access.require(
        access.role_in(actor, artifact.workspace_id if artifact else None), minimum, what="artifact"
    )
    assert artifact is not None
    if content and not content_visible(artifact=artifact, role=role):
        raise NotFound("No such artifact.")
    return artifact, role


def content_visible(*, artifact: Artifact, role: Role | None) -> bool:
    """Whether a caller with this role may have the artifact's bytes and preview: once it is
    approved, or when they review in its workspace (the same rule as `content_visible` in
    lists)."""
    return artifact.review_state == ReviewState.APPROVED or access.has_role(role, Role.ADMIN)


WAIT_MAX_S = 60


def artifact_wait(*, artifact: Artifact, while_state: set[str], wait_s: float) -> Artifact:
    """The artifact as soon as its review state is none of `while_state` (how an agent waits
    for a human decision), or after `wait_s` seconds (at most WAIT_MAX_S) as it is then. The
    caller resolved `artifact` through `artifact_get`."""

    def load() -> Artifact:
        current = (
            with_approval_count(Artifact.objects.select_related(*ARTIFACT_RELATED))
            .filter(pk=artifact.pk)
            .first()
        )
        if current is None:
            raise NotFound("No such artifact.")
        return current

    return watch.wait_while(
        load=load,
        waiting=lambda a: a.review_state in while_state,
        wait_s=min(wait_s, WAIT_MAX_S),
    )


def review_policy_for(*, workspace_id: Any) -> ReviewPolicy:
    """The workspace's review policy; the defaults (unsaved) when it never set one. The
    caller resolved the workspace through a scoped selector."""
    policy = ReviewPolicy.objects.filter(workspace_id=workspace_id).first()
    return policy if policy is not None else ReviewPolicy(workspace_id=workspace_id)


def loaded_policy(artifact: Artifact) -> ReviewPolicy:
    """The policy of an artifact loaded with ARTIFACT_RELATED (no query); the defaults when
    its workspace has none."""
    try:
        return artifact.workspace.review_policy
    except ReviewPolicy.DoesNotExist:
        return ReviewPolicy(workspace_id=artifact.workspace_id)


def approvals_needed(artifact: Artifact) -> int:
    return loaded_policy(artifact).approvals_needed(artifact)


def artifact_review_refusal(
    *,
    artifact: Artifact,
    actor: Actor,
    role: Role | None,
    needed: int = 1,
    approver_ids: Any = (),
) -> str | None:
    """Why the actor may not review this artifact, or None when they may (state aside).
    `needed` approvals and the ids of who approved already: with two required, neither may
    be the run's creator (whatever ALLOW_SELF_REVIEW says) and nobody approves twice."""
    if role is None:
        return "not_found"
    if not access.has_role(role, Role.ADMIN):
        return "role"
    is_own_run = actor.user is not None and artifact.run.created_by_id == actor.user.pk
    if is_own_run and (needed > 1 or not settings.ALLOW_SELF_REVIEW):
        return "self_review"
    if actor.user is not None and actor.user.pk in approver_ids:
        return "already_approved"
    return None


def review_queue(*, workspace_ids: Any = None) -> QuerySet[Artifact]:
    """Pending artifacts, oldest first; `workspace_ids` None means every workspace (for
    superusers and operators)."""
    queryset = Artifact.objects.filter(review_state=ReviewState.PENDING).select_related(
        *ARTIFACT_RELATED
    )
    if workspace_ids is not None:
        queryset = queryset.filter(workspace__in=workspace_ids)
    return queryset.order_by("created_at", "id")


def runs_awaiting_review(
    *, workspace_ids: Any = None, decider: Actor | None = None
) -> QuerySet[SandboxRun]:
    """Runs with pending artifacts, annotated with `pending_count`, `oldest_pending` and a
    `signal_<code>` count per signal code, over their pending artifacts. With `decider`:
    only what that person may decide now (not their own runs — unless ALLOW_SELF_REVIEW,
    and never where two approvals are needed — and not what they already approved), and
    the counts over those artifacts. One grouped query over the pending artifacts."""
    pending = Q(artifacts__review_state=ReviewState.PENDING)
    if workspace_ids is not None:
        pending &= Q(artifacts__workspace__in=workspace_ids)
    runs = SandboxRun.objects.all()
    if decider is not None and decider.user is not None:
        # On the joined artifact row itself (no subquery over the artifacts): a planner
        # with stale statistics cannot turn it into a nested loop over all pending rows.
        mine = Approval.objects.filter(artifact_id=OuterRef("artifacts__id"), reviewer=decider.user)
        pending &= Q(~Exists(mine))
        own = Q(created_by=decider.user)
        if settings.ALLOW_SELF_REVIEW:
            own &= Q(workspace__review_policy__required_approvals=2)
        runs = runs.exclude(own)
    counts: dict[str, Any] = {
        f"signal_{code}": Count("artifacts", filter=Q(artifacts__signal_codes__contains=code))
        for code in SIGNAL_CODES
    }
    return runs.filter(pending).annotate(
        pending_count=Count("artifacts"), oldest_pending=Min("artifacts__created_at"), **counts
    )


def decidable_by(decider: Actor) -> QuerySet[Artifact]:
    """Pending artifacts this person may decide, role aside (the caller scopes the
    workspaces): not of their own runs (unless ALLOW_SELF_REVIEW, never where two approvals
    are needed), not already approved by them."""
    pending = Artifact.objects.filter(review_state=ReviewState.PENDING)
    if decider.user is None:
        return pending
    own = Q(run__created_by=decider.user)
    if settings.ALLOW_SELF_REVIEW:
        own &= Q(workspace__review_policy__required_approvals=2)
    return pending.exclude(approvals__reviewer=decider.user).exclude(own)


def review_console_counts(
    *, workspace_ids: Any = None, decider: Actor | None = None
) -> dict[str, int]:
    """What the admin index shows: pending reviews, those `decider` may decide, and running
    sandboxes."""
    runs = SandboxRun.objects.filter(status=RunStatus.RUNNING)
    mine = decidable_by(decider) if decider is not None else Artifact.objects.none()
    if workspace_ids is not None:
        runs = runs.filter(workspace__in=workspace_ids)
        mine = mine.filter(workspace__in=workspace_ids)
    return {
        "pending_reviews": review_queue(workspace_ids=workspace_ids).count(),
        "pending_for_me": mine.count(),
        "running_sandboxes": runs.count(),
    }


# --- the run review page -----------------------------------------------------------------

COMMAND_EXCERPT_CHARS = 600  # of each output tail: the page shows the last lines only


@dataclass(frozen=True)
class RunReview:
    """Everything the run review page shows, in five queries whatever the run holds."""

    artifacts: list[Artifact]
    approvals: dict[Any, list[Approval]]  # artifact id → approvals, oldest first
    commands: dict[str, Command]  # command id (as the trail's subject_id) → its row
    events: list[Event]
    policy: ReviewPolicy


def run_review(*, run: SandboxRun) -> RunReview:
    """The run's artifacts, their approvals, its command history (each output tail cut to
    its last COMMAND_EXCERPT_CHARS in the database) and its trail. The caller resolved the
    run through a scoped selector (or the admin's scoped queryset)."""
    artifacts = list(
        Artifact.objects.filter(run=run).select_related("reviewed_by").order_by("created_at", "id")
    )
    approvals: dict[Any, list[Approval]] = {}
    for approval in Approval.objects.filter(artifact__run=run).order_by("created_at", "id"):
        approvals.setdefault(approval.artifact_id, []).append(approval)
    commands = (
        Command.objects.filter(run=run)
        .defer("stdout_tail", "stderr_tail")
        .annotate(
            stdout_end=Right("stdout_tail", COMMAND_EXCERPT_CHARS),
            stderr_end=Right("stderr_tail", COMMAND_EXCERPT_CHARS),
        )
    )
    return RunReview(
        artifacts=artifacts,
        approvals=approvals,
        commands={str(command.pk): command for command in commands},
        events=list(workspace_selectors.event_list(workspace=run.workspace, run_id=run.pk)),
        policy=review_policy_for(workspace_id=run.workspace_id),
    )
