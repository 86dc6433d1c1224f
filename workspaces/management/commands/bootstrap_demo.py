"""What `make run` uses: a demo superuser, a demo workspace and an API key, idempotently.

The generated password and key are kept in var/demo_credentials.json (mode 600) so every
`make run` prints the same working credentials; nothing else stores a secret in clear."""

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

        raw_key = saved.get("api_key", "")
        key = selectors.api_key_find(raw_key=raw_key) if raw_key else None
        if key is None or key.revoked_at is not None or key.workspace_id != workspace.pk:
            _, raw_key = services.api_key_create(
                workspace=workspace, name="demo", role="admin", actor=Actor.for_user(user)
            )
        return {
            "username": DEMO_USERNAME,
            "password": password,
            "workspace_id": str(workspace.pk),
            "api_key": raw_key,
        }

    def _print(self, c: dict[str, str], base_url: str) -> None:
        api = f"{base_url}/api/v1"
        demo_run = json.dumps(
            {"thread_id": "demo", "prompt": "print the answer", "command": 'python3 -c "print(42)"'}
        )
        self.stdout.write(
            f"""
Airlock is running.

  Admin:        {base_url}/admin/
  Username:     {c["username"]}
  Password:     {c["password"]}
  API docs:     {api}/docs/
  Workspace:    {c["workspace_id"]}
  API key:      {c["api_key"]}

Start a sandbox run that prints 42:

  curl -s -X POST {api}/workspaces/{c["workspace_id"]}/runs/ \\
    -H 'Authorization: Bearer {c["api_key"]}' -H 'Content-Type: application/json' \\
    -d '{demo_run}'

List your workspaces:

  curl -s {api}/workspaces/ -H 'Authorization: Bearer {c["api_key"]}'
"""
        )
