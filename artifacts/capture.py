"""Capture: a file of a run's sandbox becomes a pending artifact (bytes in storage, a row, and
`artifact.created` on the trail); and a finished command job's outputs — its log and every file
under the run's output_dir — become artifacts the same way."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import transaction

from artifacts import content, markdown, policy, risk, storage
from artifacts.models import Artifact, ArtifactType
from config.exceptions import AirlockError, Conflict, InvalidInput, NotFound
from sandboxes import execution, validation
from sandboxes.backends import BackendError, CommandResult, FileEntry, get_backend
from sandboxes.models import Command, SandboxRun
from workspaces import events
from workspaces.access import Actor
from workspaces.models import EventType

logger = logging.getLogger(__name__)

TITLE_MAX_CHARS = 255
MAX_OUTPUT_FILES = 1000
MAX_OUTPUT_ENTRIES = 10_000  # directory entries looked at while walking output_dir
MAX_OUTPUT_DEPTH = 32
# Sandbox reads for a capture: large chunks keep Python's per-chunk work small next to I/O.
CAPTURE_CHUNK_BYTES = 1024 * 1024
LOG_NAME = "command-output.log"


def _create_artifact(
    *,
    run: SandboxRun,
    actor: Actor,
    stored: storage.Stored,
    scanner: risk.SignalScanner,
    name: str,
    sandbox_path: str,
    type: str | None,
    title: str | None,
    content_type: str | None = None,
) -> Artifact:
    """The artifact's row with its signals, `artifact.created` on the trail, and the
    policy's auto-approval, in one transaction. The preview never shows a secret the scan
    found."""
    content_type = content_type or content.guess_content_type(name, stored.head)
    kind = ArtifactType(type) if type else content.infer_type(name, content_type)
    text_like = content.is_text_type(content_type) or kind in (ArtifactType.CODE, ArtifactType.LOG)
    found = scanner.finish(size=stored.size, content_type=content_type)
    signals = [signal.as_json() for signal in found]
    preview = risk.redact(content.preview(stored.head), scanner.secrets) if text_like else ""
    rendered = markdown.render(preview) if preview and markdown.is_markdown(content_type) else ""
    try:
        with transaction.atomic():
            artifact = Artifact.objects.create(
                run=run,
                workspace_id=run.workspace_id,
                thread_id=run.thread_id,
                type=kind,
                title=content.printable(title or name, limit=TITLE_MAX_CHARS).strip() or "file",
                file=stored.key,
                content_type=content_type,
                size=stored.size,
                sha256=stored.sha256,
                sandbox_path=content.printable(sandbox_path, limit=1024),
                preview_text=preview,
                preview_html=rendered,
                signals=signals,
                signal_codes=",".join(sorted({s["code"] for s in signals})),
                risk=risk.highest_severity(signals),
            )
            events.record(
                actor=actor,
                type=EventType.ARTIFACT_CREATED,
                subject=artifact,
                data=artifact.trail_data(),
            )
            return policy.apply_at_capture(artifact=artifact)
    except BaseException:
        storage.delete_quietly(stored.key)
        raise


def _clean_title(title: str | None) -> str | None:
    if title is None:
        return None
    title = title.strip()
    if not title or len(title) > TITLE_MAX_CHARS or "\x00" in title:
        raise InvalidInput(f"title: 1 to {TITLE_MAX_CHARS} characters, no NUL.", code="invalid")
    return title


def _clean_type(type: str | None) -> str | None:
    if type is not None and type not in ArtifactType.values:
        choices = ", ".join(ArtifactType.values)
        raise InvalidInput(f"type: one of {choices}.", code="invalid_choice")
    return type


# --- capture ---------------------------------------------------------------------------


def artifact_capture(
    *,
    run: SandboxRun,
    actor: Actor,
    path: str,
    type: str | None = None,
    title: str | None = None,
) -> Artifact:
    """Copy one file of a running run's sandbox into storage as a pending artifact.

    Streamed: memory does not grow with the file. 409 unless the run is running (a paused
    run is resumed: SPEC §15), 404 when
    the file does not exist, 400 for a link or anything but a regular file (the backend never
    follows links), 413 past ARTIFACT_MAX_BYTES (nothing is kept)."""
    type = _clean_type(type)
    title = _clean_title(title)
    path = validation.clean_sandbox_path(path)
    # Through the run service: the run must be running, the call counts as activity, and a
    # sandbox that vanished under a running run fails the run.
    chunks = execution.run_download_file(
        run=run, path=path, chunk_size=CAPTURE_CHUNK_BYTES, actor=actor
    )
    return _capture_chunks(
        run=run,
        actor=actor,
        path=path,
        chunks=chunks,
        type=type,
        title=title,
        mode=lambda: _file_mode(run, path),
    )


def _file_mode(run: SandboxRun, path: str) -> int | None:
    """The permission bits of one sandbox file, from its directory's listing: asked only for
    a script with a shebang (whether it is executable), None when the backend does not say."""
    directory, name = posixpath.split(path)
    try:
        entries = execution.run_list_files(run=run, path=directory)
    except AirlockError:
        return None
    return next((entry.mode for entry in entries if entry.name == name), None)


def _capture_chunks(
    *,
    run: SandboxRun,
    actor: Actor,
    path: str,
    chunks: Iterable[bytes],
    type: str | None = None,
    title: str | None = None,
    mode: risk.ModeLookup = None,
) -> Artifact:
    name = posixpath.basename(path)
    scanner = risk.SignalScanner(name=name, mode=mode)
    stored = storage.store(
        workspace_id=run.workspace_id, name=name, chunks=chunks, observer=scanner.feed
    )
    return _create_artifact(
        run=run,
        actor=actor,
        stored=stored,
        scanner=scanner,
        name=name,
        sandbox_path=path,
        type=type,
        title=title,
    )


@dataclass
class OutputCapture:
    """What capture_run_outputs kept and what it had to leave behind, and why."""

    captured: list[Artifact] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    incomplete: bool = False  # a bound was reached: more files may exist

    def __str__(self) -> str:
        text = f"{len(self.captured)} captured, {len(self.skipped)} skipped"
        return text + (" (stopped at a bound)" if self.incomplete else "")


def capture_run_outputs(
    *, run: SandboxRun, result: CommandResult | None, actor: Actor
) -> OutputCapture:
    """The command job's outputs: a `log` artifact with stdout and stderr (none when there is
    no result, e.g. the sandbox was lost), then every regular file under `run.output_dir`.

    One bad file (too large, a link, vanished) is skipped and reported, never fatal; the walk
    stops at MAX_OUTPUT_FILES files, MAX_OUTPUT_ENTRIES entries or MAX_OUTPUT_DEPTH levels.
    It reads the sandbox directly, never through the run services: the job decides how the
    run ends (a sandbox that timed out with the command is max_duration, not sandbox_lost)."""
    summary = OutputCapture()
    if result is not None:
        try:
            summary.captured.append(_capture_log(run=run, result=result, actor=actor))
        except AirlockError as exc:
            summary.skipped.append(("(command output)", exc.detail))
    try:
        _capture_tree(run=run, summary=summary, actor=actor)
    except AirlockError as exc:
        summary.skipped.append((run.output_dir, exc.detail))
    for path, reason in summary.skipped:
        logger.warning("output not captured run=%s path=%r: %s", run.pk, path, reason)
    logger.info("outputs of run=%s: %s", run.pk, summary)
    return summary


def capture_lost_job_log(run: SandboxRun, command: Command, actor: Actor) -> None:
    """A job whose worker died (the sweep's worker_lost): what output its lease's last
    renewal stored becomes the run's log artifact, pending review like any other."""
    kept = CommandResult(
        exit_code=-1,
        stdout=command.stdout_tail,
        stderr=command.stderr_tail,
        truncated=command.truncated,
        duration_ms=command.duration_ms or 0,
    )
    note = "the worker running it died; the output up to its last heartbeat"
    try:
        _capture_log(run=run, result=kept, actor=actor, note=note)
    except AirlockError as exc:
        logger.warning("log of lost job not captured run=%s: %s", run.pk, exc.detail)


def _log_text(run: SandboxRun, result: CommandResult, note: str = "") -> bytes:
    ended = note or f"exit code {result.exit_code}"
    lines = [
        f"$ {run.command}",
        f"# {ended}, {result.duration_ms} ms" + (", output truncated" if result.truncated else ""),
        "# --- stdout ---",
        result.stdout,
        "# --- stderr ---",
        result.stderr,
    ]
    return "\n".join(lines).encode("utf-8", "replace")


def _capture_log(
    *, run: SandboxRun, result: CommandResult, actor: Actor, note: str = ""
) -> Artifact:
    data = _log_text(run, result, note)
    chunks = (data[i : i + 64 * 1024] for i in range(0, len(data), 64 * 1024))
    scanner = risk.SignalScanner(name=LOG_NAME)
    stored = storage.store(
        workspace_id=run.workspace_id, name=LOG_NAME, chunks=chunks, observer=scanner.feed
    )
    return _create_artifact(
        run=run,
        actor=actor,
        stored=stored,
        scanner=scanner,
        name=LOG_NAME,
        sandbox_path="",
        type=ArtifactType.LOG,
        title="Command output",
        content_type="text/plain; charset=utf-8",
    )


def _list_dir(run: SandboxRun, path: str) -> list[FileEntry]:
    try:
        return get_backend().list_files(run.sandbox_id, path)
    except BackendError as exc:
        raise execution.as_api_error(exc) from exc


def _capture_output_file(run: SandboxRun, entry: FileEntry, actor: Actor) -> Artifact:
    path = validation.clean_sandbox_path(entry.path)
    try:
        chunks = get_backend().read_file(run.sandbox_id, path, chunk_size=CAPTURE_CHUNK_BYTES)
    except BackendError as exc:  # read_file raises before its first chunk
        raise execution.as_api_error(exc) from exc
    return _capture_chunks(run=run, actor=actor, path=path, chunks=chunks, mode=entry.mode)


def _capture_tree(*, run: SandboxRun, summary: OutputCapture, actor: Actor) -> None:
    try:
        root = validation.clean_sandbox_path(run.output_dir)
    except InvalidInput as exc:
        summary.skipped.append((run.output_dir, exc.detail))
        return
    pending: list[tuple[str, int]] = [(root, 0)]
    seen = files = 0
    while pending:
        directory, depth = pending.pop()
        try:
            entries = _list_dir(run, directory)
        except NotFound:
            if directory != root:  # a missing output_dir just means no files were made
                summary.skipped.append((directory, "vanished"))
            continue
        for entry in entries:
            seen += 1
            if seen > MAX_OUTPUT_ENTRIES or files >= MAX_OUTPUT_FILES:
                summary.incomplete = True
                return
            if entry.type == "dir":
                if depth + 1 >= MAX_OUTPUT_DEPTH:
                    summary.skipped.append((entry.path, "too deep"))
                    summary.incomplete = True
                else:
                    pending.append((entry.path, depth + 1))
            elif entry.type != "file":
                reason = "a symbolic link (not followed)" if entry.type == "symlink" else None
                summary.skipped.append((entry.path, reason or "not a regular file"))
            else:
                files += 1
                try:
                    summary.captured.append(_capture_output_file(run, entry, actor))
                except Conflict:
                    raise  # the run or its sandbox is gone: nothing more can be read
                except AirlockError as exc:
                    summary.skipped.append((entry.path, exc.detail))
