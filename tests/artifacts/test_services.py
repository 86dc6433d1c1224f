"""artifacts/services.py on real local sandboxes and real file storage: capture (streamed,
limits, links, odd content), the command job's outputs, and the review rules."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.files.storage import default_storage
from django.db import connection

from artifacts import services
from artifacts.models import Artifact, ReviewState
from config.exceptions import Conflict, InvalidInput, NotFound, PermissionDenied, TooLarge
from sandboxes import services as run_services
from sandboxes.backends import CommandResult, FileEntry
from sandboxes.models import SandboxRun, TransitionLog
from tests.artifacts.conftest import PNG, home_of, make_artifact, plant, stored_files
from tests.conftest import require_service
from tests.factories import make_api_key, make_run
from workspaces.permissions import Actor

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _capture(run: SandboxRun, path: str, **kwargs: Any) -> Artifact:
    return services.artifact_capture(run=run, actor=Actor(user=run.created_by), path=path, **kwargs)


def _stored_bytes(artifact: Artifact) -> bytes:
    with default_storage.open(artifact.file.name, "rb") as file:
        return file.read()


def _log_rows(artifact: Artifact) -> list[TransitionLog]:
    return list(
        TransitionLog.objects.filter(
            content_type=ContentType.objects.get_for_model(Artifact), object_id=str(artifact.pk)
        )
    )


# --- capture ---------------------------------------------------------------------------------


def test_a_capture_stores_the_file_as_a_pending_artifact(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    data = b"line one\nline two\n"
    path = plant(local_sandboxes, sandbox_run, "artifacts/report.txt", data)

    artifact = _capture(sandbox_run, path)

    assert artifact.review_state == ReviewState.PENDING
    assert (artifact.type, artifact.content_type) == ("file", "text/plain")
    assert artifact.title == "report.txt"
    assert artifact.sandbox_path == path
    assert artifact.size == len(data)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.preview_text == data.decode()
    assert (artifact.workspace_id, artifact.thread_id) == (
        sandbox_run.workspace_id,
        sandbox_run.thread_id,
    )
    assert _stored_bytes(artifact) == data


def test_storage_keys_are_random_per_capture_and_never_just_the_sandbox_name(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    path = plant(local_sandboxes, sandbox_run, "évil name;$(rm) <b>.txt", b"x")
    first, second = _capture(sandbox_run, path), _capture(sandbox_run, path)

    pattern = rf"artifacts/{sandbox_run.workspace_id}/[0-9a-f]{{32}}/[\w.-]+"
    assert re.fullmatch(pattern, first.file.name)
    assert first.file.name != second.file.name
    assert "/" not in first.file.name.rsplit("/", 1)[1]
    for odd, title in (("???", "???"), ("...", "..."), (" ", "file")):
        stored = _capture(sandbox_run, plant(local_sandboxes, sandbox_run, odd, b"x"))
        assert stored.file.name.endswith("/file")
        assert stored.title == title


def test_capturing_the_same_path_twice_makes_two_artifacts_with_one_hash(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    path = plant(local_sandboxes, sandbox_run, "out.csv", b"a,b\n1,2\n")
    first, second = _capture(sandbox_run, path), _capture(sandbox_run, path)

    assert first.pk != second.pk
    assert first.sha256 == second.sha256
    assert Artifact.objects.filter(run=sandbox_run).count() == 2


@pytest.mark.parametrize(
    ("name", "data", "kind", "content_type", "has_preview"),
    [
        ("chart.png", PNG, "image", "image/png", False),
        ("no-extension", PNG, "image", "image/png", False),
        ("claims.png", b"not a picture", "other", "application/octet-stream", False),
        ("main.py", b"print('hi')\n", "code", "text/x-python", True),
        ("build.log", b"step 1 ok\n", "log", "text/plain", True),
        ("page.txt", b"<!DOCTYPE html><script>x</script>", "file", "text/html", True),
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image", "image/svg+xml", True),
        ("data.bin", bytes(range(256)) * 4, "other", "application/octet-stream", False),
        ("paper.pdf", b"%PDF-1.7\n\x00\x01binary", "file", "application/pdf", False),
        ("Makefile", b"all:\n\techo hi\n", "code", "text/plain", True),
    ],
)
def test_type_and_content_type_come_from_the_name_and_the_first_bytes(
    local_sandboxes: Any,
    sandbox_run: SandboxRun,
    name: str,
    data: bytes,
    kind: str,
    content_type: str,
    has_preview: bool,
) -> None:
    artifact = _capture(sandbox_run, plant(local_sandboxes, sandbox_run, name, data))

    assert (artifact.type, artifact.content_type) == (kind, content_type)
    assert bool(artifact.preview_text) is has_preview


def test_a_given_type_and_title_win_over_inference(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    path = plant(local_sandboxes, sandbox_run, "notes.txt", b"x = 1\n")
    artifact = _capture(sandbox_run, path, type="code", title="  The config  ")
    assert (artifact.type, artifact.title) == ("code", "The config")


def test_non_utf8_text_is_kept_byte_for_byte_and_previewed_with_replacements(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    data = "café — naïve\n".encode("latin-1", "replace") + b"\xff\xfe tail\n"
    artifact = _capture(sandbox_run, plant(local_sandboxes, sandbox_run, "legacy.txt", data))

    assert _stored_bytes(artifact) == data
    assert artifact.content_type == "text/plain"
    assert "\ufffd" in artifact.preview_text
    assert "caf" in artifact.preview_text


def test_binary_content_has_no_preview_and_nul_never_reaches_one(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    binary = _capture(sandbox_run, plant(local_sandboxes, sandbox_run, "blob", b"\x00\x01\x02" * 9))
    forced = _capture(
        sandbox_run, plant(local_sandboxes, sandbox_run, "odd.py", b"a\x00b\n"), type="code"
    )

    assert binary.preview_text == ""
    assert binary.type == "other"
    assert forced.preview_text == "a\ufffdb\n"


def test_the_preview_is_at_most_4096_characters_and_never_cuts_a_character(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    data = ("é" * 5000).encode()
    artifact = _capture(sandbox_run, plant(local_sandboxes, sandbox_run, "long.txt", data))
    assert artifact.preview_text == "é" * 4096
    assert artifact.size == len(data)


def test_an_empty_file_is_an_empty_artifact(local_sandboxes: Any, sandbox_run: SandboxRun) -> None:
    artifact = _capture(sandbox_run, plant(local_sandboxes, sandbox_run, "empty.txt", b""))
    assert (artifact.size, artifact.sha256, artifact.preview_text) == (0, EMPTY_SHA256, "")
    assert _stored_bytes(artifact) == b""


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
        artifact = _capture(sandbox_run, "/home/user/big.bin")
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

    assert _capture(sandbox_run, at_limit).size == 200_000
    with pytest.raises(TooLarge) as error:
        _capture(sandbox_run, over)

    assert error.value.status_code == 413
    assert Artifact.objects.count() == 1
    assert [p.name for p in stored_files(media)] == ["fits.bin"]


def test_links_out_of_the_sandbox_are_refused_and_leak_nothing(
    local_sandboxes: Any, sandbox_run: SandboxRun, tmp_path: Path, media: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host secret")
    home = home_of(local_sandboxes, sandbox_run)
    (home / "out").symlink_to(secret)
    (home / "etc").symlink_to(tmp_path, target_is_directory=True)

    for path in ("/home/user/out", "/home/user/etc/host-secret"):
        with pytest.raises(InvalidInput) as error:
            _capture(sandbox_run, path)
        assert "link" in error.value.detail
    assert Artifact.objects.count() == 0
    assert stored_files(media) == []


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir], ids=["fifo", "directory"])
def test_what_is_not_a_regular_file_is_refused(
    local_sandboxes: Any, sandbox_run: SandboxRun, make: Any
) -> None:
    make(home_of(local_sandboxes, sandbox_run) / "odd")
    with pytest.raises(InvalidInput):
        _capture(sandbox_run, "/home/user/odd")


@pytest.mark.parametrize(
    "path", ["relative.txt", "/home/user/../../etc/passwd", "/etc/passwd", "/home/user/a\x00b", ""]
)
def test_bad_paths_are_refused_before_the_sandbox_is_asked(
    sandbox_run: SandboxRun, path: str
) -> None:
    with pytest.raises(InvalidInput):
        _capture(sandbox_run, path)


def test_a_missing_file_is_not_found(sandbox_run: SandboxRun) -> None:
    with pytest.raises(NotFound):
        _capture(sandbox_run, "/home/user/nothing-here.txt")


def test_bad_type_or_title_is_refused(local_sandboxes: Any, sandbox_run: SandboxRun) -> None:
    path = plant(local_sandboxes, sandbox_run, "a.txt", b"a")
    for kwargs in ({"type": "movie"}, {"title": " "}, {"title": "x" * 256}):
        with pytest.raises(InvalidInput):
            _capture(sandbox_run, path, **kwargs)


@pytest.mark.parametrize("status", ["booting", "succeeded", "failed", "canceled"])
def test_only_a_running_run_can_capture(workspace: Any, status: str) -> None:
    run = make_run(workspace=workspace, status=status)
    with pytest.raises(Conflict):
        _capture(run, "/home/user/a.txt")


# --- the command job's outputs -------------------------------------------------------------


def _result(**fields: Any) -> CommandResult:
    defaults = {"exit_code": 0, "stdout": "", "stderr": "", "truncated": False, "duration_ms": 5}
    return CommandResult(**{**defaults, **fields})


def test_outputs_are_the_log_and_every_file_under_output_dir(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    plant(local_sandboxes, sandbox_run, "artifacts/a.txt", b"a")
    plant(local_sandboxes, sandbox_run, "artifacts/deep/er/b.py", b"b = 2\n")
    plant(local_sandboxes, sandbox_run, "elsewhere.txt", b"not an output")
    (home_of(local_sandboxes, sandbox_run) / "artifacts" / "empty-dir").mkdir()

    summary = services.capture_run_outputs(
        run=sandbox_run, result=_result(stdout="made 2 files\n", stderr="warning: x\n")
    )

    assert summary.skipped == []
    assert not summary.incomplete
    by_title = {a.title: a for a in summary.captured}
    assert set(by_title) == {"Command output", "a.txt", "b.py"}
    log = by_title["Command output"]
    assert log.type == "log"
    assert log.sandbox_path == ""
    assert "made 2 files" in log.preview_text
    assert "warning: x" in log.preview_text
    assert by_title["b.py"].sandbox_path == "/home/user/artifacts/deep/er/b.py"
    assert all(a.review_state == "pending" for a in summary.captured)


def test_one_bad_output_file_does_not_stop_the_others(
    local_sandboxes: Any, sandbox_run: SandboxRun, settings: Any, tmp_path: Path
) -> None:
    settings.ARTIFACT_MAX_BYTES = 1000
    plant(local_sandboxes, sandbox_run, "artifacts/1-good.txt", b"good")
    plant(local_sandboxes, sandbox_run, "artifacts/2-huge.bin", b"x" * 1001)
    plant(local_sandboxes, sandbox_run, "artifacts/3-fine.txt", b"fine")
    outputs = home_of(local_sandboxes, sandbox_run) / "artifacts"
    (outputs / "4-link").symlink_to("/etc/passwd")
    os.mkfifo(outputs / "5-pipe")

    summary = services.capture_run_outputs(run=sandbox_run, result=None)

    assert sorted(a.title for a in summary.captured) == ["1-good.txt", "3-fine.txt"]
    skipped = dict(summary.skipped)
    assert set(skipped) == {
        "/home/user/artifacts/2-huge.bin",
        "/home/user/artifacts/4-link",
        "/home/user/artifacts/5-pipe",
    }
    assert "ARTIFACT_MAX_BYTES" in skipped["/home/user/artifacts/2-huge.bin"]
    assert "link" in skipped["/home/user/artifacts/4-link"]
    assert "2 captured, 3 skipped" in str(summary)


def test_output_names_that_are_not_utf8_are_kept_printable(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    outputs = home_of(local_sandboxes, sandbox_run) / "artifacts"
    outputs.mkdir()
    with open(os.path.join(os.fsencode(outputs), b"caf\xe9\x1b[31m.txt"), "wb") as file:
        file.write(b"latin-1 name")

    [artifact] = services.capture_run_outputs(run=sandbox_run, result=None).captured

    assert artifact.title == "caf\ufffd[31m.txt"
    assert artifact.sandbox_path == "/home/user/artifacts/caf\ufffd[31m.txt"
    assert _stored_bytes(artifact) == b"latin-1 name"


def test_a_file_that_vanishes_mid_walk_is_skipped(
    local_sandboxes: Any, sandbox_run: SandboxRun, monkeypatch: Any
) -> None:
    plant(local_sandboxes, sandbox_run, "artifacts/kept.txt", b"k")
    real_list = services._list_dir

    def listing_with_a_ghost(run: SandboxRun, path: str) -> list[FileEntry]:
        ghost = FileEntry(name="gone.txt", path="/home/user/artifacts/gone.txt", type="file")
        return [*real_list(run, path), ghost]

    monkeypatch.setattr(services, "_list_dir", listing_with_a_ghost)
    summary = services.capture_run_outputs(run=sandbox_run, result=None)

    assert [a.title for a in summary.captured] == ["kept.txt"]
    assert summary.skipped == [("/home/user/artifacts/gone.txt", "No such file in the sandbox.")]


def test_the_walk_is_bounded(
    local_sandboxes: Any, sandbox_run: SandboxRun, monkeypatch: Any
) -> None:
    monkeypatch.setattr(services, "MAX_OUTPUT_FILES", 3)
    for n in range(5):
        plant(local_sandboxes, sandbox_run, f"artifacts/{n}.txt", b"n")

    summary = services.capture_run_outputs(run=sandbox_run, result=None)

    assert len(summary.captured) == 3
    assert summary.incomplete


def test_no_output_dir_and_no_result_captures_nothing(sandbox_run: SandboxRun) -> None:
    summary = services.capture_run_outputs(run=sandbox_run, result=None)
    assert (summary.captured, summary.skipped) == ([], [])


def test_a_lost_sandbox_is_reported_and_left_to_the_job_to_judge(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    local_sandboxes.kill(sandbox_run.sandbox_id)

    summary = services.capture_run_outputs(run=sandbox_run, result=_result(stdout="partial"))

    assert [a.title for a in summary.captured] == ["Command output"]
    assert summary.skipped == [(sandbox_run.output_dir, "The sandbox is gone.")]
    # The job decides how the run ends (e.g. max_duration when the command timed out with
    # its sandbox); capturing its outputs must not end it as sandbox_lost first.
    sandbox_run.refresh_from_db()
    assert (sandbox_run.status, sandbox_run.end_reason) == ("running", "")


@pytest.mark.bwrap
def test_the_command_job_keeps_its_outputs_as_pending_artifacts(
    local_sandboxes: Any, workspace: Any
) -> None:
    run, _ = run_services.run_create(
        workspace=workspace,
        actor=Actor(user=workspace.owner),
        thread_id="t-job",
        prompt="write a report",
        command="mkdir -p artifacts && printf 'a,b\\n' > artifacts/r.csv && echo done",
    )
    run_services.run_boot(run_id=str(run.pk))
    run_services.run_execute_command(run_id=str(run.pk))

    run.refresh_from_db()
    assert run.status == "succeeded"
    artifacts = {a.title: a for a in Artifact.objects.filter(run=run)}
    assert set(artifacts) == {"Command output", "r.csv"}
    assert "done" in artifacts["Command output"].preview_text
    assert _stored_bytes(artifacts["r.csv"]) == b"a,b\n"


# --- review ----------------------------------------------------------------------------------


def _review(artifact: Artifact, who: Any, decision: str = "approve", comment: str = "") -> Artifact:
    return services.artifact_review(
        artifact=artifact, actor=Actor(user=who), decision=decision, comment=comment
    )


def test_an_approval_records_the_reviewer_and_logs_the_transition(
    sandbox_run: SandboxRun, admin_user: Any
) -> None:
    artifact = _review(make_artifact(sandbox_run), admin_user, comment="looks fine")

    artifact.refresh_from_db()
    assert artifact.review_state == "approved"
    assert (artifact.reviewed_by, artifact.review_comment) == (admin_user, "looks fine")
    assert artifact.reviewed_at is not None
    [row] = _log_rows(artifact)
    assert (row.transition, row.source_state, row.state) == ("approve", "pending", "approved")
    assert (row.by, row.actor) == (admin_user, "user:adam")


def test_a_reject_needs_a_comment(sandbox_run: SandboxRun, admin_user: Any) -> None:
    artifact = make_artifact(sandbox_run)
    for comment in ("", "   "):
        with pytest.raises(InvalidInput) as error:
            _review(artifact, admin_user, "reject", comment)
        assert error.value.code == "comment_required"

    _review(artifact, admin_user, "reject", "contains a credential")
    artifact.refresh_from_db()
    assert (artifact.review_state, artifact.review_comment) == (
        "rejected",
        "contains a credential",
    )


def test_a_decision_is_final(sandbox_run: SandboxRun, admin_user: Any, owner: Any) -> None:
    artifact = _review(make_artifact(sandbox_run), admin_user)
    for decision in ("approve", "reject"):
        with pytest.raises(Conflict) as error:
            _review(artifact, admin_user, decision, "again")
        assert error.value.code == "already_reviewed"
    assert len(_log_rows(artifact)) == 1


def test_a_stale_copy_loses_to_the_decision_already_saved(
    sandbox_run: SandboxRun, admin_user: Any
) -> None:
    artifact = make_artifact(sandbox_run)
    stale = Artifact.objects.select_related("run").get(pk=artifact.pk)

    _review(artifact, admin_user, "reject", "no")
    with pytest.raises(Conflict) as error:
        _review(stale, _superuser())  # ConcurrentTransitionMixin: the row is no longer pending

    assert "rejected" in error.value.detail
    assert stale.review_state == "rejected"  # refreshed: the caller sees the winner
    assert [row.state for row in _log_rows(artifact)] == ["rejected"]


def test_who_may_review(sandbox_run: SandboxRun, member: Any, outsider: Any) -> None:
    artifact = make_artifact(sandbox_run)
    with pytest.raises(PermissionDenied):
        _review(artifact, member)
    with pytest.raises(NotFound):
        _review(artifact, outsider)
    assert _review(artifact, _superuser()).review_state == "approved"


def test_self_review_is_refused_unless_allowed(
    sandbox_run: SandboxRun, owner: Any, settings: Any
) -> None:
    artifact = make_artifact(sandbox_run)  # the owner started this run
    with pytest.raises(PermissionDenied) as error:
        _review(artifact, owner)
    assert error.value.code == "self_review"

    settings.ALLOW_SELF_REVIEW = True
    assert _review(artifact, owner).review_state == "approved"


def test_an_admin_key_reviews_in_its_workspace_and_is_logged_as_the_key(
    workspace: Any, admin_user: Any
) -> None:
    # Keys act for whoever created them (the owner here): the run is someone else's.
    artifact = make_artifact(make_run(workspace=workspace, created_by=admin_user))
    key, _ = make_api_key(workspace=workspace, role="admin", name="ci")
    member_key, _ = make_api_key(workspace=workspace, role="member")
    with pytest.raises(PermissionDenied):
        services.artifact_review(
            artifact=artifact,
            actor=Actor(user=member_key.created_by, api_key=member_key),
            decision="approve",
        )

    services.artifact_review(
        artifact=artifact, actor=Actor(user=key.created_by, api_key=key), decision="approve"
    )

    [row] = _log_rows(artifact)
    assert row.actor == f"api_key:{key.prefix}"


def test_bulk_review_counts_what_it_did(
    sandbox_run: SandboxRun, admin_user: Any, owner: Any
) -> None:
    others = make_run(workspace=sandbox_run.workspace, created_by=admin_user)
    pending = [make_artifact(sandbox_run), make_artifact(sandbox_run)]
    decided = make_artifact(sandbox_run, state="approved")
    own = make_artifact(others)

    outcome = services.artifacts_review(
        artifacts=[*pending, decided, own], actor=Actor(user=admin_user), decision="approve"
    )

    assert (outcome.done, outcome.already_decided) == (2, 1)
    assert [artifact for artifact, _ in outcome.refused] == [own]


def test_deleting_a_workspace_can_take_its_stored_files_along(
    sandbox_run: SandboxRun, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    make_artifact(sandbox_run)
    with django_capture_on_commit_callbacks(execute=True):
        services.workspace_artifact_files_delete(workspace=sandbox_run.workspace)
    assert stored_files(media) == []


# --- two reviewers at once, on PostgreSQL ------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_of_two_concurrent_reviewers_exactly_one_wins(
    workspace: Any, admin_user: Any, owner: Any, media: Path
) -> None:
    require_service(connection.vendor == "postgresql", "needs PostgreSQL (DATABASE_URL)")
    from django_fsm.signals import post_transition

    run = make_run(workspace=workspace, status="running", created_by=workspace.owner)
    artifact = make_artifact(run)
    # Both reviewers have moved the artifact in memory before either saves: the race the
    # optimistic lock exists for.
    barrier = threading.Barrier(2, timeout=10)

    def wait_for_the_other(**kwargs: Any) -> None:
        if kwargs["sender"] is Artifact:
            barrier.wait()

    outcomes: dict[str, str] = {}

    def review(name: str, who: Any, decision: str) -> None:
        try:
            copy = Artifact.objects.select_related("run").get(pk=artifact.pk)
            _review(copy, who, decision, "concurrent")
            outcomes[name] = "won"
        except Conflict:
            outcomes[name] = "409"
        finally:
            connection.close()

    post_transition.connect(wait_for_the_other)
    try:
        threads = [
            threading.Thread(target=review, args=("admin", admin_user, "approve")),
            threading.Thread(target=review, args=("superuser", _superuser(), "reject")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        post_transition.disconnect(wait_for_the_other)

    assert sorted(outcomes.values()) == ["409", "won"]
    artifact.refresh_from_db()
    winner = "approved" if outcomes["admin"] == "won" else "rejected"
    assert artifact.review_state == winner
    assert [row.state for row in _log_rows(artifact)] == [winner]


def _superuser() -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")
