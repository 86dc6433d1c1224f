"""artifacts/storage.py: keys, streaming in constant memory, the size limit, and deleting a
workspace's files (on real local sandboxes and file storage)."""

from __future__ import annotations

import hashlib
import os
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.db import transaction

from artifacts import storage
from artifacts.models import Artifact
from config.exceptions import TooLarge
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import (
    capture_file,
    home_of,
    make_artifact,
    plant,
    stored_files,
)
from workspaces.access import Actor


def test_storage_keys_are_random_per_capture_and_never_just_the_sandbox_name(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    path = plant(local_sandboxes, sandbox_run, "évil name;$(rm) <b>.txt", b"x")
    first, second = capture_file(sandbox_run, path), capture_file(sandbox_run, path)

    pattern = rf"artifacts/{sandbox_run.workspace_id}/[0-9a-f]{{32}}/[\w.-]+"
    assert re.fullmatch(pattern, first.file.name)
    assert first.file.name != second.file.name
    assert "/" not in first.file.name.rsplit("/", 1)[1]
    for odd, title in (("???", "???"), ("...", "..."), (" ", "file")):
        stored = capture_file(sandbox_run, plant(local_sandboxes, sandbox_run, odd, b"x"))
        assert stored.file.name.endswith("/file")
        assert stored.title == title


def test_a_200_mb_capture_streams_in_small_constant_memory(
    local_sandboxes: Any, sandbox_run: SandboxRun, settings: Any
) -> None:
    size = 200 * 1024 * 1024
    settings.ARTIFACT_MAX_BYTES = size
    big = home_of(local_sandboxes, sandbox_run) / "big.bin"
    with big.open("wb") as file:
        file.write(os.urandom(1024 * 1024))
        file.truncate(size - 1024 * 1024)  # sparse middle: quick to make, still read in full
        file.seek(0, os.SEEK_END)
        file.write(os.urandom(1024 * 1024))
    expected = hashlib.sha256()
    with big.open("rb") as file:
        while chunk := file.read(4 * 1024 * 1024):
            expected.update(chunk)

    tracemalloc.start()
    try:
        artifact = capture_file(sandbox_run, "/home/user/big.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert artifact.size == size
    assert artifact.sha256 == expected.hexdigest()
    # Bounded by the 1 MiB chunks in flight (read, buffered, queued for the hash thread),
    # whatever the file's size: 16 MiB is under 8 % of this one.
    assert peak < 16 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte file"
    assert default_storage.size(artifact.file.name) == size


def test_past_the_size_limit_nothing_is_stored(
    local_sandboxes: Any, sandbox_run: SandboxRun, settings: Any, media: Path
) -> None:
    settings.ARTIFACT_MAX_BYTES = 200_000
    at_limit = plant(local_sandboxes, sandbox_run, "fits.bin", b"a" * 200_000)
    over = plant(local_sandboxes, sandbox_run, "too-big.bin", b"a" * 200_001)

    assert capture_file(sandbox_run, at_limit).size == 200_000
    with pytest.raises(TooLarge) as error:
        capture_file(sandbox_run, over)

    assert error.value.status_code == 413
    assert Artifact.objects.count() == 1
    assert [p.name for p in stored_files(media)] == ["fits.bin"]


def test_deleting_a_workspace_can_take_its_stored_files_along(
    sandbox_run: SandboxRun, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    make_artifact(sandbox_run)
    with django_capture_on_commit_callbacks(execute=True):
        transaction.on_commit(
            storage.workspace_files_delete(sandbox_run.workspace, Actor.system("test"))
        )
    assert stored_files(media) == []
