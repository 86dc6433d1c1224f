"""The review console in a real browser (Debian chromium through Playwright) against a live
server: log in, work the pending queue, approve with the transition button, reject two with
the bulk action and a comment, and see states and history change. A hostile title must never
run as a script on the way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from artifacts.models import Artifact
from tests.artifacts.conftest import XSS, make_artifact
from tests.conftest import require_service
from tests.factories import UserFactory, make_run, make_workspace

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a long browser password"
SCREENSHOT = Path(django_settings.BASE_DIR) / "var" / "screenshots" / "review-queue.png"


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A page in Debian's chromium. Used as a block that ends before the test touches the
    database again: Playwright's sync API runs an event loop on this thread, and ORM calls
    made inside it would get a connection of their own that nothing closes."""
    require_service(os.access(CHROMIUM, os.X_OK), f"chromium is not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def queue(settings: Any, tmp_path: Path) -> dict[str, Artifact]:
    """A reviewer (staff, admin of the workspace) and four pending artifacts of someone
    else's run, oldest first: alpha, beta, gamma, then one with a hostile title."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    owner = UserFactory(username="olivia")
    reviewer = get_user_model().objects.create_user(
        "rita", "rita@example.com", PASSWORD, is_staff=True
    )
    workspace = make_workspace(owner=owner, members={reviewer: "admin"})
    run = make_run(workspace=workspace, status="running", prompt="Write the Q3 summary")
    artifacts = {}
    for minutes, title in ((40, "alpha.txt"), (30, "beta.txt"), (20, "gamma.txt"), (10, XSS)):
        artifact = make_artifact(run, title=title, data=f"{title}: <b>content</b>\n".encode())
        Artifact.objects.filter(pk=artifact.pk).update(
            created_at=timezone.now() - timedelta(minutes=minutes)
        )
        artifacts[title] = artifact
    return artifacts


def _row(page: Any, title: str) -> Any:
    return page.locator("#result_list tbody tr").filter(has_text=title)


@pytest.mark.django_db(transaction=True)
def test_a_reviewer_works_the_queue_in_a_browser(
    live_server: Any, queue: dict[str, Artifact]
) -> None:
    hostile = queue[XSS].pk
    dialogs: list[str] = []
    with chromium_page() as page:
        page.on("dialog", lambda dialog: _record(dialog, dialogs))
        _work_the_queue(page, live_server.url, hostile)

    assert dialogs == []  # an alert() would mean a title ran as a script
    assert [a.review_state for a in Artifact.objects.order_by("created_at")] == [
        "approved",
        "rejected",
        "rejected",
        "pending",
    ]


def _record(dialog: Any, dialogs: list[str]) -> None:
    dialogs.append(dialog.message)
    dialog.dismiss()


def _work_the_queue(page: Any, url: str, hostile: Any) -> None:
    """Everything the reviewer does, through the browser only."""
    page.goto(f"{url}/admin/login/?next=/admin/")
    page.fill("#id_username", "rita")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    assert page.locator("#pending-reviews").inner_text() == "4"

    # The queue of runs (the index's "Pending reviews") links the per-artifact list: pending
    # only, oldest first; the hostile title is text.
    page.click("text=Pending reviews")
    page.wait_for_selector("#result_list")
    assert page.locator("#content h1").inner_text() == "Review queue"
    page.click("#queue-help >> text=pending artifacts")
    page.wait_for_selector("#result_list")
    assert page.locator("#content h1").inner_text() == "Pending artifacts"
    titles = page.locator("#result_list tbody th a").all_inner_texts()
    assert titles == ["alpha.txt", "beta.txt", "gamma.txt", XSS]
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Approve alpha with the transition button on its page.
    _row(page, "alpha.txt").locator("th a").click()
    page.wait_for_selector(".field-run_prompt")
    assert "Write the Q3 summary" in page.locator(".field-run_prompt").inner_text()
    page.screenshot(path=str(SCREENSHOT.with_name("review-artifact.png")), full_page=True)
    page.locator('button[name="_fsm_transition_to"][value="approve"]').first.click()
    page.wait_for_selector("ul.messagelist")
    assert "“alpha.txt” is approved." in page.locator("ul.messagelist").inner_text()
    assert page.locator('button[name="_fsm_transition_to"]').count() == 0
    history = page.locator(".field-history").inner_text()
    assert "pending → approved" in history
    assert "by user:rita" in history

    # Reject beta and gamma together, with a comment, from the queue.
    page.goto(f"{url}/admin/artifacts/artifact/")
    assert page.locator("#result_list tbody th a").all_inner_texts() == [
        "beta.txt",
        "gamma.txt",
        XSS,
    ]
    for title in ("beta.txt", "gamma.txt"):
        _row(page, title).locator("input.action-select").check()
    page.select_option("select[name=action]", "reject_selected")
    page.click("button[name=index]")
    page.wait_for_selector("#reject-list")
    assert page.locator("#reject-list li").count() == 2
    page.fill("textarea[name=comment]", "Contains customer e-mail addresses.")
    page.click("input[type=submit][value=Reject]")
    page.wait_for_selector("ul.messagelist")
    assert "2 rejected, 0 skipped (already decided)." in page.locator("ul.messagelist").inner_text()
    assert page.locator("#result_list tbody th a").all_inner_texts() == [XSS]

    # Every state, as the console shows it.
    page.goto(f"{url}/admin/artifacts/artifact/?review_state=all")
    states = {
        title: _row(page, title).locator("td.field-review_state").inner_text()
        for title in ("alpha.txt", "beta.txt", "gamma.txt")
    }
    assert states == {"alpha.txt": "Approved", "beta.txt": "Rejected", "gamma.txt": "Rejected"}
    _row(page, "gamma.txt").locator("th a").click()
    page.wait_for_selector(".field-review_comment")
    assert (
        "Contains customer e-mail addresses." in page.locator(".field-review_comment").inner_text()
    )
    assert "pending → rejected" in page.locator(".field-history").inner_text()

    # The hostile one, opened: shown as text, never run.
    page.goto(f"{url}/admin/artifacts/artifact/{hostile}/change/")
    page.wait_for_selector(".field-title")
    assert page.locator(".field-title .readonly").inner_text() == XSS
