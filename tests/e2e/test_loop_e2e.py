"""The loop, end to end: an agent's key starts a job on a real local sandbox through a real
worker; a webhook receiver on loopback is told of each artifact (signed); a reviewer approves
one in the admin, in a real browser; the receiver is told of the decision (signed), the agent's
`wait_s` call returns it, and the reviewers were emailed once for the run."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model

from tests.e2e.conftest import wait_for
from tests.e2e.test_review_console_browser import PASSWORD, SCREENSHOT, chromium_page
from tests.factories import make_api_key, make_user, make_workspace
from workspaces import webhooks
from workspaces.access import Actor

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

JOB = "mkdir -p artifacts && echo 'the answer is 42' > artifacts/answer.txt && echo done"


def test_an_agent_hears_the_reviewers_decision(
    live_server: Any,
    local_sandboxes: Any,
    start_celery: Any,
    receivers: Any,
    settings: Any,
    tmp_path: Path,
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = settings.WEBHOOK_ALLOW_HTTP = True
    owner = make_user(username="olivia")
    reviewer = get_user_model().objects.create_user(
        "rita", "rita@example.com", PASSWORD, is_staff=True
    )
    workspace = make_workspace(owner=owner, members={reviewer: "admin"})
    _, agent_key = make_api_key(workspace=workspace, role="member")
    receiver = receivers()
    _, secret = webhooks.webhook_create(
        workspace=workspace,
        actor=Actor(user=owner),
        url=receiver.url,
        event_types=["artifact.created", "artifact.approved"],
    )
    mail_dir = tmp_path / "mail"
    worker = start_celery(
        "worker",
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_ALLOW_HTTP="true",
        EMAIL_URL=f"filemail://{mail_dir}",
        SITE_URL=live_server.url,
    )
    agent = httpx.Client(
        base_url=f"{live_server.url}/api/v1", headers={"Authorization": f"Bearer {agent_key}"}
    )

    # The agent starts a job; the receiver hears of its two artifacts (log and answer.txt).
    started = agent.post(
        f"/workspaces/{workspace.pk}/runs/",
        json={"thread_id": "loop", "prompt": "Find the answer", "command": JOB},
    )
    assert started.status_code == 201, started.text
    assert receiver.wait_for(2, 60), worker.log()
    created = [r.verified(secret) for r in receiver.requests]
    assert [c["type"] for c in created] == ["artifact.created", "artifact.created"]
    titles = {c["data"]["data"]["title"]: c["data"]["subject"]["id"] for c in created}
    answer_id = titles["answer.txt"]

    # The agent waits for the decision …
    waited: list[httpx.Response] = []
    waiter = threading.Thread(
        target=lambda: waited.append(agent.get(f"/artifacts/{answer_id}/?wait_s=60", timeout=90))
    )
    waiter.start()

    # … while the reviewer approves in the browser.
    with chromium_page() as page:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "rita")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.goto(f"{live_server.url}/admin/artifacts/artifact/{answer_id}/change/")
        page.locator('button[name="_fsm_transition_to"][value="approve"]').first.click()
        page.wait_for_selector("ul.messagelist")
        page.screenshot(path=str(SCREENSHOT.with_name("loop-approved.png")), full_page=True)

    waiter.join(90)
    assert waited[0].status_code == 200
    assert waited[0].json()["review_state"] == "approved"
    assert receiver.wait_for(3, 60), worker.log()
    decision = receiver.requests[2].verified(secret)
    assert decision["type"] == "artifact.approved"
    assert decision["data"]["subject"]["id"] == answer_id
    assert decision["data"]["actor"] == "user:rita"

    # The run's reviewers were told once, with a link to the run's page.
    run_id = started.json()["id"]
    wait_for(lambda: mail_dir.exists() and any(mail_dir.iterdir()), 30, what="the email")
    [email] = [p.read_text() for p in mail_dir.iterdir()]
    assert "To: rita@example.com" in email
    assert f"{live_server.url}/admin/sandboxes/sandboxrun/{run_id}/change/" in email
    # And the agent reads what its own job printed, from the run.
    job = agent.get(f"/runs/{run_id}/").json()["job"]
    agent.close()  # (a kept-alive connection would keep its server thread and database session)
    assert (job["exit_code"], job["stdout"]) == (0, "done\n")
