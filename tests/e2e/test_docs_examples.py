"""Every shell example of README.md and docs/api.md, run by bash and curl against a live server
(uvicorn serving config.asgi:application) and a real Celery worker booting real local
sandboxes, with what `make run` makes (bootstrap_demo: the demo user, the reviewer, the
workspace and its key). The values a reader puts in — the key, the workspace id, passwords,
a webhook receiver — are substituted; everything else runs as written. A curl that gets an
error status fails the example (curl --fail-with-body under `set -e`); tests/test_readme.py
names the few examples that cannot run here, with why."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from artifacts.models import Artifact, ReviewPolicy
from sandboxes.models import SandboxRun
from tests.test_readme import Example, runnable
from workspaces import stream
from workspaces.models import Membership, WebhookEndpoint, Workspace

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def _stream_connections_released(asgi_server: Any) -> Any:
    """The event stream's read threads keep their database connections between requests (by
    design): closed before the test database goes."""
    yield
    stream.release_connections()


# curl as the examples call it, made strict: an HTTP error status is a failure; a stream that
# never ends by itself (the trail's event stream) is read for 3 s.
PRELUDE = r"""
set -euo pipefail
curl() {
  local limit=120 rc=0 arg
  for arg in "$@"; do
    if [[ $arg == */events/stream/* ]]; then limit=3; fi
  done
  command curl --fail-with-body --show-error --max-time "$limit" "$@" || rc=$?
  if (( rc == 28 && limit == 3 )); then rc=0; fi
  echo
  return "$rc"
}
PS4='+ ${BASH_SOURCE[0]##*/}:${LINENO}: '
set -x
"""


def _script(examples: list[Example], substitutions: dict[str, str]) -> str:
    text = "\n".join(f"# --- {e.document}:{e.line}\n{e.text}" for e in examples)
    for placeholder, value in substitutions.items():
        assert placeholder in text, f"the examples no longer say {placeholder!r}"
        text = text.replace(placeholder, value)
    return PRELUDE + text


def _run(script: str, cwd: Path, name: str) -> str:
    path = cwd / name
    path.write_text(script)
    done = subprocess.run(
        ["bash", str(path)],
        cwd=cwd,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    trace = done.stderr.splitlines()
    assert done.returncode == 0, (
        f"{name} failed (exit {done.returncode}); the script is {path}\n"
        + "\n".join(trace[-40:])
        + "\n--- stdout (end) ---\n"
        + done.stdout[-3000:]
    )
    return done.stdout


@pytest.mark.usefixtures("_stream_connections_released")
def test_every_shell_example_runs_against_a_live_server(
    asgi_server: Any,
    local_sandboxes: Any,
    start_celery: Any,
    receivers: Any,
    settings: Any,
    tmp_path: Path,
) -> None:
    settings.VAR_DIR = tmp_path
    settings.WEBHOOK_ALLOW_PRIVATE = settings.WEBHOOK_ALLOW_HTTP = True
    call_command("bootstrap_demo", stdout=open(os.devnull, "w"))  # noqa: SIM115
    demo = json.loads((tmp_path / "demo_credentials.json").read_text())
    start_celery("worker", WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_ALLOW_HTTP="true")
    receiver = receivers()
    work = tmp_path / "shell"
    work.mkdir()
    base = asgi_server.url

    readme = _run(
        _script(
            runnable("README.md"),
            {
                "http://127.0.0.1:8000": base,
                "<workspace>": demo["workspace_id"],
                "<api key>": demo["api_key"],
            },
        ),
        work,
        "readme.sh",
    )
    api = _run(
        _script(
            runnable("docs/api.md"),
            {
                "http://127.0.0.1:8000": base,
                "KEY=alk_…": f"KEY={demo['api_key']}",
                "WS=…": f"WS={demo['workspace_id']}",
                '{"username": "demo", "password": "…"}': json.dumps(
                    {"username": "demo", "password": demo["password"]}
                ),
                '{"username": "reviewer", "password": "…"}': json.dumps(
                    {"username": "reviewer", "password": demo["reviewer_password"]}
                ),
                "https://agents.example.com/airlock": receiver.url,
            },
        ),
        work,
        "api.sh",
    )

    # The README's run printed 42.
    quick = SandboxRun.objects.get(thread_id="demo")
    assert (quick.status, quick.exit_code) == ("succeeded", 0)
    assert '"stdout":"42\\n"' in readme.replace(" ", "")

    # docs/api.md: the job ran once (the key's retry is the same run) and read its file.
    [job] = SandboxRun.objects.filter(thread_id="thread-17")
    assert (job.status, job.exit_code) == ("succeeded", 0), job.error
    out = Artifact.objects.get(run=job, sandbox_path="/home/user/artifacts/out.txt")
    with out.file.open("rb") as f:
        assert f.read() == b"x,y\n1,2\n\n"
    # The interactive run's report, made in the sandbox, captured and rejected by the reviewer.
    report = Artifact.objects.get(run__thread_id="t-1", sandbox_path="/home/user/report.md")
    assert report.review_state == "rejected"
    assert report.reviewed_by is not None and report.reviewed_by.username == "reviewer"
    with report.file.open("rb") as f:
        assert f.read() == b"# Report\nAll good.\n"
    assert (work / "report.md").read_bytes() == b"# Report\nAll good.\n"  # its download
    assert SandboxRun.objects.get(thread_id="t-1").status == "succeeded"
    assert SandboxRun.objects.get(thread_id="t-2").status == "canceled"
    waited = SandboxRun.objects.get(thread_id="t-wait")  # paused, resumed by an exec, canceled
    assert (waited.status, waited.on_idle) == ("canceled", "pause")
    assert waited.paused_for.total_seconds() > 0
    # The streams said what they should.
    assert "event: exit" in api and '"exit_code": 0' in api
    assert "retry: 1000" in api
    assert "step 1" in api
    # What the people calls changed.
    research = Workspace.objects.get(name="Research")
    assert research.owner.username == "demo"
    assert not Membership.objects.filter(workspace=research, user__username="reviewer").exists()
    assert not WebhookEndpoint.objects.filter(workspace_id=demo["workspace_id"]).exists()
    assert ReviewPolicy.objects.get(workspace_id=demo["workspace_id"]).expire_after_h == 24
    assert not Membership.objects.get(
        workspace_id=demo["workspace_id"], user__username="demo"
    ).notify_reviews
    assert receiver.wait_for(1)  # the webhook.test delivery reached the receiver
