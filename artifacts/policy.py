"""A workspace's review policy (SPEC §13): what is approved automatically at capture, how many
reviewers must approve, and when pending artifacts expire. Every automatic decision is on the
trail as `system:policy`, with the rule that made it.

The policy is read with `selectors.review_policy_for`; it is written only here."""

from __future__ import annotations

import fnmatch
import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from artifacts import risk, selectors
from artifacts.models import (
    MAX_AUTO_APPROVE_RULES,
    Artifact,
    ArtifactType,
    ReviewPolicy,
    ReviewState,
)
from config.exceptions import InvalidInput
from workspaces import events
from workspaces.access import Actor
from workspaces.models import EventType, Workspace

logger = logging.getLogger(__name__)

SYSTEM_POLICY = Actor.system("policy")
RULE_FIELDS = ("type", "path_glob", "max_size")
POLICY_FIELDS = (
    "auto_approve", "required_approvals", "second_approval_only_with_signals", "expire_after_h",
)  # fmt: skip
PATH_GLOB_MAX_CHARS = 255
EXPIRE_AFTER_MAX_H = 24 * 365
EXPIRE_BATCH = 1000


# --- the policy ------------------------------------------------------------------------


def clean_rule(rule: Any, number: int) -> dict[str, Any]:
    """One auto-approve rule, checked: a JSON object with at least one of type, path_glob
    (a shell glob on the sandbox path: `*` also matches `/`), max_size (bytes)."""
    where = f"auto_approve[{number - 1}]"
    if not isinstance(rule, dict):
        raise InvalidInput(f"{where}: a rule is an object.", code="invalid")
    unknown = sorted(set(rule) - set(RULE_FIELDS))
    if unknown:
        raise InvalidInput(f"{where}: unknown field {', '.join(unknown)}.", code="invalid")
    cleaned = {name: rule[name] for name in RULE_FIELDS if rule.get(name) is not None}
    if not cleaned:
        raise InvalidInput(
            f"{where}: give at least one of type, path_glob, max_size (a rule that matches "
            "everything would approve every file).",
            code="invalid",
        )
    if "type" in cleaned and cleaned["type"] not in ArtifactType.values:
        raise InvalidInput(
            f"{where}.type: one of {', '.join(ArtifactType.values)}.", code="invalid_choice"
        )
    glob = cleaned.get("path_glob")
    if glob is not None and (
        not isinstance(glob, str) or not glob or len(glob) > PATH_GLOB_MAX_CHARS or "\x00" in glob
    ):
        raise InvalidInput(
            f"{where}.path_glob: 1 to {PATH_GLOB_MAX_CHARS} characters, no NUL.", code="invalid"
        )
    size = cleaned.get("max_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise InvalidInput(f"{where}.max_size: bytes, an integer ≥ 0.", code="invalid")
    return cleaned


def clean_policy(
    *,
    auto_approve: Any = None,
    required_approvals: Any = 1,
    second_approval_only_with_signals: Any = False,
    expire_after_h: Any = None,
) -> dict[str, Any]:
    """A whole policy, checked; what is not given takes its default (SPEC §13: a PUT
    replaces the whole policy)."""
    rules = auto_approve if auto_approve is not None else []
    if not isinstance(rules, list) or len(rules) > MAX_AUTO_APPROVE_RULES:
        raise InvalidInput(
            f"auto_approve: a list of at most {MAX_AUTO_APPROVE_RULES} rules.", code="invalid"
        )
    if required_approvals not in (1, 2) or isinstance(required_approvals, bool):
        raise InvalidInput("required_approvals: 1 or 2.", code="invalid_choice")
    if not isinstance(second_approval_only_with_signals, bool):
        raise InvalidInput("second_approval_only_with_signals: true or false.", code="invalid")
    if expire_after_h is not None and (
        isinstance(expire_after_h, bool)
        or not isinstance(expire_after_h, int)
        or not 1 <= expire_after_h <= EXPIRE_AFTER_MAX_H
    ):
        raise InvalidInput(
            f"expire_after_h: hours, 1 to {EXPIRE_AFTER_MAX_H}, or null.", code="invalid"
        )
    return {
        "auto_approve": [clean_rule(rule, n) for n, rule in enumerate(rules, start=1)],
        "required_approvals": required_approvals,
        "second_approval_only_with_signals": second_approval_only_with_signals,
        "expire_after_h": expire_after_h,
    }


def review_policy_set(*, workspace: Workspace, actor: Actor, **fields: Any) -> ReviewPolicy:
    """Replace the workspace's policy with `fields` (checked; defaults for what is missing)
    and put `review_policy.changed` on the trail with the old and the new policy, unless
    nothing changed. The caller checked the role (admin or owner)."""
    new = clean_policy(**fields)
    with transaction.atomic():
        policy = ReviewPolicy.objects.select_for_update().filter(workspace=workspace).first()
        if policy is None:
            policy = ReviewPolicy(workspace=workspace)
        old = policy.as_json()
        if old == new and policy.pk is not None and not policy._state.adding:
            return policy
        for name, value in new.items():
            setattr(policy, name, value)
        policy.updated_at = timezone.now()
        policy.updated_by = str(actor)
        policy.save()
        events.record(
            actor=actor,
            type=EventType.REVIEW_POLICY_CHANGED,
            subject=policy,
            data={"from": old, "to": new},
        )
    return policy


# --- at capture: auto-approval ----------------------------------------------------------


def rule_matches(rule: dict[str, Any], artifact: Artifact) -> bool:
    """Every field the rule gives matches (the glob on the sandbox path, case-sensitive)."""
    if "type" in rule and artifact.type != rule["type"]:
        return False
    if "max_size" in rule and artifact.size > rule["max_size"]:
        return False
    return not (
        "path_glob" in rule
        and not (
            artifact.sandbox_path and fnmatch.fnmatchcase(artifact.sandbox_path, rule["path_glob"])
        )
    )


def matching_rule(policy: ReviewPolicy, artifact: Artifact) -> tuple[int, dict[str, Any]] | None:
    """The first rule (numbered from 1) that approves this artifact, or None. Never for an
    artifact with a `secret` or `active_content` signal, whatever the rules say."""
    if risk.blocks_auto_approve(artifact.signals):
        return None
    for number, rule in enumerate(policy.auto_approve, start=1):
        if rule_matches(rule, artifact):
            return number, rule
    return None


def apply_at_capture(*, artifact: Artifact) -> Artifact:
    """Auto-approve a just-captured artifact when a rule of its workspace's policy says so.
    Runs inside the capture's transaction, so the artifact is never seen pending first."""
    policy = selectors.review_policy_for(workspace_id=artifact.workspace_id)
    match = matching_rule(policy, artifact)
    if match is not None:
        number, rule = match
        artifact.auto_approve(rule=rule, rule_number=number, by=SYSTEM_POLICY)
        artifact.save()
    return artifact


# --- beat: expiry ----------------------------------------------------------------------


def artifacts_expire(*, now: datetime | None = None, limit: int = EXPIRE_BATCH) -> int:
    """Expire artifacts pending longer than their workspace's `expire_after_h` (at most
    `limit` per call; beat calls again). Each one in its own transaction under a row lock
    taken with skip_locked: a reviewer deciding it at that moment wins, and overlapping
    runs of this task never expire one twice. Returns how many expired."""
    now = now or timezone.now()
    expired = 0
    for policy in ReviewPolicy.objects.filter(expire_after_h__isnull=False).order_by("pk"):
        assert policy.expire_after_h is not None
        cutoff = now - timedelta(hours=policy.expire_after_h)
        due = Artifact.objects.filter(
            workspace_id=policy.workspace_id,
            review_state=ReviewState.PENDING,
            created_at__lt=cutoff,
        ).order_by("created_at", "id")
        for artifact_id in list(due.values_list("pk", flat=True)[: limit - expired]):
            if _expire_one(artifact_id, policy.expire_after_h):
                expired += 1
        if expired >= limit:
            break
    if expired:
        logger.info("expired %d pending artifacts", expired)
    return expired


def _expire_one(artifact_id: Any, after_h: int) -> bool:
    with transaction.atomic():
        artifact = (
            Artifact.objects.select_for_update(skip_locked=True)
            .select_related("run")
            .filter(pk=artifact_id, review_state=ReviewState.PENDING)
            .first()
        )
        if artifact is None:
            return False  # decided meanwhile, or someone holds it right now
        artifact.expire(after_h=after_h, by=SYSTEM_POLICY)
        artifact.save()
        return True
