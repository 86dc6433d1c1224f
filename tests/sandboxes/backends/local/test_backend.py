"""The local backend's lifecycle (sandboxes/backends/local/backend.py): what create makes on
the host, and that kill, the reaper and reconcile leave nothing of it, whoever made it and
whatever happened to the worker that did."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery.signals import worker_ready

from sandboxes.backends import app_tags
from sandboxes.backends.base import NetworkPolicy, SandboxNotFound, UnsupportedOption
from sandboxes.backends.local import LocalBackend
from sandboxes.reconcile import sandboxes_reconcile
from tests.sandboxes.backends.fixtures_local import TEST_LIMITS, host_tables
from tests.sandboxes.backends.local.helpers import (
    PROJECT_DIR,
    processes_with,
    run,
    wait_until,
)

pytestmark = [pytest.mark.bwrap, pytest.mark.usefixtures("as_root")]


def test_a_sandbox_holds_cgroups_a_disk_and_processes_until_it_is_killed(
    local_backend: LocalBackend,
) -> None:
    before = host_tables(local_backend.root)
    info = local_backend.create(template="base", metadata={}, envs={}, timeout_s=60)
    sandbox_id = info.sandbox_id
    run(local_backend, sandbox_id, "sleep 71.9 & setsid sleep 72.3 & true")
    during = host_tables(local_backend.root)

    assert local_backend.kill(sandbox_id) is True

    assert len(during.cgroups - before.cgroups) >= 4  # memory, pids, cpu, track (+ commands)
    assert {Path(m).name for m in during.mounts - before.mounts} == {"disk", "home"}
    assert len(during.loops - before.loops) == 1
    assert len(during.processes - before.processes) >= 4
    assert wait_until(lambda: host_tables(local_backend.root) == before)
    assert processes_with("sleep 71.9") == processes_with("sleep 72.3") == []
    assert not (local_backend.root / sandbox_id).exists()


def test_create_says_what_it_made(local_backend: LocalBackend) -> None:
    info = local_backend.create(template="base", metadata={"k": "v"}, envs={}, timeout_s=60)

    assert info.cpu_count == 1
    assert info.memory_mb == TEST_LIMITS["memory_mb"]
    assert info.metadata == {"k": "v"}
    result = run(local_backend, info.sandbox_id, "df --output=size -B1M /home/user | tail -n 1")
    assert 100 <= int(result.stdout) <= TEST_LIMITS["disk_mb"]


def test_a_sandbox_past_its_timeout_is_gone(local_backend: LocalBackend) -> None:
    sandbox_id = local_backend.create(
        template="base", metadata={"short": "lived"}, envs={}, timeout_s=1
    ).sandbox_id
    time.sleep(1.1)

    assert local_backend.list_sandboxes({"short": "lived"}) == []
    with pytest.raises(SandboxNotFound):
        local_backend.get_info(sandbox_id)
    assert not (local_backend.root / sandbox_id).exists()
    assert local_backend.kill(sandbox_id) is False


def test_unknown_and_malformed_ids_are_not_found(local_backend: LocalBackend) -> None:
    for sandbox_id in ("0" * 20, "../../etc", ""):
        with pytest.raises(SandboxNotFound):
            local_backend.get_info(sandbox_id)
        assert local_backend.kill(sandbox_id) is False


def test_network_access_is_refused_up_front(local_backend: LocalBackend) -> None:
    with pytest.raises(UnsupportedOption, match="local backend"):
        local_backend.check_network(NetworkPolicy(internet=True))
    with pytest.raises(UnsupportedOption, match="local backend"):
        local_backend.create(
            template="base", metadata={}, envs={}, timeout_s=60,
            network=NetworkPolicy(allow_out=("10.0.0.0/8",)),
        )  # fmt: skip
    assert local_backend.list_sandboxes({}) == []


def test_check_reports_the_bwrap_version_and_the_limits(local_backend: LocalBackend) -> None:
    summary = local_backend.check()

    assert summary.startswith("local: bubblewrap ")
    assert summary.endswith("all limits enforced")
    assert local_backend.list_sandboxes({"purpose": "check"}) == []


# -- a worker that dies ------------------------------------------------------------------------


@pytest.mark.django_db
def test_reconcile_ends_the_sandboxes_of_a_sigkilled_worker(
    local_sandboxes: LocalBackend,
) -> None:
    # The worker made a sandbox for a run nobody knows (its job died before saving the id),
    # left a server in it, and was killed in the middle of a command.
    before = host_tables(local_sandboxes.root)
    tags = {**app_tags(), "run_id": str(uuid.uuid4()), "workspace_id": str(uuid.uuid4())}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, json; from pathlib import Path; "
            "from sandboxes.backends.local import LocalBackend; "
            f"backend = LocalBackend(root=Path(sys.argv[1]), **{TEST_LIMITS!r}); "
            "sid = backend.create(template='t', metadata=json.loads(sys.argv[2]), envs={}, "
            "timeout_s=600).sandbox_id; "
            "backend.run(sid, 'python3 -m http.server 8321 >/dev/null 2>&1 &', timeout_s=10); "
            "backend.run(sid, 'sleep 64.2', timeout_s=60)",
            str(local_sandboxes.root),
            __import__("json").dumps(tags),
        ],
        cwd=PROJECT_DIR,
    )
    try:
        assert wait_until(lambda: bool(processes_with("sleep 64.2", exactly=True)), timeout_s=20)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    [left] = local_sandboxes.list_sandboxes(tags)  # the sandbox outlived its worker
    assert processes_with("python3 -m http.server 8321") != []

    report = sandboxes_reconcile()

    assert report.killed == 1
    assert local_sandboxes.list_sandboxes(tags) == []
    assert wait_until(lambda: host_tables(local_sandboxes.root) == before)
    assert processes_with("python3 -m http.server 8321") == []
    assert not (local_sandboxes.root / left.sandbox_id).exists()


def test_a_create_cut_short_by_a_dead_worker_is_cleaned_up(local_backend: LocalBackend) -> None:
    # A bwrap that never comes up: create has made the cgroups and the disk, and waits.
    hanging = local_backend.root / "bwrap-hangs"
    hanging.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "bubblewrap 0.8.0"; exit 0; }\nexec sleep 36.9\n'
    )
    hanging.chmod(0o755)
    before = host_tables(local_backend.root)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from sandboxes.backends.local import LocalBackend; "
            f"LocalBackend(root=Path(sys.argv[1]), bwrap_path=sys.argv[2], **{TEST_LIMITS!r})"
            ".create(template='t', metadata={}, envs={}, timeout_s=600)",
            str(local_backend.root),
            str(hanging),
        ],
        cwd=PROJECT_DIR,
    )
    try:
        assert wait_until(lambda: bool(processes_with("sleep 36.9")), timeout_s=20)
        half_made = host_tables(local_backend.root)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        for pid in processes_with("sleep 36.9"):
            os.kill(pid, signal.SIGKILL)

    # No record, and its creator is dead: the next look at the root removes it at once.
    assert local_backend.list_sandboxes({}) == []

    assert len(half_made.cgroups - before.cgroups) >= 4
    assert len(half_made.mounts - before.mounts) == 2
    assert host_tables(local_backend.root) == before
    assert [p.name for p in local_backend.root.iterdir() if not p.name.startswith(".")] == [
        "bwrap-hangs"
    ]


# -- what a worker says at startup -------------------------------------------------------------


def test_a_worker_at_startup_logs_each_limit_and_what_replaces_a_missing_one(
    local_backend: LocalBackend, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.SANDBOX_BACKEND = "local"
    settings.SANDBOX_LOCAL_ROOT = local_backend.root
    settings.SANDBOX_LOCAL_CGROUP = "cgroup.procs/airlock"  # cgroups cannot be made there

    with caplog.at_level(logging.INFO, logger="sandboxes.backends.local"):
        worker_ready.send(sender=None)

    lines = {(r.levelname, r.getMessage().split(":")[1].strip()) for r in caplog.records}
    assert ("WARNING", "memory") in lines
    assert ("WARNING", "processes") in lines
    assert ("INFO", "disk") in lines
    assert ("INFO", "seccomp") in lines
    assert any("RLIMIT_AS" in record.getMessage() for record in caplog.records)
