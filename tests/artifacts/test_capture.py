"""artifacts/capture.py on real local sandboxes and real file storage: capture (limits, links,
odd content) and the command job's outputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from artifacts import capture, jobs
from artifacts.models import Artifact, ReviewState
from config.exceptions import Conflict, InvalidInput, NotFound
from sandboxes import services as run_services
from sandboxes.backends import CommandResult, FileEntry, override_backend
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import PNG, capture_file, home_of, plant, stored_bytes, stored_files
from tests.factories import make_run
from tests.sandboxes.faults import FaultyBackend
from workspaces.access import Actor

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
JOB = Actor.system("execute_run_command")


def test_a_capture_stores_the_file_as_a_pending_artifact(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    data = b"line one\nline two\n"
    path = plant(local_sandboxes, sandbox_run, "artifacts/report.txt", data)

    artifact = capture_file(sandbox_run, path)

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
    assert stored_bytes(artifact) == data


def test_capturing_the_same_path_twice_makes_two_artifacts_with_one_hash(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    path = plant(local_sandboxes, sandbox_run, "out.csv", b"a,b\n1,2\n")
    first, second = capture_file(sandbox_run, path), capture_file(sandbox_run, path)

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
    artifact = capture_file(sandbox_run, plant(local_sandboxes, sandbox_run, name, data))

    assert (artifact.type, artifact.content_type) == (kind, content_type)
    assert bool(artifact.preview_text) is has_preview


def test_a_given_type_and_title_win_over_inference(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    path = plant(local_sandboxes, sandbox_run, "notes.txt", b"x = 1\n")
    artifact = capture_file(sandbox_run, path, type="code", title="  The config  ")
    assert (artifact.type, artifact.title) == ("code", "The config")


def test_non_utf8_text_is_kept_byte_for_byte_and_previewed_with_replacements(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    data = "café — naïve\n".encode("latin-1", "replace") + b"\xff\xfe tail\n"
    artifact = capture_file(sandbox_run, plant(local_sandboxes, sandbox_run, "legacy.txt", data))

    assert stored_bytes(artifact) == data
    assert artifact.content_type == "text/plain"
    assert "\ufffd" in artifact.preview_text
    assert "caf" in artifact.preview_text


def test_binary_content_has_no_preview_and_nul_never_reaches_one(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    binary = capture_file(
        sandbox_run, plant(local_sandboxes, sandbox_run, "blob", b"\x00\x01\x02" * 9)
    )
    forced = capture_file(
        sandbox_run, plant(local_sandboxes, sandbox_run, "odd.py", b"a\x00b\n"), type="code"
    )

    assert binary.preview_text == ""
    assert binary.type == "other"
    assert forced.preview_text == "a\ufffdb\n"


def test_the_preview_is_at_most_4096_characters_and_never_cuts_a_character(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    data = ("é" * 5000).encode()
    artifact = capture_file(sandbox_run, plant(local_sandboxes, sandbox_run, "long.txt", data))
    assert artifact.preview_text == "é" * 4096
    assert artifact.size == len(data)


def test_an_empty_file_is_an_empty_artifact(local_sandboxes: Any, sandbox_run: SandboxRun) -> None:
    artifact = capture_file(sandbox_run, plant(local_sandboxes, sandbox_run, "empty.txt", b""))
    assert (artifact.size, artifact.sha256, artifact.preview_text) == (0, EMPTY_SHA256, "")
    assert stored_bytes(artifact) == b""


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
            capture_file(sandbox_run, path)
        assert "link" in error.value.detail
    assert Artifact.objects.count() == 0
    assert stored_files(media) == []


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir], ids=["fifo", "directory"])
def test_what_is_not_a_regular_file_is_refused(
    local_sandboxes: Any, sandbox_run: SandboxRun, make: Any
) -> None:
    make(home_of(local_sandboxes, sandbox_run) / "odd")
    with pytest.raises(InvalidInput):
        capture_file(sandbox_run, "/home/user/odd")


@pytest.mark.parametrize(
    "path", ["relative.txt", "/home/user/../../etc/passwd", "/etc/passwd", "/home/user/a\x00b", ""]
)
def test_bad_paths_are_refused_before_the_sandbox_is_asked(
    sandbox_run: SandboxRun, path: str
) -> None:
    with pytest.raises(InvalidInput):
        capture_file(sandbox_run, path)


def test_a_missing_file_is_not_found(sandbox_run: SandboxRun) -> None:
    with pytest.raises(NotFound):
        capture_file(sandbox_run, "/home/user/nothing-here.txt")


def test_bad_type_or_title_is_refused(local_sandboxes: Any, sandbox_run: SandboxRun) -> None:
    path = plant(local_sandboxes, sandbox_run, "a.txt", b"a")
    for kwargs in ({"type": "movie"}, {"title": " "}, {"title": "x" * 256}):
        with pytest.raises(InvalidInput):
            capture_file(sandbox_run, path, **kwargs)


@pytest.mark.parametrize("status", ["booting", "succeeded", "failed", "canceled"])
def test_only_a_running_run_can_capture(workspace: Any, status: str) -> None:
    run = make_run(workspace=workspace, status=status)
    with pytest.raises(Conflict):
        capture_file(run, "/home/user/a.txt")


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

    summary = capture.capture_run_outputs(
        run=sandbox_run,
        result=_result(stdout="made 2 files\n", stderr="warning: x\n"),
        actor=JOB,
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

    summary = capture.capture_run_outputs(run=sandbox_run, result=None, actor=JOB)

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

    [artifact] = capture.capture_run_outputs(run=sandbox_run, result=None, actor=JOB).captured

    assert artifact.title == "caf\ufffd[31m.txt"
    assert artifact.sandbox_path == "/home/user/artifacts/caf\ufffd[31m.txt"
    assert stored_bytes(artifact) == b"latin-1 name"


def test_a_file_that_vanishes_mid_walk_is_skipped(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    plant(local_sandboxes, sandbox_run, "artifacts/kept.txt", b"k")

    def listing_with_a_ghost(entries: list[FileEntry]) -> None:
        ghost = FileEntry(name="gone.txt", path="/home/user/artifacts/gone.txt", type="file")
        entries.append(ghost)  # listed, then removed before the walk reads it

    faulty = FaultyBackend(local_sandboxes)
    faulty.after("list_files", listing_with_a_ghost)
    with override_backend(faulty):
        summary = capture.capture_run_outputs(run=sandbox_run, result=None, actor=JOB)

    assert [a.title for a in summary.captured] == ["kept.txt"]
    assert summary.skipped == [("/home/user/artifacts/gone.txt", "No such file in the sandbox.")]


def test_the_walk_is_bounded(
    local_sandboxes: Any, sandbox_run: SandboxRun, monkeypatch: Any
) -> None:
    monkeypatch.setattr(capture, "MAX_OUTPUT_FILES", 3)
    for n in range(5):
        plant(local_sandboxes, sandbox_run, f"artifacts/{n}.txt", b"n")

    summary = capture.capture_run_outputs(run=sandbox_run, result=None, actor=JOB)

    assert len(summary.captured) == 3
    assert summary.incomplete


def test_no_output_dir_and_no_result_captures_nothing(sandbox_run: SandboxRun) -> None:
    summary = capture.capture_run_outputs(run=sandbox_run, result=None, actor=JOB)
    assert (summary.captured, summary.skipped) == ([], [])


def test_a_lost_sandbox_is_reported_and_left_to_the_job_to_judge(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    local_sandboxes.kill(sandbox_run.sandbox_id)

    summary = capture.capture_run_outputs(
        run=sandbox_run, result=_result(stdout="partial"), actor=JOB
    )

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
    jobs.run_execute_command(run_id=str(run.pk))

    run.refresh_from_db()
    assert run.status == "succeeded"
    artifacts = {a.title: a for a in Artifact.objects.filter(run=run)}
    assert set(artifacts) == {"Command output", "r.csv"}
    assert "done" in artifacts["Command output"].preview_text
    assert stored_bytes(artifacts["r.csv"]) == b"a,b\n"


# --- signals at capture ----------------------------------------------------------------

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_PAIR = f"AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n".encode()


def test_a_capture_stores_its_signals_and_never_the_secret(
    local_sandboxes: Any, sandbox_run: SandboxRun, caplog: Any
) -> None:
    from workspaces.models import Event

    caplog.set_level("DEBUG")
    path = plant(local_sandboxes, sandbox_run, "artifacts/creds.env", AWS_PAIR)

    artifact = capture_file(sandbox_run, path)

    artifact.refresh_from_db()
    assert [(s["code"], s["line"]) for s in artifact.signals] == [("secret", 1), ("secret", 2)]
    assert (artifact.signal_codes, artifact.risk) == ("secret", "high")
    assert "AKIAIOSFODNN7EXAMPLE" not in artifact.preview_text
    assert AWS_SECRET not in artifact.preview_text
    assert artifact.preview_text.startswith("AWS_ACCESS_KEY_ID=[AWS Access Key removed]")
    [event] = Event.objects.filter(subject_id=str(artifact.pk))
    assert event.data["signals"] == ["secret"]
    everything_recorded = repr(artifact.signals) + repr(event.data) + caplog.text
    assert (
        AWS_SECRET not in everything_recorded and "AKIAIOSFODNN7EXAMPLE" not in everything_recorded
    )
    assert stored_bytes(artifact) == AWS_PAIR  # the file itself is untouched


def test_a_script_is_executable_when_the_sandbox_made_it_so(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    script = plant(local_sandboxes, sandbox_run, "artifacts/run.sh", b"#!/bin/sh\necho hi\n")
    plain = plant(local_sandboxes, sandbox_run, "artifacts/notes.sh", b"#!/bin/sh\necho hi\n")
    os.chmod(home_of(local_sandboxes, sandbox_run) / "artifacts/run.sh", 0o755)  # noqa: S103
    os.chmod(home_of(local_sandboxes, sandbox_run) / "artifacts/notes.sh", 0o644)

    [signal] = capture_file(sandbox_run, script).signals
    assert (signal["code"], signal["severity"]) == ("executable", "high")
    assert capture_file(sandbox_run, plain).signals == []


def test_output_files_and_the_command_log_get_signals(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../evil", "x")
    plant(local_sandboxes, sandbox_run, "artifacts/bundle.zip", buffer.getvalue())
    stdout = f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}\n"
    result = CommandResult(exit_code=0, stdout=stdout, stderr="", truncated=False, duration_ms=5)

    summary = capture.capture_run_outputs(run=sandbox_run, result=result, actor=JOB)

    by_title = {a.title: a for a in summary.captured}
    assert "'../evil'" in by_title["bundle.zip"].signals[1]["message"]
    log = by_title["Command output"]
    assert "secret" in log.signal_codes
    assert AWS_SECRET not in log.preview_text
