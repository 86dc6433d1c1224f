"""Artifact fixtures and helpers: files planted in a real local sandbox's home the way a
sandboxed program would leave them (the running run is the root conftest's `sandbox_run`),
captures and what storage holds, and artifacts made directly for the console and API tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils.text import get_valid_filename

from artifacts import capture, content
from artifacts.models import Artifact, ReviewState
from sandboxes.models import SandboxRun
from tests.factories import make_run
from workspaces.access import Actor

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99"
    b"=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)
XSS = "<script>alert(1)</script>"


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def run(workspace: Any) -> SandboxRun:
    """A running run of the owner's, with no sandbox behind it: for reading and reviewing."""
    return make_run(workspace=workspace, status="running", thread_id="thread-a")


def home_of(backend: Any, run: SandboxRun) -> Path:
    return Path(backend.root) / run.sandbox_id / "home"


def plant(backend: Any, run: SandboxRun, relative: str, data: bytes) -> str:
    """Leave a file in the sandbox home; returns its path inside the sandbox."""
    path = home_of(backend, run) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"/home/user/{relative}"


def make_artifact(
    run: SandboxRun,
    *,
    title: str = "notes.txt",
    data: bytes = b"hello\n",
    state: str = ReviewState.PENDING,
    reviewer: Any = None,
    type: str | None = None,
    **fields: Any,
) -> Artifact:
    """An artifact stored and written directly: for tests about reading and reviewing, where
    a capture from a sandbox would only be slower."""
    name = get_valid_filename(title)[-50:]
    key = default_storage.save(f"artifacts/{run.workspace_id}/test/{name}", ContentFile(data))
    content_type = content.guess_content_type(title, data[:8192])
    artifact = Artifact.objects.create(
        run=run,
        workspace_id=run.workspace_id,
        thread_id=run.thread_id,
        type=type or content.infer_type(title, content_type),
        title=title,
        file=key,
        content_type=content_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        sandbox_path=f"/home/user/artifacts/{title}",
        preview_text=content.preview(data) if content.is_text_type(content_type) else "",
        **fields,
    )
    if state != ReviewState.PENDING:
        change = artifact.approve if state == ReviewState.APPROVED else artifact.reject
        with transaction.atomic():
            change(
                reviewer=reviewer or run.workspace.owner,
                comment="test",
                by=Actor.system("test"),
            )
            artifact.save()
    return artifact


def capture_file(run: SandboxRun, path: str, **kwargs: Any) -> Artifact:
    """Capture a sandbox file the way the API does, as the run's creator."""
    return capture.artifact_capture(run=run, actor=Actor(user=run.created_by), path=path, **kwargs)


def stored_bytes(artifact: Artifact) -> bytes:
    with default_storage.open(artifact.file.name, "rb") as file:
        data: bytes = file.read()
    return data


def review_state(artifact: Artifact) -> str:
    """The artifact's review state as stored now (the copy in hand is refreshed)."""
    artifact.refresh_from_db()
    return artifact.review_state
