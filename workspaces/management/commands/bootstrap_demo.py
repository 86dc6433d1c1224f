"""What `make run` uses: a demo superuser, a reviewer, a demo workspace and an API key,
idempotently. The demo key acts for the demo user, so the demo user cannot review the runs it
starts (self-review): the reviewer — staff, admin of the demo workspace, nothing more — does.

The generated password and key are kept in var/demo_credentials.json (mode 600) so every
`make run` prints the same working credentials; what it prints is also written to
var/demo.txt (mode 600); nothing else stores a secret in clear."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from workspaces import selectors, services
from workspaces.access import Actor
from workspaces.models import Workspace

DEMO_USERNAME = "demo"
REVIEWER_USERNAME = "reviewer"
READY_TIMEOUT_S = 60
DEMO_WORKSPACE = "Demo workspace"


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (our own local URL)
                return
        except OSError:
            time.sleep(0.5)


class Command(BaseCommand):
    help = "Create (once) the demo superuser, workspace and API key, and print how to use them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument(
            "--when-ready",
            action="store_true",
            help="wait until the web server answers /healthz before printing (make run)",
        )

    def handle(self, *args: Any, base_url: str, when_ready: bool, **options: Any) -> None:
        if when_ready:
            _wait_for(f"{base_url}/healthz")
        path = Path(settings.VAR_DIR) / "demo_credentials.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        with transaction.atomic():
            credentials = self._ensure(saved)
        path.write_text(json.dumps(credentials, indent=2))
        path.chmod(0o600)
        self._print(credentials, base_url)

    def _ensure(self, saved: dict[str, str]) -> dict[str, str]:
        User = get_user_model()
        user = User.objects.filter(username=DEMO_USERNAME).first()
        password = saved.get("password")
        if user is None:
            password = password or secrets.token_urlsafe(12)
            user = User.objects.create_superuser(DEMO_USERNAME, "demo@example.com", password)
        elif not password or not user.check_password(password):
            password = secrets.token_urlsafe(12)
            user.set_password(password)
            user.save(update_fields=["password"])

        workspace = Workspace.objects.filter(owner=user, name=DEMO_WORKSPACE).first()
        if workspace is None:
            workspace = services.workspace_create(name=DEMO_WORKSPACE, owner=user)

        reviewer_password = self._ensure_reviewer(workspace, user, saved.get("reviewer_password"))

        raw_key = saved.get("api_key", "")
        key = selectors.api_key_find(raw_key=raw_key) if raw_key else None
        if key is None or key.revoked_at is not None or key.workspace_id != workspace.pk:
            _, raw_key = services.api_key_create(
                workspace=workspace, name="demo", role="admin", actor=Actor.for_user(user)
            )
        return {
            "username": DEMO_USERNAME,
            "password": password,
            "reviewer_username": REVIEWER_USERNAME,
            "reviewer_password": reviewer_password,
            "workspace_id": str(workspace.pk),
            "api_key": raw_key,
        }

    def _ensure_reviewer(self, workspace: Workspace, owner: Any, saved: str | None) -> str:
        """The reviewer: staff (to sign in to the console), admin of the demo workspace
        (to review there), not a superuser."""
        User = get_user_model()
        reviewer = User.objects.filter(username=REVIEWER_USERNAME).first()
        password = saved or secrets.token_urlsafe(12)
        if reviewer is None:
            reviewer = User.objects.create_user(
                REVIEWER_USERNAME, "reviewer@example.com", password, is_staff=True
            )
        elif not saved or not reviewer.check_password(saved) or not reviewer.is_staff:
            reviewer.set_password(password)
            reviewer.is_staff = True
            reviewer.save(update_fields=["password", "is_staff"])
        membership = selectors.membership_list(workspace=workspace).filter(user=reviewer).first()
        if membership is None:
            services.membership_add(
                workspace=workspace, user=reviewer, role="admin", actor=Actor.for_user(owner)
            )
        return password

    def _print(self, c: dict[str, str], base_url: str) -> None:
        api = f"{base_url}/api/v1"
        demo_file = Path(settings.VAR_DIR) / "demo.txt"
        key = f"-H 'Authorization: Bearer {c['api_key']}'"
        demo_run = json.dumps(
            {
                "thread_id": "demo",
                "prompt": "Write the answer to a file for review",
                "command": "mkdir -p artifacts && echo 42 > artifacts/answer.txt",
            }
        )
        banner = f"""
Airlock is running.

  Admin:        {base_url}/admin/
  Username:     {c["username"]}   (superuser; the demo API key acts for it)
  Password:     {c["password"]}
  Reviewer:     {c["reviewer_username"]}   (staff, admin of the demo workspace)
  Password:     {c["reviewer_password"]}
  API docs:     {api}/docs/
  Workspace:    {c["workspace_id"]}
  API key:      {c["api_key"]}

The loop, as an agent and a reviewer go through it:

1. The agent starts a run whose command writes a file:

  curl -s -X POST {api}/workspaces/{c["workspace_id"]}/runs/ {key} \\
    -H 'Content-Type: application/json' -d '{demo_run}'

2. Once it has succeeded, its artifacts wait for review (note the answer.txt id):

  curl -s {api}/runs/<run id>/artifacts/ {key}

3. The agent waits for the decision (up to 60 s per call; call again to keep waiting):

  curl -s '{api}/artifacts/<artifact id>/?wait_s=60' {key}

4. Sign in to {base_url}/admin/ as {c["reviewer_username"]}, open "Pending reviews", open the
   run, and approve answer.txt (press a). The call in step 3 returns "review_state":
   "approved", and the agent can read the file:

  curl -s {api}/artifacts/<artifact id>/content/ {key}

(This is also in {demo_file}.)
"""
        # Kept beside the credentials (same mode): `make run`'s output scrolls away.
        demo_file.write_text(banner.lstrip("\n"))
        demo_file.chmod(0o600)
        self.stdout.write(banner)
