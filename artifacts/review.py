"""Review decisions: approve or reject a pending artifact, one at a time or many (the admin's
bulk actions, the review command). Each decision goes through the Artifact transitions, on the
trail with the reviewer; a decision that lost a race is a Conflict."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import transaction
from django_fsm import ConcurrentTransition, TransitionNotAllowed

from artifacts.models import REVIEW_COMMENT_MAX_CHARS, Artifact, ReviewState
from artifacts.selectors import artifact_review_refusal, artifact_role
from config.exceptions import AirlockError, Conflict, InvalidInput, NotFound, PermissionDenied
from workspaces.access import Actor


def _refusal_error(refusal: str) -> AirlockError:
    if refusal == "not_found":
        return NotFound("No such artifact.")
    if refusal == "self_review":
        return PermissionDenied(
            "You started this run; someone else must review its artifacts.", code="self_review"
        )
    return PermissionDenied("Reviewing needs the admin role or higher.")


def artifact_review(
    *, artifact: Artifact, actor: Actor, decision: str, comment: str = ""
) -> Artifact:
    """approve or reject a pending artifact. A reject needs a comment; reviewing needs the
    admin role; self-review is refused unless ALLOW_SELF_REVIEW; a decided artifact is final
    (409, also for the loser of two concurrent reviews)."""
    comment = (comment or "").strip()
    if decision not in ("approve", "reject"):
        raise InvalidInput("decision: approve or reject.", code="invalid_choice")
    if len(comment) > REVIEW_COMMENT_MAX_CHARS or "\x00" in comment:
        raise InvalidInput(
            f"comment: at most {REVIEW_COMMENT_MAX_CHARS} characters, no NUL.", code="invalid"
        )
    if decision == "reject" and not comment:
        raise InvalidInput("A reject needs a comment saying why.", code="comment_required")
    refusal = artifact_review_refusal(
        artifact=artifact, actor=actor, role=artifact_role(actor=actor, artifact=artifact)
    )
    if refusal is not None:
        raise _refusal_error(refusal)
    if artifact.review_state != ReviewState.PENDING:
        raise _already_decided(artifact.review_state)

    change = artifact.approve if decision == "approve" else artifact.reject
    try:
        # No lock: ConcurrentTransitionMixin's save only matches a row still pending, so the
        # second of two concurrent decisions saves nothing and rolls back with its log row.
        with transaction.atomic():
            change(reviewer=actor.user, comment=comment, by=actor)
            artifact.save()
    except (TransitionNotAllowed, ConcurrentTransition) as exc:
        artifact.refresh_from_db()
        raise _already_decided(artifact.review_state) from exc
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
    *, artifacts: Iterable[Artifact], actor: Actor, decision: str, comment: str = ""
) -> BulkReview:
    """artifact_review over many artifacts (admin bulk actions, the review command): each
    one on its own, so one refusal does not stop the others."""
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
