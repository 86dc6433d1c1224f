"""The review console (artifacts/admin.py) with Django's test client: the pending queue, bulk
approve and reject through the services, transition buttons, safe previews, scoping of staff
users, escaping everywhere, and a constant number of queries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from artifacts.models import Artifact
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import PNG, XSS, make_artifact, review_state
from tests.conftest import messages_of
from tests.factories import make_api_key, make_run, make_workspace, transitions
from tests.sandboxes.fake_backend import fake_backend_fixture  # noqa: F401 (the fixture)
from workspaces.access import Actor

CHANGELIST = "/admin/artifacts/artifact/"
ESCAPED_XSS = "&lt;script&gt;alert(1)&lt;/script&gt;"
# Session, user, the user's permissions (2, for the sidebar), the workspace filter's choices,
# the two counts and the page itself: nothing per row. 50 rows must not need one more.
QUERIES_FOR_THE_CHANGELIST = 8


def _change(artifact: Artifact) -> str:
    return f"{CHANGELIST}{artifact.pk}/change/"


def _listed(response: Any) -> list[str]:
    assert response.status_code == 200
    return [a.title for a in response.context["cl"].result_list]


@pytest.fixture
def elsewhere(outsider: Any, reviewer: Any) -> dict[str, SandboxRun]:
    """Runs in a workspace where the reviewer is a plain member, and in one they are not in."""
    beta = make_workspace(owner=outsider, name="Beta", members={reviewer: "member"})
    gamma = make_workspace(owner=outsider, name="Gamma")
    return {
        "beta": make_run(workspace=beta, status="running", thread_id="thread-b"),
        "gamma": make_run(workspace=gamma, status="running", thread_id="thread-g"),
    }


def _aged(artifact: Artifact, minutes: int) -> Artifact:
    Artifact.objects.filter(pk=artifact.pk).update(
        created_at=timezone.now() - timedelta(minutes=minutes)
    )
    return artifact


# --- the queue -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_console_opens_on_the_pending_queue_oldest_first(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    _aged(make_artifact(run, title="newest"), 1)
    _aged(make_artifact(run, title="oldest"), 30)
    _aged(make_artifact(run, title="middle"), 10)
    make_artifact(run, title="decided", state="approved")
    client.force_login(reviewer)

    response = client.get(CHANGELIST)

    assert _listed(response) == ["oldest", "middle", "newest"]
    html = response.content.decode()
    assert "Pending (queue)" in html
    assert "6\xa0bytes" in html  # size, human-readable
    assert "30\xa0minutes" in html  # age


@pytest.mark.django_db
def test_filters_and_search(client: Any, reviewer: Any, run: SandboxRun, workspace: Any) -> None:
    other_run = make_run(workspace=workspace, status="running", thread_id="thread-z")
    text = _aged(make_artifact(run, title="report.txt"), 5)
    image = _aged(make_artifact(other_run, title="chart.png", data=PNG), 4)
    done = _aged(make_artifact(run, title="done.txt", state="approved"), 60)
    client.force_login(reviewer)

    assert _listed(client.get(f"{CHANGELIST}?review_state=approved")) == [done.title]
    # All states: still the queue first, then the decided ones.
    all_states = _listed(client.get(f"{CHANGELIST}?review_state=all"))
    assert all_states == [text.title, image.title, done.title]
    assert _listed(client.get(f"{CHANGELIST}?type__exact=image")) == [image.title]
    assert _listed(client.get(f"{CHANGELIST}?workspace__id__exact={workspace.pk}")) == [
        text.title,
        image.title,
    ]
    assert _listed(client.get(f"{CHANGELIST}?q=report")) == [text.title]
    assert _listed(client.get(f"{CHANGELIST}?q=thread-z")) == [image.title]
    assert _listed(client.get(f"{CHANGELIST}?q={other_run.pk}")) == [image.title]
    assert _listed(client.get(f"{CHANGELIST}?q={text.pk}")) == [text.title]
    # NUL, which PostgreSQL text cannot hold: the admin's search form refuses the term.
    assert _listed(client.get(CHANGELIST, {"q": "rep\x00ort"})) == [text.title, image.title]


@pytest.mark.django_db
@pytest.mark.parametrize("rows", [5, 50])
def test_the_changelist_uses_a_constant_number_of_queries(
    client: Any,
    reviewer: Any,
    run: SandboxRun,
    workspace: Any,
    rows: int,
    django_assert_max_num_queries: Any,
) -> None:
    client.force_login(reviewer)
    other_run = make_run(workspace=workspace, status="running")
    for n in range(rows):
        make_artifact(run if n % 2 else other_run, title=f"a{n}.txt")
        make_artifact(run, title=f"done{n}.txt", state="approved", reviewer=reviewer)
    client.get(CHANGELIST)  # warm caches (content types, sessions) outside the count

    with django_assert_max_num_queries(QUERIES_FOR_THE_CHANGELIST):
        assert len(_listed(client.get(CHANGELIST))) == rows
    with django_assert_max_num_queries(QUERIES_FOR_THE_CHANGELIST):
        assert len(_listed(client.get(f"{CHANGELIST}?review_state=all"))) == min(2 * rows, 50)


@pytest.mark.django_db
def test_the_run_page_with_its_artifacts_inline_uses_a_constant_number_of_queries(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    client.force_login(reviewer)
    url = f"/admin/sandboxes/sandboxrun/{run.pk}/change/"
    counts = []
    for total in (5, 50):
        while Artifact.objects.count() < total:
            make_artifact(run)
        client.get(url)
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]


# --- scoping ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_see_and_act_only_in_workspaces_they_administer(
    client: Any, reviewer: Any, run: SandboxRun, elsewhere: dict[str, SandboxRun]
) -> None:
    mine = make_artifact(run, title="mine", data=PNG)
    beta = make_artifact(elsewhere["beta"], title="beta", data=PNG)
    gamma = make_artifact(elsewhere["gamma"], title="gamma", data=PNG)
    client.force_login(reviewer)

    assert _listed(client.get(f"{CHANGELIST}?review_state=all")) == ["mine"]
    for hidden in (beta, gamma):
        assert client.get(_change(hidden)).status_code == 302  # "does not exist" → index
        assert client.get(f"{CHANGELIST}{hidden.pk}/image/").status_code == 404
        assert client.get(f"{CHANGELIST}{hidden.pk}/download/").status_code == 404
        assert client.get(f"{CHANGELIST}{hidden.pk}/transition/reject/").status_code == 302
        client.post(_change(hidden), {"_fsm_transition_to": "approve"})

    client.post(
        CHANGELIST,
        {"action": "approve_selected", "_selected_action": [mine.pk, beta.pk, gamma.pk]},
    )

    assert [review_state(a) for a in (mine, beta, gamma)] == ["approved", "pending", "pending"]
    assert client.get(f"{CHANGELIST}{mine.pk}/image/").status_code == 200


@pytest.mark.django_db
def test_a_superuser_sees_every_workspace(
    client: Any, superuser: Any, run: SandboxRun, elsewhere: dict[str, SandboxRun]
) -> None:
    for key, other in elsewhere.items():
        make_artifact(other, title=key)
    make_artifact(run, title="mine")
    client.force_login(superuser)
    assert sorted(_listed(client.get(CHANGELIST))) == ["beta", "gamma", "mine"]


@pytest.mark.django_db
def test_the_index_counts_pending_reviews_and_running_sandboxes_in_scope(
    client: Any, reviewer: Any, superuser: Any, run: SandboxRun, elsewhere: dict[str, SandboxRun]
) -> None:
    make_artifact(run)
    make_artifact(run)
    make_artifact(run, state="approved")
    make_artifact(elsewhere["gamma"])
    make_run(workspace=run.workspace, status="succeeded")

    client.force_login(reviewer)
    html = client.get("/admin/").content.decode()
    assert '<td id="pending-reviews">2</td>' in html
    assert '<td id="running-sandboxes">1</td>' in html

    client.force_login(superuser)
    html = client.get("/admin/").content.decode()
    assert '<td id="pending-reviews">3</td>' in html
    assert '<td id="running-sandboxes">3</td>' in html


# --- bulk decisions --------------------------------------------------------------------------


@pytest.mark.django_db
def test_bulk_approve_goes_through_the_service_and_counts(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    first, second = make_artifact(run), make_artifact(run)
    decided = make_artifact(run, state="rejected")
    client.force_login(reviewer)

    response = client.post(
        f"{CHANGELIST}?review_state=all",
        {"action": "approve_selected", "_selected_action": [first.pk, second.pk, decided.pk]},
        follow=True,
    )

    assert "2 approved, 1 skipped (already decided)." in messages_of(response)
    assert [review_state(a) for a in (first, second, decided)] == [
        "approved",
        "approved",
        "rejected",
    ]
    rows = transitions(first.pk, second.pk)
    assert {(r.actor, r.actor_user_id, r.data["to"]) for r in rows} == {
        ("user:adam", reviewer.pk, "approved")
    }


@pytest.mark.django_db
def test_bulk_reject_asks_for_a_comment_first(client: Any, reviewer: Any, run: SandboxRun) -> None:
    first, second = make_artifact(run, title="one"), make_artifact(run, title="two")
    selected = {"action": "reject_selected", "_selected_action": [first.pk, second.pk]}
    client.force_login(reviewer)

    page = client.post(CHANGELIST, selected)
    assert page.status_code == 200
    assert page.templates[0].name == "admin/artifacts/artifact/reject_selected.html"
    assert [review_state(a) for a in (first, second)] == ["pending", "pending"]

    empty = client.post(CHANGELIST, {**selected, "apply": "yes", "comment": "  "})
    assert empty.status_code == 200
    assert "This field is required." in empty.content.decode()

    done = client.post(
        CHANGELIST, {**selected, "apply": "yes", "comment": "leaks a key"}, follow=True
    )
    assert "2 rejected, 0 skipped (already decided)." in messages_of(done)
    for artifact in (first, second):
        artifact.refresh_from_db()
        assert (artifact.review_state, artifact.review_comment) == ("rejected", "leaks a key")


@pytest.mark.django_db
def test_bulk_actions_report_refusals(client: Any, owner: Any, run: SandboxRun) -> None:
    owner.is_staff = True
    owner.save(update_fields=["is_staff"])
    own = make_artifact(run, title="own run")
    client.force_login(owner)

    response = client.post(
        CHANGELIST, {"action": "approve_selected", "_selected_action": [own.pk]}, follow=True
    )

    assert "0 approved, 0 skipped (already decided)." in messages_of(response)
    assert any("1 refused" in m and "own run" in m for m in messages_of(response))
    assert review_state(own) == "pending"


# --- the change page -------------------------------------------------------------------------


@pytest.mark.django_db
def test_approve_with_the_transition_button(client: Any, reviewer: Any, run: SandboxRun) -> None:
    artifact = make_artifact(run)
    client.force_login(reviewer)

    page = client.get(_change(artifact)).content.decode()
    assert 'name="_fsm_transition_to"' in page
    assert 'value="approve"' in page
    assert 'value="reject"' in page

    client.post(_change(artifact), {"_fsm_transition_to": "approve"})

    artifact.refresh_from_db()
    assert (artifact.review_state, artifact.reviewed_by) == ("approved", reviewer)
    page = client.get(_change(artifact)).content.decode()
    assert 'name="_fsm_transition_to"' not in page
    assert "Decided: this is final." in page
    assert "pending → approved · <code>approve</code> by user:adam" in page


@pytest.mark.django_db
def test_reject_with_the_transition_button_asks_for_a_comment(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    artifact = make_artifact(run)
    client.force_login(reviewer)
    form_url = f"{CHANGELIST}{artifact.pk}/transition/reject/"

    response = client.post(_change(artifact), {"_fsm_transition_to": "reject"})
    assert response.status_code == 302
    assert response["Location"] == form_url
    assert review_state(artifact) == "pending"

    assert client.post(form_url, {"comment": ""}).status_code == 200
    assert review_state(artifact) == "pending"

    client.post(form_url, {"comment": "wrong customer data"})
    artifact.refresh_from_db()
    assert (artifact.review_state, artifact.review_comment) == ("rejected", "wrong customer data")
    [log] = transitions(artifact.pk)
    assert (log.data["transition"], log.actor) == ("reject", "user:adam")


@pytest.mark.django_db
def test_no_buttons_for_your_own_run_and_posting_anyway_changes_nothing(
    client: Any, owner: Any, run: SandboxRun
) -> None:
    owner.is_staff = True
    owner.save(update_fields=["is_staff"])
    artifact = make_artifact(run)
    client.force_login(owner)

    page = client.get(_change(artifact)).content.decode()
    assert 'name="_fsm_transition_to"' not in page
    assert "You started this run: someone else must review its artifacts." in page

    response = client.post(_change(artifact), {"_fsm_transition_to": "approve"}, follow=True)
    assert "You started this run; someone else must review its artifacts." in messages_of(response)
    assert review_state(artifact) == "pending"


@pytest.mark.django_db
def test_only_the_review_transitions_can_be_posted(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    artifact = make_artifact(run)
    client.force_login(reviewer)
    for name in ("delete", "save", "_decide", "approve_"):
        response = client.post(_change(artifact), {"_fsm_transition_to": name}, follow=True)
        assert response.status_code == 200
        assert "Unknown transition." in messages_of(response)
        assert client.get(f"{CHANGELIST}{artifact.pk}/transition/{name}/").status_code == 404
    assert Artifact.objects.filter(pk=artifact.pk).exists()
    assert review_state(artifact) == "pending"


@pytest.mark.django_db
def test_the_state_cannot_be_edited_only_transitioned(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    artifact = make_artifact(run)
    client.force_login(reviewer)
    client.post(_change(artifact), {"review_state": "approved", "title": "renamed", "_save": "1"})
    artifact.refresh_from_db()
    assert (artifact.review_state, artifact.title) == ("pending", "notes.txt")
    assert not transitions(artifact.pk).exists()


@pytest.mark.django_db
def test_the_change_page_shows_the_run_context_and_a_download(
    client: Any, reviewer: Any, workspace: Any
) -> None:
    run = make_run(
        workspace=workspace, status="running", prompt="Summarise Q3", command="python make.py"
    )
    artifact = make_artifact(run, title="report.py", data=b"def main():\n    return 42\n")
    client.force_login(reviewer)

    page = client.get(_change(artifact)).content.decode()

    assert "Summarise Q3" in page
    assert "python make.py" in page
    assert f"/admin/sandboxes/sandboxrun/{run.pk}/change/" in page
    assert f"{CHANGELIST}{artifact.pk}/download/" in page
    assert '<div class="highlight"' in page  # Pygments highlighting of the code preview
    download = client.get(f"{CHANGELIST}{artifact.pk}/download/")
    assert download["Content-Disposition"].startswith("attachment")
    assert download["X-Content-Type-Options"] == "nosniff"
    assert b"".join(download.streaming_content) == b"def main():\n    return 42\n"


@pytest.mark.django_db
def test_raster_images_are_shown_inline_and_nothing_else_is(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    image = make_artifact(run, title="chart.png", data=PNG)
    svg = make_artifact(
        run, title="logo.svg", data=b'<svg xmlns="http://www.w3.org/2000/svg" onload="x()"/>'
    )
    client.force_login(reviewer)

    page = client.get(_change(image)).content.decode()
    assert f'<img src="{CHANGELIST}{image.pk}/image/"' in page
    shown = client.get(f"{CHANGELIST}{image.pk}/image/")
    assert (shown["Content-Type"], shown["X-Content-Type-Options"]) == ("image/png", "nosniff")
    assert b"".join(shown.streaming_content) == PNG

    page = client.get(_change(svg)).content.decode()
    assert "<img" not in page.split('id="content-main"')[1]
    assert 'onload="x()"' not in page
    assert "&lt;svg" in page  # shown as text
    assert client.get(f"{CHANGELIST}{svg.pk}/image/").status_code == 404


@pytest.mark.django_db
def test_the_run_admin_lists_its_artifacts(client: Any, reviewer: Any, run: SandboxRun) -> None:
    make_artifact(run, title="inline-one.txt")
    make_artifact(run, title="inline-two.txt", state="approved")
    client.force_login(reviewer)
    page = client.get(f"/admin/sandboxes/sandboxrun/{run.pk}/change/").content.decode()
    assert "inline-one.txt" in page
    assert "inline-two.txt" in page


# --- escaping everywhere ---------------------------------------------------------------------


@pytest.mark.django_db
def test_hostile_titles_and_contents_are_escaped_on_every_page(
    client: Any, reviewer: Any, workspace: Any
) -> None:
    run = make_run(workspace=workspace, status="running", thread_id=XSS, prompt=XSS, command=XSS)
    html_file = make_artifact(run, title=XSS, data=f"<html><body>{XSS}</body></html>".encode())
    js_file = make_artifact(run, title=f"{XSS}.js", data=f"document.write('{XSS}')".encode())
    client.force_login(reviewer)

    pages = {
        "changelist": client.get(CHANGELIST),
        "search": client.get(CHANGELIST, {"q": XSS}),
        "change (html)": client.get(_change(html_file)),
        "change (js)": client.get(_change(js_file)),
        "reject form": client.get(f"{CHANGELIST}{html_file.pk}/transition/reject/"),
        "bulk reject": client.post(
            CHANGELIST,
            {"action": "reject_selected", "_selected_action": [html_file.pk, js_file.pk]},
        ),
        "run": client.get(f"/admin/sandboxes/sandboxrun/{run.pk}/change/"),
    }
    for name, response in pages.items():
        assert response.status_code == 200, name
        html = response.content.decode()
        assert XSS not in html, name
        assert "alert(1)" in html, name  # it is shown, escaped, not dropped
    for name in ("changelist", "change (html)", "bulk reject", "reject form"):
        assert ESCAPED_XSS in pages[name].content.decode(), name

    download = client.get(f"{CHANGELIST}{html_file.pk}/download/")
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Disposition"].startswith("attachment")
    assert download["X-Content-Type-Options"] == "nosniff"


# --- the run review page ---------------------------------------------------------------------

RUNS = "/admin/sandboxes/sandboxrun/"
QUEUE = "/admin/artifacts/reviewqueuerun/"


def _page(run: SandboxRun) -> str:
    return f"{RUNS}{run.pk}/change/"


def _decide(run: SandboxRun) -> str:
    return f"{RUNS}{run.pk}/review/"


def _with_commands(run: SandboxRun, count: int) -> None:
    from django.db import transaction

    from sandboxes.models import Command
    from workspaces import events

    for n in range(count):
        with transaction.atomic():
            command = Command.objects.create(
                run=run, workspace_id=run.workspace_id, kind="exec", command=f"echo {n}",
                cwd="/home/user", actor="user:olivia", status="exited", exit_code=n % 2,
                duration_ms=1200, stdout_tail="line\n" * 50 + f"done {n}\n",
            )  # fmt: skip
            events.record(actor=Actor.system("test"), type="command.started", subject=command,
                          data={"command": command.command})  # fmt: skip


@pytest.mark.django_db
def test_the_run_page_is_the_review_page(client: Any, reviewer: Any, workspace: Any) -> None:
    key, _ = make_api_key(workspace=workspace, role="member", name="agent-7")
    run = make_run(
        workspace=workspace, status="running", prompt="Summarise Q3\nin two pages",
        command="python make.py", thread_id="thread-q3", metadata={"ticket": "OPS-7"},
        api_key=key,
    )  # fmt: skip
    _with_commands(run, 2)
    make_artifact(run, title="report.md", data=b"# Q3\n\n**grew**\n\n<script>x()</script>")
    make_artifact(run, title="chart.png", data=PNG)
    client.force_login(reviewer)

    page = client.get(_page(run)).content.decode()

    assert "Review run" in page and "Summarise Q3" in page and "python make.py" in page
    assert "thread-q3" in page and "OPS-7" in page
    assert f"API key “agent-7” ({key.prefix}…) of olivia" in page
    assert "$ echo 1" in page and "exit 1 · 1.2 s" in page and "done 1" in page
    assert "<strong>grew</strong>" in page  # Markdown rendered …
    assert "&lt;script&gt;x()&lt;/script&gt;" in page  # … beside its escaped source
    assert "<script>x()" not in page
    assert f'src="{CHANGELIST}' in page and "/image/" in page  # the PNG, for reviewers
    assert 'name="_save"' not in page and "Save" not in page
    assert "ends after 1 h, or when idle for 15 min" in page


@pytest.mark.django_db
def test_the_timeline_shows_the_runs_life_from_the_trail(
    client: Any, reviewer: Any, workspace: Any, fake_backend: Any
) -> None:
    # Moved from tests/sandboxes/test_admin.py: the run's page is now the review page, whose
    # timeline names the transitions for a reviewer instead of as from → to.
    from tests.sandboxes.fake_backend import start_run

    run = start_run(workspace=workspace)
    client.force_login(reviewer)
    client.post(RUNS, {"action": "cancel_runs", "_selected_action": [run.pk]})

    response = client.get(_page(run))
    rows = [(r.title, r.actor) for r in response.context["timeline"]]
    assert ("Sandbox booted", "system:start_sandbox_run") in rows
    assert ("Run canceled", "user:adam") in rows


@pytest.mark.django_db
def test_the_review_page_needs_the_same_queries_for_5_or_50_of_everything(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    client.force_login(reviewer)
    counts = []
    for total in (5, 50):
        while Artifact.objects.filter(run=run).count() < total:
            make_artifact(run, title=f"a{Artifact.objects.count()}.md", data=b"# hi\n")
        _with_commands(run, total - run.commands.count())
        client.get(_page(run))
        with CaptureQueriesContext(connection) as queries:
            assert client.get(_page(run)).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]


@pytest.mark.django_db
def test_decisions_on_the_review_page_go_through_the_service_one_result_each(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    first, second, third = (make_artifact(run, title=t) for t in ("one", "two", "three"))
    client.force_login(reviewer)

    approved = client.post(_decide(run), {"artifact": [first.pk], "decision": "approve"})
    assert approved.status_code == 302
    assert approved["Location"] == f"{_page(run)}?focus={second.pk}#artifact-{second.pk}"
    assert review_state(first) == "approved"

    no_comment = client.post(
        _decide(run), {"artifact": [second.pk], "decision": "reject"}, follow=True
    )
    assert "A reject needs a comment saying why." in messages_of(no_comment)
    assert review_state(second) == "pending"

    everything = client.post(
        _decide(run), {"all": "pending", "decision": "reject", "comment": "wrong data"}, follow=True
    )
    assert messages_of(everything) == ["“two” is rejected.", "“three” is rejected."]
    assert [review_state(a) for a in (first, second, third)] == ["approved", "rejected", "rejected"]
    assert {e.actor for e in transitions(first.pk, second.pk, third.pk)} == {"user:adam"}


@pytest.mark.django_db
def test_the_review_page_refuses_what_the_reviewer_may_not_decide(
    client: Any, owner: Any, run: SandboxRun, elsewhere: dict[str, SandboxRun]
) -> None:
    owner.is_staff = True
    owner.save(update_fields=["is_staff"])
    own = make_artifact(run)
    hidden = make_artifact(elsewhere["gamma"])
    client.force_login(owner)

    page = client.get(_page(run)).content.decode()
    assert "You started this run: someone else must review its artifacts." in page
    assert 'value="approve"' not in page
    response = client.post(_decide(run), {"artifact": [own.pk], "decision": "approve"}, follow=True)
    assert any("someone else must review" in m for m in messages_of(response))
    assert client.get(_page(elsewhere["gamma"])).status_code == 302
    assert client.post(_decide(elsewhere["gamma"]), {"all": "pending"}).status_code == 404
    assert (review_state(own), review_state(hidden)) == ("pending", "pending")


@pytest.mark.django_db
def test_approve_all_never_sweeps_a_high_risk_signal_along(
    client: Any, reviewer: Any, run: SandboxRun
) -> None:
    make_artifact(run, title="ok-1")
    make_artifact(run, title="ok-2")
    make_artifact(run, title="creds", signals=[{"code": "secret", "severity": "high",
                  "message": "AWS Access Key on line 1", "line": 1}], signal_codes="secret",
                  risk="high")  # fmt: skip
    client.force_login(reviewer)
    response = client.get(_page(run))
    assert [c.artifact.title for c in response.context["bulk_approvable"]] == ["ok-1", "ok-2"]
    assert "Approve the 2 without high-risk signals" in response.content.decode()


# --- the queue of runs -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_queue_lists_runs_with_pending_work_oldest_first_with_counts_and_signals(
    client: Any, reviewer: Any, workspace: Any, admin_user: Any
) -> None:
    older = make_run(workspace=workspace, status="succeeded", prompt="Older run\nmore")
    newer = make_run(workspace=workspace, status="running", prompt="Newer run")
    done = make_run(workspace=workspace, status="succeeded", prompt="All decided")
    mine = make_run(
        workspace=workspace, status="running", prompt="Adam's own", created_by=admin_user
    )
    _aged(make_artifact(older, signals=[{"code": "secret", "severity": "high", "message": "m"}],
                        signal_codes="secret", risk="high"), 50)  # fmt: skip
    _aged(make_artifact(older), 40)
    _aged(make_artifact(newer), 10)
    make_artifact(done, state="approved")
    _aged(make_artifact(mine), 60)
    client.force_login(reviewer)

    response = client.get(QUEUE)
    listed = [
        (r.prompt_start.split("\n")[0], r.pending_count) for r in response.context["cl"].result_list
    ]
    assert listed == [("Adam's own", 1), ("Older run", 2), ("Newer run", 1)]
    html = response.content.decode()
    assert "airlock-signal-secret" in html and f"{RUNS}{older.pk}/change/" in html

    mine_only = client.get(f"{QUEUE}?decide=mine").context["cl"].result_list
    assert [r.prompt_start.split("\n")[0] for r in mine_only] == ["Older run", "Newer run"]


@pytest.mark.django_db
def test_the_queue_needs_the_same_queries_for_5_or_50_runs(
    client: Any, reviewer: Any, workspace: Any
) -> None:
    client.force_login(reviewer)
    counts = []
    for total in (5, 50):
        while SandboxRun.objects.count() < total:
            make_artifact(make_run(workspace=workspace, status="running"))
        client.get(QUEUE)
        with CaptureQueriesContext(connection) as queries:
            assert len(client.get(QUEUE).context["cl"].result_list) == total
        counts.append(len(queries))
    assert counts[0] == counts[1]


@pytest.mark.django_db
def test_filters_name_only_the_workspaces_the_user_administers(
    client: Any, reviewer: Any, run: SandboxRun, elsewhere: dict[str, SandboxRun]
) -> None:
    client.force_login(reviewer)
    for url in (CHANGELIST, RUNS, QUEUE, "/admin/workspaces/apikey/"):
        html = client.get(url).content.decode()
        assert "Lab" in html, url
        assert "Beta" not in html and "Gamma" not in html, url


@pytest.mark.django_db
def test_run_lists_show_short_ids_prompts_dollars_and_durations(
    client: Any, reviewer: Any, workspace: Any
) -> None:
    from decimal import Decimal

    start = timezone.now()
    run = make_run(
        workspace=workspace, status="succeeded", prompt="Plot the data\nand more",
        created_at=start, finished_at=start + timedelta(minutes=3), cost_usd=Decimal("0.0042"),
    )  # fmt: skip
    client.force_login(reviewer)
    html = client.get(RUNS).content.decode()
    assert f"<code>{str(run.pk)[:8]}</code> Plot the data</a></th>" in html
    assert '<td class="field-duration">3 min</td>' in html
    assert '<td class="field-cost">$0.0042</td>' in html


# --- the review policy in the admin -----------------------------------------------------------


@pytest.mark.django_db
def test_the_policy_admin_saves_through_the_service(
    client: Any, reviewer: Any, workspace: Any
) -> None:
    from artifacts.models import ReviewPolicy
    from workspaces.models import Event

    client.force_login(reviewer)
    form = {
        "workspace": workspace.pk,
        "auto_approve": '[{"type": "image", "max_size": 1000}]',
        "required_approvals": "2",
        "expire_after_h": "48",
    }
    bad = client.post("/admin/artifacts/reviewpolicy/add/", {**form, "auto_approve": "[{}]"})
    assert bad.status_code == 200 and "at least one of" in bad.content.decode()

    client.post("/admin/artifacts/reviewpolicy/add/", form)

    saved = ReviewPolicy.objects.get(workspace=workspace)
    assert (saved.auto_approve, saved.required_approvals, saved.expire_after_h) == (
        [{"type": "image", "max_size": 1000}], 2, 48,
    )  # fmt: skip
    [event] = Event.objects.filter(type="review_policy.changed")
    assert event.actor == "user:adam"


@pytest.mark.django_db
def test_the_changelist_counts_only_up_to_its_bound(
    client: Any, reviewer: Any, run: SandboxRun, monkeypatch: Any
) -> None:
    from workspaces.admin import BoundedCountPaginator

    monkeypatch.setattr(BoundedCountPaginator, "COUNT_LIMIT", 2)
    for n in range(4):
        make_artifact(run, title=f"a{n}.txt")
    client.force_login(reviewer)
    with CaptureQueriesContext(connection) as queries:
        page = client.get(CHANGELIST).content.decode()
    assert "more than 2 artifacts" in page
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT 3" in sql for sql in counts), counts
