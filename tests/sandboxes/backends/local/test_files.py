"""Confined file I/O (sandboxes/backends/local/files.py): links the sandbox plants never
lead the worker outside the sandbox's home."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from sandboxes.backends.base import BackendError, SandboxFileNotFound, SandboxNotFound
from sandboxes.backends.local import LocalBackend
from tests.sandboxes.backends.local.helpers import HOME, PROJECT_DIR, in_background, run

pytestmark = pytest.mark.bwrap


def test_read_file_does_not_follow_a_link_to_a_host_file(
    local_backend: LocalBackend, sandbox: str
) -> None:
    run(local_backend, sandbox, f"ln -s /etc/shadow out; ln -s {PROJECT_DIR}/pyproject.toml proj")

    for name in ("out", "proj"):
        with pytest.raises(BackendError) as caught:
            b"".join(local_backend.read_file(sandbox, f"{HOME}/{name}"))
        assert not isinstance(caught.value, SandboxNotFound)


def test_a_link_to_the_host_root_leads_nowhere(local_backend: LocalBackend, sandbox: str) -> None:
    escape = f"airlock-escape-{secrets.token_hex(6)}"
    run(local_backend, sandbox, "ln -s / root")

    with pytest.raises(BackendError):
        b"".join(local_backend.read_file(sandbox, f"{HOME}/root/etc/shadow"))
    with pytest.raises(BackendError):
        local_backend.write_file(sandbox, f"{HOME}/root/tmp/{escape}", b"escaped")
    with pytest.raises(BackendError):
        local_backend.list_files(sandbox, f"{HOME}/root")
    with pytest.raises(BackendError):
        local_backend.list_files(sandbox, f"{HOME}/root/etc")

    assert not Path("/tmp", escape).exists()
    listing = local_backend.list_files(sandbox, HOME)
    assert [(entry.name, entry.type) for entry in listing] == [("root", "symlink")]


def test_a_link_swapped_in_for_a_parent_directory_is_refused(
    local_backend: LocalBackend, sandbox: str
) -> None:
    escape = f"airlock-escape-{secrets.token_hex(6)}"
    local_backend.write_file(sandbox, f"{HOME}/d/inner.txt", b"inner")
    run(local_backend, sandbox, "rm -rf d && ln -s /tmp d")

    with pytest.raises(BackendError):
        local_backend.write_file(sandbox, f"{HOME}/d/{escape}", b"escaped")
    with pytest.raises(BackendError):
        b"".join(local_backend.read_file(sandbox, f"{HOME}/d/inner.txt"))

    assert not Path("/tmp", escape).exists()


def test_racing_link_swaps_never_redirect_file_calls(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # The sandbox flips d between a directory and a link to the host's /tmp as fast as it
    # can while the worker writes and reads through d: each call lands inside or fails.
    escape = f"airlock-race-{secrets.token_hex(6)}"
    local_backend.write_file(sandbox, f"{HOME}/d/probe", b"inside")
    # It flips until told to stop (at most 20 s): long enough for both outcomes to show up
    # on a loaded machine. write_file may make d anew while it is away: each round starts by
    # putting the real d back.
    flipper, flipped = in_background(
        lambda: run(
            local_backend,
            sandbox,
            "end=$((SECONDS + 20)); while [ $SECONDS -lt $end ] && [ ! -e stop ]; do "
            "[ -e d.real ] && { rm -rf d; mv -T d.real d; }; "
            "mv -T d d.real && ln -s /tmp d; rm -rf d; mv -T d.real d; done 2>/dev/null",
            timeout_s=30,
        )
    )
    outcomes = {"ok": 0, "refused": 0}
    while flipper.is_alive() and min(outcomes.values()) <= 5:
        try:
            local_backend.write_file(sandbox, f"{HOME}/d/{escape}", b"x")
            assert b"".join(local_backend.read_file(sandbox, f"{HOME}/d/probe")) == b"inside"
            outcomes["ok"] += 1
        except (BackendError, SandboxFileNotFound):
            outcomes["refused"] += 1
    local_backend.write_file(sandbox, f"{HOME}/stop", b"")
    flipper.join()

    assert not Path("/tmp", escape).exists()
    assert outcomes["ok"] > 5, (outcomes, flipped)
    assert outcomes["refused"] > 5, (outcomes, flipped)


def test_write_file_replaces_a_planted_link_instead_of_following_it(
    local_backend: LocalBackend, sandbox: str
) -> None:
    target = Path("/tmp", f"airlock-target-{secrets.token_hex(6)}")
    run(local_backend, sandbox, f"ln -s {target} out")

    local_backend.write_file(sandbox, f"{HOME}/out", b"mine")

    assert not target.exists()
    assert run(local_backend, sandbox, "test -L out || cat out").stdout == "mine"


def test_a_planted_fifo_does_not_hang_read_file(local_backend: LocalBackend, sandbox: str) -> None:
    run(local_backend, sandbox, "mkfifo pipe")

    # Opening a FIFO for reading blocks until a writer appears: in a thread, so a regression
    # fails here instead of hanging the suite.
    thread, outcome = in_background(
        lambda: b"".join(local_backend.read_file(sandbox, f"{HOME}/pipe"))
    )
    thread.join(5)

    assert not thread.is_alive()
    assert isinstance(outcome[0], BackendError)


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/home/user/../../etc/passwd", "relative.txt", "/home/userx/f", "/tmp/f"],
)
def test_paths_outside_the_home_are_refused(
    local_backend: LocalBackend, sandbox: str, path: str
) -> None:
    with pytest.raises(BackendError) as caught:
        b"".join(local_backend.read_file(sandbox, path))
    assert not isinstance(caught.value, SandboxNotFound | SandboxFileNotFound)
    with pytest.raises(BackendError):
        local_backend.write_file(sandbox, path, b"x")


def test_files_written_by_the_worker_belong_to_the_sandbox_user(
    local_backend: LocalBackend, sandbox: str
) -> None:
    local_backend.write_file(sandbox, f"{HOME}/new/dir/file.txt", b"x")

    result = run(local_backend, sandbox, "stat -c '%U %a' new new/dir new/dir/file.txt")

    assert result.stdout.splitlines() == ["user 755", "user 755", "user 644"]
