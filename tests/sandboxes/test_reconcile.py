"""Reconcile (sandboxes/reconcile.py): orphan sandboxes are killed, runs whose sandbox is gone
fail as sandbox_lost, and nothing of another deployment or app is ever touched. On the
in-memory backend, with faults injected through the backend interface (FaultyBackend). Its
command is in test_commands."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sandboxes import services
from sandboxes.backends import (
    SandboxInfo,
    SandboxNotFound,
    TransientBackendError,
    app_tags,
    override_backend,
)
from sandboxes.reconcile import sandboxes_reconcile
from sandboxes.tasks import reconcile_sandboxes
from tests.factories import make_run, transitions
from tests.sandboxes.fake_backend import FakeBackend, start_run
from tests.sandboxes.faults import FaultyBackend
from workspaces.access import Actor
from workspaces.models import Workspace

pytestmark = pytest.mark.django_db


def _tags(run_id: str) -> dict[str, str]:
    return {**app_tags(), "run_id": run_id, "workspace_id": str(uuid.uuid4())}


def test_the_sandbox_of_an_ended_run_is_killed(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace)
    # The cancel's own kill failed: the run is canceled, its sandbox still up.
    fake_backend.fail_next_kill(run.sandbox_id, TransientBackendError("E2B is busy"))
    services.run_cancel(run=run, actor=Actor(user=workspace.owner))
    assert run.sandbox_id in fake_backend.live_ids()

    report = sandboxes_reconcile()

    assert report.as_dict() == {"killed": 1, "lost": 0, "errors": 0}
    assert fake_backend.live_ids() == set()
    assert [(a.outcome, a.reason) for a in report.actions] == [("killed", "run canceled")]


def test_sandboxes_of_unknown_runs_are_killed(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    fake_backend.add(_tags(str(uuid.uuid4())))  # a run id no run has (e.g. its database was reset)
    fake_backend.add(_tags("not-a-run-id"))
    fake_backend.add(app_tags())  # no run id at all

    report = sandboxes_reconcile()

    assert report.as_dict() == {"killed": 3, "lost": 0, "errors": 0}
    assert fake_backend.live_ids() == set()


def test_a_second_sandbox_tagged_for_a_running_run_is_killed_and_its_own_kept(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace)
    duplicate = fake_backend.add(_tags(str(run.pk)))

    report = sandboxes_reconcile()

    assert report.killed == 1
    assert fake_backend.live_ids() == {run.sandbox_id}
    assert fake_backend.kills == [duplicate.sandbox_id]
    run.refresh_from_db()
    assert run.status == "running"


def test_sandboxes_of_another_deployment_or_app_are_never_touched(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    elsewhere = {
        fake_backend.add({**_tags(str(uuid.uuid4())), "env": "staging"}).sandbox_id,
        fake_backend.add({**_tags(str(uuid.uuid4())), "app": "other-app"}).sandbox_id,
        fake_backend.add({"purpose": "check"}).sandbox_id,
    }

    def ignore_the_filter(listed: list[SandboxInfo]) -> None:
        listed[:] = list(fake_backend.sandboxes.values())

    # Even from a backend that ignores the metadata filter and lists everything.
    faulty = FaultyBackend(fake_backend)
    faulty.after("list_sandboxes", ignore_the_filter)
    with override_backend(faulty):
        report = sandboxes_reconcile()

    assert report.as_dict() == {"killed": 0, "lost": 0, "errors": 0}
    assert fake_backend.live_ids() == elsewhere
    assert fake_backend.kills == []


def test_a_running_run_whose_sandbox_is_gone_fails_as_lost(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace)
    kept = start_run(workspace=workspace)
    fake_backend.kill(run.sandbox_id)  # the provider ended it (its deadline, an outage)

    report = sandboxes_reconcile()

    assert report.as_dict() == {"killed": 0, "lost": 1, "errors": 0}
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "sandbox_lost")
    assert run.error is not None and run.error["code"] == "sandbox_not_found"
    last = transitions(run.pk).last()
    assert last is not None and last.actor == "system:reconcile"
    kept.refresh_from_db()
    assert kept.status == "running"


def test_a_sandbox_the_listing_missed_is_asked_for_by_id_before_its_run_is_failed(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace)
    faulty = FaultyBackend(fake_backend)
    faulty.after("list_sandboxes", lambda listed: listed.clear())  # a lagging list
    with override_backend(faulty):
        assert sandboxes_reconcile().as_dict() == {"killed": 0, "lost": 0, "errors": 0}
    run.refresh_from_db()
    assert run.status == "running"


def test_a_run_that_starts_while_the_sandboxes_are_listed_is_not_lost(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = make_run(workspace=workspace)  # booting
    faulty = FaultyBackend(fake_backend)

    def the_boot_finishes(listed: list[SandboxInfo]) -> None:
        # Right after the reconcile's listing: the boot makes a sandbox the listing missed...
        services.run_boot(run_id=str(run.pk))
        # ...and a lagging get_info does not see it either.
        faulty.fail_next("get_info", SandboxNotFound("not yet"))

    faulty.after("list_sandboxes", the_boot_finishes)
    with override_backend(faulty):
        report = sandboxes_reconcile()

    run.refresh_from_db()
    assert run.status == "running"
    assert report.as_dict() == {"killed": 0, "lost": 0, "errors": 0}


def test_the_sandbox_of_a_booting_run_is_left_to_the_boot(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = make_run(workspace=workspace)  # booting
    made = fake_backend.add(_tags(str(run.pk)))  # created, id not saved yet

    assert sandboxes_reconcile().as_dict() == {"killed": 0, "lost": 0, "errors": 0}
    assert fake_backend.live_ids() == {made.sandbox_id}

    services.run_boot(run_id=str(run.pk))  # the boot adopts it
    run.refresh_from_db()
    assert (run.status, run.sandbox_id) == ("running", made.sandbox_id)


def test_a_failed_kill_is_counted_and_retried_by_the_next_reconcile(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    orphan = fake_backend.add(_tags(str(uuid.uuid4())))
    fake_backend.fail_next_kill(orphan.sandbox_id, TransientBackendError("E2B is busy"))

    assert sandboxes_reconcile().as_dict() == {"killed": 0, "lost": 0, "errors": 1}
    assert orphan.sandbox_id in fake_backend.live_ids()
    assert reconcile_sandboxes() == {"killed": 1, "lost": 0, "errors": 0}
    assert fake_backend.live_ids() == set()


# --- paused runs (SPEC §15) ------------------------------------------------------------------


def test_a_paused_runs_sandbox_is_neither_an_orphan_nor_lost(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = services.run_pause(run=start_run(workspace=workspace), actor=Actor(user=workspace.owner))
    duplicate = fake_backend.add(_tags(str(run.pk)))  # one the boot never used

    report = sandboxes_reconcile()

    assert report.as_dict() == {"killed": 1, "lost": 0, "errors": 0}
    assert [(a.reason, a.sandbox_id) for a in report.actions] == [
        ("not the run's sandbox", duplicate.sandbox_id)
    ]
    assert fake_backend.live_ids() == {run.sandbox_id}
    assert run.sandbox_id in fake_backend.paused
    run.refresh_from_db()
    assert run.status == "paused"


def test_a_paused_run_whose_sandbox_is_gone_fails_as_lost(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = services.run_pause(run=start_run(workspace=workspace), actor=Actor(user=workspace.owner))
    fake_backend.kill(run.sandbox_id)

    report = sandboxes_reconcile()

    assert report.as_dict() == {"killed": 0, "lost": 1, "errors": 0}
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "sandbox_lost")


def test_on_e2b_a_paused_sandbox_is_listed_and_known(
    workspace: Workspace, e2b_sandboxes: object, e2b_server: Any
) -> None:
    from tests.sandboxes.backends.test_e2b import fake

    run = services.run_pause(run=start_run(workspace=workspace), actor=Actor(user=workspace.owner))
    assert fake(e2b_server, run.sandbox_id).state == "paused"

    assert sandboxes_reconcile().as_dict() == {"killed": 0, "lost": 0, "errors": 0}
    run.refresh_from_db()
    assert run.status == "paused"
    assert fake(e2b_server, run.sandbox_id).state == "paused"  # not resumed by looking
