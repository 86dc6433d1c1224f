"""Every write to artifacts: capture from a sandbox into storage, and the review decision.

Bytes go to storage before the row is written and outside any transaction (a capture can take
minutes); a failed capture deletes what it stored. Review decisions go through the Artifact
transitions, logged with the actor, and a decision that lost a race is a Conflict."""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import queue
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils.text import get_valid_filename
from django_fsm import ConcurrentTransition, TransitionNotAllowed

from artifacts import content
from artifacts.models import REVIEW_COMMENT_MAX_CHARS, Artifact, ArtifactType, ReviewState
from artifacts.selectors import artifact_review_refusal, artifact_role
from config.exceptions import (
    AirlockError,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    TooLarge,
)
from sandboxes import services as run_services
from sandboxes.backends import (
    BackendError,
    CommandResult,
    FileEntry,
    SandboxFileNotFound,
    SandboxNotFound,
    TransientBackendError,
    get_backend,
)
from sandboxes.models import SandboxRun
from workspaces.models import Workspace
from workspaces.permissions import Actor

logger = logging.getLogger(__name__)

TITLE_MAX_CHARS = 255
STORED_NAME_MAX_CHARS = 100
MAX_OUTPUT_FILES = 1000
MAX_OUTPUT_ENTRIES = 10_000  # directory entries looked at while walking output_dir
MAX_OUTPUT_DEPTH = 32
SYSTEM_JOB = Actor.system("execute_run_command")
STORE_BUFFER_BYTES = 1024 * 1024
# Sandbox reads for a capture: large chunks keep Python's per-chunk work small next to I/O.
CAPTURE_CHUNK_BYTES = 1024 * 1024


def _log(actor: Actor) -> dict[str, Any]:
    return {"by": actor.user, "description": str(actor)}


# --- storing bytes ---------------------------------------------------------------------


class _BackgroundDigest:
    """SHA-256 on a thread of its own. Hashing is the capture's slowest step (~1.5 GB/s here,
    slower than copying); hashlib releases the GIL on large buffers, so on its own thread it
    overlaps the reads and writes instead of adding to them. At most QUEUE_CHUNKS chunks wait,
    so memory stays bounded."""

    QUEUE_CHUNKS = 4

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=self.QUEUE_CHUNKS)
        self._thread = threading.Thread(target=self._run, name="artifact-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def finish(self) -> None:
        if self._thread.is_alive():
            self._chunks.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.finish()
        return self._digest.hexdigest()


class _MeasuringReader(io.RawIOBase):
    """A read-only, non-seekable file over a chunk iterator that hashes and counts what
    passes, keeps the first bytes for the sniff and the preview, and refuses to go past
    `limit` (TooLarge) before the byte that would exceed it reaches storage."""

    def __init__(self, chunks: Iterable[bytes], *, limit: int):
        super().__init__()
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")
        self._limit = limit
        self.size = 0
        self.digest = _BackgroundDigest()
        self.head = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            except BackendError as exc:
                raise _backend_error(exc) from exc
            if not chunk:
                continue
            if self.size + len(chunk) > self._limit:
                raise TooLarge(
                    f"The file is larger than ARTIFACT_MAX_BYTES ({self._limit} bytes).",
                    code="artifact_too_large",
                )
            self.size += len(chunk)
            self.digest.update(chunk)
            if len(self.head) < content.SNIFF_BYTES:
                self.head += chunk[: content.SNIFF_BYTES - len(self.head)]
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()  # a generator over an open sandbox file: release the descriptor now
        self.digest.finish()
        super().close()


def _backend_error(exc: BackendError) -> AirlockError:
    """A backend error as the job and the mid-stream reads report it: nothing here changes
    the run's state (the API's reads go through the run service, which does)."""
    if isinstance(exc, SandboxFileNotFound):
        return NotFound("No such file in the sandbox.", code="file_not_found")
    if isinstance(exc, SandboxNotFound):
        return Conflict("The sandbox is gone.", code="sandbox_lost")
    if isinstance(exc, TransientBackendError):
        return ServiceUnavailable(f"The sandbox backend is unavailable: {exc}")
    return InvalidInput(str(exc), code=exc.code)


def _storage_key(workspace_id: Any, name: str) -> str:
    """artifacts/<workspace>/<random>/<sanitised basename>: never guessable, never only what
    the sandbox chose, and never colliding, so nothing is overwritten."""
    try:
        basename = get_valid_filename(content.printable(name, limit=200))
    except SuspiciousFileOperation:  # nothing usable left of it, e.g. "???"
        basename = ""
    basename = basename[-STORED_NAME_MAX_CHARS:].lstrip(".") or "file"
    return f"artifacts/{workspace_id}/{secrets.token_hex(16)}/{basename}"


@dataclass(frozen=True)
class _Stored:
    key: str
    size: int
    sha256: str
    head: bytes


def _store(*, workspace_id: Any, name: str, chunks: Iterable[bytes]) -> _Stored:
    """Stream `chunks` into the default storage; on any failure, delete what was written."""
    key = _storage_key(workspace_id, name)
    reader = _MeasuringReader(chunks, limit=settings.ARTIFACT_MAX_BYTES)
    # Buffered, so read(n) returns n bytes until the end: s3transfer decides between one PUT
    # and a multipart upload by whether its first read comes back short, and would otherwise
    # read the whole file into memory for a single PUT.
    upload = File(io.BufferedReader(reader, STORE_BUFFER_BYTES), name=posixpath.basename(key))
    upload.DEFAULT_CHUNK_SIZE = STORE_BUFFER_BYTES  # FileSystemStorage writes in these
    # What S3 would serve if anyone fetched the object directly (a presigned URL): never
    # the HTML or SVG the name suggests.
    upload.content_type = content.OCTET_STREAM  # type: ignore[attr-defined]
    try:
        saved = default_storage.save(key, upload)
    except BaseException:
        _delete_quietly(key)
        raise
    finally:
        reader.close()
    return _Stored(
        key=saved, size=reader.size, sha256=reader.digest.hexdigest(), head=bytes(reader.head)
    )


def _delete_quietly(key: str) -> None:
    try:
        default_storage.delete(key)
    except Exception:  # the original error matters more; an orphan costs only space
        logger.exception("could not delete partial artifact object %s", key)


def _create_artifact(
    *,
    run: SandboxRun,
    stored: _Stored,
    name: str,
    sandbox_path: str,
    type: str | None,
    title: str | None,
    content_type: str | None = None,
) -> Artifact:
    content_type = content_type or content.guess_content_type(name, stored.head)
    kind = ArtifactType(type) if type else content.infer_type(name, content_type)
    text_like = content.is_text_type(content_type) or kind in (ArtifactType.CODE, ArtifactType.LOG)
    try:
        with transaction.atomic():
            return Artifact.objects.create(
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
                preview_text=content.preview(stored.head) if text_like else "",
            )
    except BaseException:
        _delete_quietly(stored.key)
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

    Streamed: memory does not grow with the file. 409 unless the run is running, 404 when
    the file does not exist, 400 for a link or anything but a regular file (the backend never
    follows links), 413 past ARTIFACT_MAX_BYTES (nothing is kept)."""
    type = _clean_type(type)
    title = _clean_title(title)
    path = run_services.clean_sandbox_path(path)
    # Through the run service: the run must be running, the call counts as activity, and a
    # sandbox that vanished under a running run fails the run.
    chunks = run_services.run_download_file(
        run=run, actor=actor, path=path, chunk_size=CAPTURE_CHUNK_BYTES
    )
    return _capture_chunks(run=run, actor=actor, path=path, chunks=chunks, type=type, title=title)


def _capture_chunks(
    *,
    run: SandboxRun,
    actor: Actor,
    path: str,
    chunks: Iterable[bytes],
    type: str | None = None,
    title: str | None = None,
) -> Artifact:
    name = posixpath.basename(path)
    stored = _store(workspace_id=run.workspace_id, name=name, chunks=chunks)
    artifact = _create_artifact(
        run=run, stored=stored, name=name, sandbox_path=path, type=type, title=title
    )
    logger.info(
        "artifact captured id=%s run=%s size=%s by=%s", artifact.pk, run.pk, artifact.size, actor
    )
    return artifact


@dataclass
class OutputCapture:
    """What capture_run_outputs kept and what it had to leave behind, and why."""

    captured: list[Artifact] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    incomplete: bool = False  # a bound was reached: more files may exist

    def __str__(self) -> str:
        text = f"{len(self.captured)} captured, {len(self.skipped)} skipped"
        return text + (" (stopped at a bound)" if self.incomplete else "")


def capture_run_outputs(*, run: SandboxRun, result: CommandResult | None) -> OutputCapture:
    """The command job's outputs: a `log` artifact with stdout and stderr (none when there is
    no result, e.g. the sandbox was lost), then every regular file under `run.output_dir`.

    One bad file (too large, a link, vanished) is skipped and reported, never fatal; the walk
    stops at MAX_OUTPUT_FILES files, MAX_OUTPUT_ENTRIES entries or MAX_OUTPUT_DEPTH levels.
    It reads the sandbox directly, never through the run services: the job decides how the
    run ends (a sandbox that timed out with the command is max_duration, not sandbox_lost)."""
    summary = OutputCapture()
    if result is not None:
        try:
            summary.captured.append(_capture_log(run=run, result=result))
        except AirlockError as exc:
            summary.skipped.append(("(command output)", exc.detail))
    try:
        _capture_tree(run=run, summary=summary)
    except AirlockError as exc:
        summary.skipped.append((run.output_dir, exc.detail))
    for path, reason in summary.skipped:
        logger.warning("output not captured run=%s path=%r: %s", run.pk, path, reason)
    logger.info("outputs of run=%s: %s", run.pk, summary)
    return summary


def _log_text(run: SandboxRun, result: CommandResult) -> bytes:
    lines = [
        f"$ {run.command}",
        f"# exit code {result.exit_code}, {result.duration_ms} ms"
        + (", output truncated" if result.truncated else ""),
        "# --- stdout ---",
        result.stdout,
        "# --- stderr ---",
        result.stderr,
    ]
    return "\n".join(lines).encode("utf-8", "replace")


def _capture_log(*, run: SandboxRun, result: CommandResult) -> Artifact:
    data = _log_text(run, result)
    chunks = (data[i : i + 64 * 1024] for i in range(0, len(data), 64 * 1024))
    stored = _store(workspace_id=run.workspace_id, name="command-output.log", chunks=chunks)
    return _create_artifact(
        run=run,
        stored=stored,
        name="command-output.log",
        sandbox_path="",
        type=ArtifactType.LOG,
        title="Command output",
        content_type="text/plain; charset=utf-8",
    )


def _list_dir(run: SandboxRun, path: str) -> list[FileEntry]:
    try:
        return get_backend().list_files(run.sandbox_id, path)
    except BackendError as exc:
        raise _backend_error(exc) from exc


def _capture_output_file(run: SandboxRun, path: str) -> Artifact:
    path = run_services.clean_sandbox_path(path)
    try:
        chunks = get_backend().read_file(run.sandbox_id, path, chunk_size=CAPTURE_CHUNK_BYTES)
    except BackendError as exc:  # read_file raises before its first chunk
        raise _backend_error(exc) from exc
    return _capture_chunks(run=run, actor=SYSTEM_JOB, path=path, chunks=chunks)


def _capture_tree(*, run: SandboxRun, summary: OutputCapture) -> None:
    try:
        root = run_services.clean_sandbox_path(run.output_dir)
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
                    summary.captured.append(_capture_output_file(run, entry.path))
                except Conflict:
                    raise  # the run or its sandbox is gone: nothing more can be read
                except AirlockError as exc:
                    summary.skipped.append((entry.path, exc.detail))


# --- review ----------------------------------------------------------------------------


def _refusal_error(refusal: str) -> AirlockError:
    if refusal == "not_found":
        return NotFound("No such artifact.")
    if refusal == "self_review":
        return PermissionDenied(
            "You started this run; someone else must review its artifacts.", code="self_review"
        )
    return PermissionDenied("Reviewing needs the admin role or higher.")


def artifact_review(
    *, artifact: Artifact, actor: Actor, decision: str, comment: str = ""
) -> Artifact:
    """approve or reject a pending artifact. A reject needs a comment; reviewing needs the
    admin role; self-review is refused unless ALLOW_SELF_REVIEW; a decided artifact is final
    (409, also for the loser of two concurrent reviews)."""
    comment = (comment or "").strip()
    if decision not in ("approve", "reject"):
        raise InvalidInput("decision: approve or reject.", code="invalid_choice")
    if len(comment) > REVIEW_COMMENT_MAX_CHARS or "\x00" in comment:
        raise InvalidInput(
            f"comment: at most {REVIEW_COMMENT_MAX_CHARS} characters, no NUL.", code="invalid"
        )
    if decision == "reject" and not comment:
        raise InvalidInput("A reject needs a comment saying why.", code="comment_required")
    refusal = artifact_review_refusal(
        artifact=artifact, actor=actor, role=artifact_role(actor=actor, artifact=artifact)
    )
    if refusal is not None:
        raise _refusal_error(refusal)
    if artifact.review_state != ReviewState.PENDING:
        raise _already_decided(artifact.review_state)

    change = artifact.approve if decision == "approve" else artifact.reject
    try:
        # No lock: ConcurrentTransitionMixin's save only matches a row still pending, so the
        # second of two concurrent decisions saves nothing and rolls back with its log row.
        with transaction.atomic():
            change(reviewer=actor.user, comment=comment, **_log(actor))
            artifact.save()
    except (TransitionNotAllowed, ConcurrentTransition) as exc:
        artifact.refresh_from_db()
        raise _already_decided(artifact.review_state) from exc
    logger.info("artifact %s id=%s by=%s", artifact.review_state, artifact.pk, actor)
    return artifact


def _already_decided(state: str) -> Conflict:
    return Conflict(f"The artifact is already {state}.", code="already_reviewed")


@dataclass
class BulkReview:
    done: int = 0
    already_decided: int = 0
    refused: list[tuple[Artifact, str]] = field(default_factory=list)  # (artifact, why)


def artifacts_review(
    *, artifacts: Iterable[Artifact], actor: Actor, decision: str, comment: str = ""
) -> BulkReview:
    """artifact_review over many artifacts (admin bulk actions, the review command): each
    one on its own, so one refusal does not stop the others."""
    outcome = BulkReview()
    for artifact in artifacts:
        try:
            artifact_review(artifact=artifact, actor=actor, decision=decision, comment=comment)
            outcome.done += 1
        except Conflict:
            outcome.already_decided += 1
        except InvalidInput:
            raise  # the same for every artifact: the decision or comment itself is wrong
        except AirlockError as exc:
            outcome.refused.append((artifact, exc.detail))
    return outcome


# --- deletion --------------------------------------------------------------------------


def workspace_artifact_files_delete(*, workspace: Workspace) -> None:
    """Delete the stored objects of a workspace's artifacts once the deletion of the workspace
    (which cascades to the rows) commits. Call it inside the transaction that deletes."""
    keys = list(Artifact.objects.filter(workspace=workspace).values_list("file", flat=True))

    def delete() -> None:
        for key in keys:
            _delete_quietly(key)

    transaction.on_commit(delete)
