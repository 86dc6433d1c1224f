"""Review decisions: approve or reject a pending artifact, one at a time or many (the admin's
run review page and bulk actions, the review command). Each decision goes through the Artifact
transitions, on the trail with the reviewer; a decision that lost a race is a Conflict.

Where the workspace's policy asks for two approvals (SPEC §13), the first is an Approval row
and `artifact.approval_recorded` on the trail, and the artifact stays pending; the second, by
another reviewer, approves it. Neither may be the run's creator."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django_fsm import ConcurrentTransition, TransitionNotAllowed

from artifacts import selectors
from artifacts.models import REVIEW_COMMENT_MAX_CHARS, Approval, Artifact, ReviewState
from config.exceptions import AirlockError, Conflict, InvalidInput, NotFound, PermissionDenied
from workspaces import events
from workspaces.access import Actor
from workspaces.models import EventType


def _refusal_error(refusal: str) -> AirlockError:
    if refusal == "not_found":
        return NotFound("No such artifact.")
    if refusal == "self_review":
        return PermissionDenied(
            "You started this run; someone else must review its artifacts.", code="self_review"
        )
    if refusal == "already_approved":
        return PermissionDenied(
            "You gave this artifact its first approval; the second must come from another "
            "reviewer.",
            code="already_approved",
        )
    return PermissionDenied("Reviewing needs the admin role or higher.")


def artifact_review(
    *, artifact: Artifact, actor: Actor, decision: str, comment: str = ""
) -> Artifact:
    """approve or reject a pending artifact. A reject needs a comment; reviewing needs the
    admin role; self-review is refused unless ALLOW_SELF_REVIEW (and always where two
    approvals are needed); a decided artifact is final (409, also for the loser of two
    concurrent decisions). With two approvals needed, the first leaves it pending."""
    comment = (comment or "").strip()
    if decision not in ("approve", "reject"):
        raise InvalidInput("decision: approve or reject.", code="invalid_choice")
    if len(comment) > REVIEW_COMMENT_MAX_CHARS or "\x00" in comment:
        raise InvalidInput(
            f"comment: at most {REVIEW_COMMENT_MAX_CHARS} characters, no NUL.", code="invalid"
        )
    if decision == "reject" and not comment:
        raise InvalidInput("A reject needs a comment saying why.", code="comment_required")
    needed = selectors.review_policy_for(workspace_id=artifact.workspace_id).approvals_needed(
        artifact
    )
    if needed > 1:
        return _review_of_two(artifact=artifact, actor=actor, decision=decision, comment=comment)
    _check(artifact, actor, needed=1, approver_ids=())
    if artifact.review_state != ReviewState.PENDING:
        raise _already_decided(artifact.review_state)
    try:
        # No lock: ConcurrentTransitionMixin's save only matches a row still pending, so the
        # second of two concurrent decisions saves nothing and rolls back with its log row.
        with transaction.atomic():
            _decide(artifact, actor=actor, decision=decision, comment=comment)
    except (TransitionNotAllowed, ConcurrentTransition) as exc:
        artifact.refresh_from_db()
        raise _already_decided(artifact.review_state) from exc
    return artifact


def _check(artifact: Artifact, actor: Actor, *, needed: int, approver_ids: Any) -> None:
    role = selectors.artifact_role(actor=actor, artifact=artifact)
    refusal = selectors.artifact_review_refusal(
        artifact=artifact, actor=actor, role=role, needed=needed, approver_ids=approver_ids
    )
    if refusal is not None:
        raise _refusal_error(refusal)


def _decide(artifact: Artifact, *, actor: Actor, decision: str, comment: str) -> None:
    """The final decision, in the caller's transaction: the reviewer's Approval row (an
    approve) and the transition, which puts itself on the trail."""
    if decision == "approve":
        assert actor.user is not None
        Approval.objects.create(
            artifact=artifact, reviewer=actor.user, actor=str(actor), comment=comment
        )
        artifact.approve(reviewer=actor.user, comment=comment, by=actor)
    else:
        artifact.reject(reviewer=actor.user, comment=comment, by=actor)
    artifact.save()


def _review_of_two(*, artifact: Artifact, actor: Actor, decision: str, comment: str) -> Artifact:
    """Four eyes: under a row lock, so two reviewers approving at once are counted one
    after the other: both approvals recorded, one final state."""
    with transaction.atomic():
        locked = (
            Artifact.objects.select_for_update(of=("self",))
            .select_related(*selectors.ARTIFACT_RELATED)
            .get(pk=artifact.pk)
        )
        approver_ids = set(locked.approvals.values_list("reviewer_id", flat=True))
        _check(locked, actor, needed=2, approver_ids=approver_ids)
        if locked.review_state != ReviewState.PENDING:
            raise _already_decided(locked.review_state)
        if decision == "approve" and not approver_ids:
            assert actor.user is not None
            Approval.objects.create(
                artifact=locked, reviewer=actor.user, actor=str(actor), comment=comment
            )
            events.record(
                actor=actor,
                type=EventType.ARTIFACT_APPROVAL_RECORDED,
                subject=locked,
                data={**locked.trail_data(), "approvals": 1, "required_approvals": 2,
                      "comment": comment},
            )  # fmt: skip
        else:
            _decide(locked, actor=actor, decision=decision, comment=comment)
    artifact.refresh_from_db()
    return artifact


def _already_decided(state: str) -> Conflict:
    return Conflict(f"The artifact is already {state}.", code="already_reviewed")


@dataclass
class BulkReview:
    """What a bulk decision did to each artifact."""

    done: list[Artifact] = field(default_factory=list)
    already_decided: list[Artifact] = field(default_factory=list)
    refused: list[tuple[Artifact, str]] = field(default_factory=list)  # (artifact, why)


def artifacts_review(
    *,
    artifacts: Iterable[Artifact],
    actor: Actor,
    decision: str,
    comment: str = "",
    dry_run: bool = False,
) -> BulkReview:
    """artifact_review over many artifacts (admin bulk actions, the review command): each
    one on its own, so one refusal does not stop the others. A dry run decides in a
    transaction it rolls back: the very checks, nothing kept (nor sent: on-commit work is
    dropped with it)."""
    if dry_run:
        artifacts = list(artifacts)
        with transaction.atomic():
            outcome = artifacts_review(
                artifacts=artifacts, actor=actor, decision=decision, comment=comment
            )
            transaction.set_rollback(True)
        for artifact in artifacts:
            artifact.refresh_from_db()
        return outcome
    outcome = BulkReview()
    for artifact in artifacts:
        try:
            artifact_review(artifact=artifact, actor=actor, decision=decision, comment=comment)
            outcome.done.append(artifact)
        except Conflict:
            outcome.already_decided.append(artifact)
        except InvalidInput:
            raise  # the same for every artifact: the decision or comment itself is wrong
        except AirlockError as exc:
            outcome.refused.append((artifact, exc.detail))
    return outcome
