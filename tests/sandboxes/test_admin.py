"""sandboxes/admin.py with Django's test client: runs read-only with their cost and timeline,
the cancel action through the service, scoping of staff users, and the usage line it adds to
the workspace admin."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from sandboxes.models import SandboxRun
from tests.conftest import messages_of
from tests.factories import make_run, make_user, make_workspace, transitions
from tests.sandboxes.conftest import T0
from tests.sandboxes.fake_backend import FakeBackend, start_run
from workspaces.models import Workspace

RUNS = "/admin/sandboxes/sandboxrun/"

pytestmark = pytest.mark.django_db


def test_the_admin_shows_each_runs_cost_and_each_workspaces_usage(
    client: Any, workspace: Workspace, time_machine: Any
) -> None:
    time_machine.move_to(T0, tick=False)
    ended = make_run(
        workspace=workspace, status="succeeded", running_at=T0 - timedelta(hours=2),
        finished_at=T0 - timedelta(minutes=30), cost_usd=Decimal("1.234567"),
    )  # fmt: skip
    make_run(workspace=workspace, status="running", running_at=T0 - timedelta(minutes=30))
    client.force_login(make_user(username="root", is_staff=True, is_superuser=True))

    runs_page = client.get(RUNS).content.decode()
    assert "1.234567" in runs_page
    run_page = client.get(f"{RUNS}{ended.pk}/change/").content.decode()
    assert "1.234567" in run_page

    page = client.get(f"/admin/workspaces/workspace/{workspace.pk}/change/").content.decode()
    # 1 h 30 min ended + 30 min still running = 2 sandbox-hours; cost of the ended run only.
    assert "1 active now · last 30 days: 2 runs, 2.00 sandbox-hours, $1.234567" in page


def test_the_cancel_action_cancels_through_the_service_and_counts(
    client: Any, reviewer: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    running = start_run(workspace=workspace)
    booting = make_run(workspace=workspace)
    ended = make_run(workspace=workspace, status="succeeded")
    client.force_login(reviewer)

    response = client.post(
        RUNS,
        {"action": "cancel_runs", "_selected_action": [running.pk, booting.pk, ended.pk]},
        follow=True,
    )

    assert "2 canceled, 1 skipped (already ended)." in messages_of(response)
    assert fake_backend.live_ids() == set()
    for run in (running, booting):
        run.refresh_from_db()
        assert (run.status, run.end_reason) == ("canceled", "canceled_by_user")
    canceled = transitions(running.pk, booting.pk).filter(type="run.canceled")
    assert {(e.actor, e.actor_user_id) for e in canceled} == {("user:adam", reviewer.pk)}


def test_staff_see_and_cancel_only_runs_of_workspaces_they_administer(
    client: Any, reviewer: Any, workspace: Workspace, outsider: Any
) -> None:
    mine = make_run(workspace=workspace)
    beta = make_workspace(owner=outsider, name="Beta", members={reviewer: "member"})
    hidden = make_run(workspace=beta)
    client.force_login(reviewer)

    listed = client.get(RUNS).context["cl"].result_list
    assert [run.pk for run in listed] == [mine.pk]
    assert client.get(f"{RUNS}{hidden.pk}/change/").status_code == 302  # "does not exist"
    client.post(RUNS, {"action": "cancel_runs", "_selected_action": [hidden.pk]})
    hidden.refresh_from_db()
    assert hidden.status == "booting"


def test_a_run_is_read_only_and_keeps_its_secrets(
    client: Any, reviewer: Any, workspace: Workspace
) -> None:
    run = make_run(
        workspace=workspace, status="running", env={"TOKEN": "hunter2"},
        files={"/home/user/in.txt": "the contents"}, prompt="Summarise Q3",
    )  # fmt: skip
    client.force_login(reviewer)

    page = client.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert "Summarise Q3" in page
    assert "hunter2" not in page and "the contents" not in page
    assert client.get(f"{RUNS}add/").status_code == 403
    client.post(f"{RUNS}{run.pk}/change/", {"prompt": "changed", "_save": "1"})
    client.post(f"{RUNS}{run.pk}/delete/", {"post": "yes"})
    run.refresh_from_db()
    assert (run.prompt, run.status) == ("Summarise Q3", "running")
    assert SandboxRun.objects.filter(pk=run.pk).exists()


# The run page is the run review page (artifacts.admin); its timeline is tested in
# tests/artifacts/test_admin.py. The command history is on it too:
def test_the_run_page_shows_its_command_history(
    client: Any, reviewer: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    from sandboxes import execution
    from sandboxes.backends import CommandResult
    from workspaces.access import Actor

    run = start_run(workspace=workspace)
    fake_backend.command_results["make report"] = CommandResult(2, "built <b>it</b>", "", False, 9)
    execution.run_exec(run=run, actor=Actor(user=workspace.owner), command="make report",
                       env={"TOKEN": "hunter2"})  # fmt: skip
    client.force_login(reviewer)

    page = client.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert "Command history" in page
    assert "make report" in page and "user:olivia" in page
    assert "built &lt;b&gt;it&lt;/b&gt;" in page  # the output's end, escaped
    assert "hunter2" not in page
    assert 'name="commands-0-command"' not in page  # read-only: no form fields


def test_the_pause_and_resume_actions_go_through_the_services(
    client: Any, reviewer: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    running = start_run(workspace=workspace)
    booting = make_run(workspace=workspace)
    client.force_login(reviewer)

    paused = client.post(
        RUNS, {"action": "pause_runs", "_selected_action": [running.pk, booting.pk]}, follow=True
    )

    assert "1 paused, 1 skipped (not running)." in messages_of(paused)
    running.refresh_from_db()
    assert running.status == "paused"
    assert running.sandbox_id in fake_backend.paused
    [event] = transitions(running.pk).filter(type="run.paused")
    assert (event.actor, event.actor_user_id) == ("user:adam", reviewer.pk)

    resumed = client.post(
        RUNS, {"action": "resume_runs", "_selected_action": [running.pk, booting.pk]}, follow=True
    )

    assert "1 resumed, 1 skipped (not paused)." in messages_of(resumed)
    running.refresh_from_db()
    assert running.status == "running"
    assert running.sandbox_id not in fake_backend.paused
    assert transitions(running.pk).filter(type="run.resumed", actor="user:adam").count() == 1


def test_a_pause_the_backend_refuses_is_reported_with_why(
    client: Any, reviewer: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace)
    fake_backend.supports_pause = False
    client.force_login(reviewer)
    response = client.post(
        RUNS, {"action": "pause_runs", "_selected_action": [run.pk]}, follow=True
    )
    [message] = messages_of(response)
    assert message.startswith(f"0 paused, 0 skipped (not running). 1 refused: {str(run.pk)[:8]}")
    assert "cannot pause" in message


def test_a_run_page_says_how_it_waits_and_what_it_may_reach(
    client: Any, reviewer: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = make_run(
        workspace=workspace, status="paused", on_idle="pause",
        paused_for=timedelta(minutes=20),
        network={"internet": False, "allow_out": ["pypi.org"], "deny_out": []},
    )  # fmt: skip
    client.force_login(reviewer)
    page = client.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert "pauses when idle for 15 min; paused 20 min in all, not billed" in page
    assert "no internet; allowed: pypi.org" in page


def test_the_run_list_counts_only_up_to_its_bound_and_says_more_than(
    client: Any, workspace: Workspace, monkeypatch: Any
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from workspaces.admin import BoundedCountPaginator

    monkeypatch.setattr(BoundedCountPaginator, "COUNT_LIMIT", 3)
    for n in range(5):
        make_run(workspace=workspace, prompt=f"run number {n}\nmore")
    client.force_login(make_user(username="root", is_staff=True, is_superuser=True))
    with CaptureQueriesContext(connection) as queries:
        page = client.get(RUNS).content.decode()
    assert "more than 3 sandbox runs" in page
    assert "run number 4" in page  # the prompt's first line, from its first 200 characters
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT 4" in sql for sql in counts), counts
    # Under the bound the list says how many there are.
    monkeypatch.setattr(BoundedCountPaginator, "COUNT_LIMIT", 10)
    assert "5 sandbox runs" in client.get(RUNS).content.decode()


def test_the_run_list_filters_by_fixed_date_ranges_not_a_date_drill_down(
    client: Any, workspace: Workspace
) -> None:
    make_run(workspace=workspace)
    client.force_login(make_user(username="root", is_staff=True, is_superuser=True))
    response = client.get(RUNS)
    assert response.context["cl"].date_hierarchy is None
    assert "Past 7 days" in response.content.decode()
    assert client.get(RUNS + "?created_at__gte=2000-01-01+00:00:00%2B00:00").status_code == 200
