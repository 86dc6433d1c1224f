"""The run review page in a real browser (Debian chromium through Playwright) against a live
server: a reviewer opens the queue, opens a run that a real local sandbox worked in (commands,
an upload, five captures with real signals), and decides with the keyboard only — approves
two artifacts, skips the one with a secret, rejects one with a comment. Screenshots of the
queue and the page go to var/screenshots/."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from artifacts.models import Artifact
from sandboxes import execution
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import capture_file, plant
from tests.e2e.test_review_console_browser import PASSWORD, SCREENSHOT, chromium_page
from tests.factories import make_workspace
from workspaces.access import Actor

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _chart_png(width: int = 240, height: int = 120) -> bytes:
    """A small gradient PNG, so the inline image is visible in the screenshot."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + b"".join(bytes((255 * x // width, 255 * y // height, 160)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


FILES = {
    "artifacts/report.md": b"# Q3 summary\n\nRevenue **grew** 12%.\n\n- one\n- two\n\n"
    b"![tracker](https://example.com/pixel.png) <script>alert(1)</script>\n",
    "artifacts/creds.env": f"AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n"
    f"AWS_SECRET_ACCESS_KEY={SECRET}\n".encode(),
    "artifacts/page.html": b'<html><body onload="steal()"><h1>Hi</h1></body></html>\n',
    "artifacts/chart.png": _chart_png(),
    "artifacts/notes.txt": b"All tests passed.\n",
}


@pytest.fixture
def worked_run(settings: Any, local_sandboxes: Any, tmp_path: Path) -> SandboxRun:
    """A run of the owner's in a real sandbox: two commands, an upload and five captures."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    owner = get_user_model().objects.create_user("olivia", "olivia@example.com", "pw")
    reviewer = get_user_model().objects.create_user(
        "rita", "rita@example.com", PASSWORD, is_staff=True
    )
    workspace = make_workspace(owner=owner, members={reviewer: "admin"})
    info = local_sandboxes.create(template="", metadata={"app": "airlock"}, envs={}, timeout_s=600)
    from tests.factories import make_run

    run = make_run(
        workspace=workspace,
        status="running",
        sandbox_id=info.sandbox_id,
        prompt="Write the Q3 summary\nwith a chart and the raw numbers",
        thread_id="thread-q3",
        metadata={"ticket": "OPS-7"},
    )
    actor = Actor(user=owner)
    execution.run_upload_file(
        run=run, actor=actor, path="/home/user/data.csv", stream=io.BytesIO(b"q,rev\n3,12\n")
    )
    execution.run_exec(run=run, actor=actor, command="python3 -c 'print(6 * 7)'")
    execution.run_exec(run=run, actor=actor, command="ls /nope")
    for relative, data in FILES.items():
        plant(local_sandboxes, run, relative, data)
        capture_file(run, f"/home/user/{relative}")
    return run


@pytest.mark.django_db(transaction=True)
def test_a_reviewer_decides_a_run_with_the_keyboard(
    live_server: Any, worked_run: SandboxRun
) -> None:
    by_title = {a.title: a for a in Artifact.objects.filter(run=worked_run)}
    assert [s["code"] for s in by_title["creds.env"].signals] == ["secret", "secret"]
    dialogs: list[str] = []
    with chromium_page() as page:

        def on_dialog(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        seen = _review(page, live_server.url, {t: str(a.pk) for t, a in by_title.items()})

    assert dialogs == []  # nothing an agent wrote ran as a script
    assert SECRET not in seen["page"]
    states = {a.title: a.review_state for a in Artifact.objects.filter(run=worked_run)}
    assert states == {
        "report.md": "approved",
        "creds.env": "pending",
        "page.html": "rejected",
        "chart.png": "approved",
        "notes.txt": "pending",
    }
    rejected = Artifact.objects.get(run=worked_run, title="page.html")
    assert rejected.review_comment == "Runs a script on load."
    assert rejected.reviewed_by is not None and rejected.reviewed_by.username == "rita"


def _current(page: Any) -> str:
    return str(page.locator(".airlock-card.is-current .airlock-card-title").inner_text())


def _review(page: Any, url: str, ids: dict[str, str]) -> dict[str, str]:
    """Everything the reviewer does, through the browser only; returns what the page showed."""
    page.goto(f"{url}/admin/login/?next=/admin/")
    page.fill("#id_username", "rita")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    assert page.locator("#pending-for-me").inner_text() == "5"

    # The queue: one run, five pending, its signals; the screenshot a reviewer starts from.
    page.click("text=Pending reviews")
    page.wait_for_selector("#result_list")
    assert page.locator("#content h1").inner_text() == "Review queue"
    row = page.locator("#result_list tbody tr")
    assert row.count() == 1
    assert "Write the Q3 summary" in row.inner_text()
    assert row.locator("td.field-pending").inner_text() == "5"
    assert "secret" in row.locator("td.field-signals").inner_text()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT.with_name("review-queue-runs.png")), full_page=True)

    # The run review page: the run, its timeline, every artifact with preview and signals.
    row.locator("td.field-run a").click()
    page.wait_for_selector(".airlock-card.is-current")
    assert "Write the Q3 summary" in page.locator("#run-prompt").inner_text()
    assert "olivia" in page.locator("#run-started-by").inner_text()
    timeline = page.locator(".airlock-timeline").inner_text()
    assert "print(6 * 7)" in timeline and "exit 0" in timeline and "42" in timeline
    assert "ls /nope" in timeline and "exit 2" in timeline
    assert "Uploaded /home/user/data.csv" in timeline
    assert "Captured creds.env" in timeline
    markdown = page.locator(f"#artifact-{ids['report.md']} .airlock-markdown")
    assert markdown.locator("strong").inner_text() == "grew"  # rendered …
    assert markdown.locator("img").count() == 0  # … without remote images or scripts
    assert page.locator(".airlock-preview img").count() == 1  # the PNG, inline
    creds = page.locator(f"#artifact-{ids['creds.env']}")
    assert "Secret Keyword on line 2" in creds.inner_text()
    shown = {"page": page.content()}
    page.screenshot(path=str(SCREENSHOT.with_name("run-review.png")), full_page=True)

    # Keyboard only. The page starts on the first artifact to decide.
    assert _current(page) == "report.md"
    page.keyboard.press("a")  # approve report.md
    page.wait_for_selector("ul.messagelist")
    assert "“report.md” is approved." in page.locator("ul.messagelist").inner_text()
    assert _current(page) == "creds.env"  # the next one waiting
    page.keyboard.press("j")  # leave the one with a secret for now
    assert _current(page) == "page.html"
    page.keyboard.press("r")
    page.keyboard.type("Runs a script on load.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("ul.messagelist")
    assert "“page.html” is rejected." in page.locator("ul.messagelist").inner_text()
    assert _current(page) == "chart.png"
    page.keyboard.press("k")
    page.keyboard.press("k")
    assert _current(page) == "creds.env"
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("a")  # approve chart.png
    page.wait_for_selector("ul.messagelist")
    assert "“chart.png” is approved." in page.locator("ul.messagelist").inner_text()
    page.screenshot(path=str(SCREENSHOT.with_name("run-review-decided.png")), full_page=True)
    return shown
