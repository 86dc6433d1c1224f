"""Artifact bytes in and out of the default storage (the filesystem or S3): streamed, hashed
and measured on the way in, never more than a few chunks in memory; a failed write deletes what
it stored."""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import queue
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import default_storage
from django.utils.text import get_valid_filename

from artifacts import content
from artifacts.models import Artifact
from config.exceptions import TooLarge
from sandboxes.backends import BackendError
from sandboxes.execution import as_api_error
from workspaces.access import Actor
from workspaces.models import Workspace

logger = logging.getLogger(__name__)

STORED_NAME_MAX_CHARS = 100
STORE_BUFFER_BYTES = 1024 * 1024


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

    def __init__(
        self,
        chunks: Iterable[bytes],
        *,
        limit: int,
        observer: Callable[[bytes], None] | None = None,
    ):
        super().__init__()
        self._chunks: Iterator[bytes] = iter(chunks)
        self._observer = observer
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
                raise as_api_error(exc) from exc
            if not chunk:
                continue
            if self.size + len(chunk) > self._limit:
                raise TooLarge(
                    f"The file is larger than ARTIFACT_MAX_BYTES ({self._limit} bytes).",
                    code="artifact_too_large",
                )
            self.size += len(chunk)
            self.digest.update(chunk)
            if self._observer is not None:
                self._observer(chunk)  # the risk signals, computed on the same single pass
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
class Stored:
    key: str
    size: int
    sha256: str
    head: bytes


def store(
    *,
    workspace_id: Any,
    name: str,
    chunks: Iterable[bytes],
    observer: Callable[[bytes], None] | None = None,
) -> Stored:
    """Stream `chunks` into the default storage; on any failure, delete what was written.
    `observer` sees every chunk on the way (artifacts.risk.SignalScanner.feed)."""
    key = _storage_key(workspace_id, name)
    reader = _MeasuringReader(chunks, limit=settings.ARTIFACT_MAX_BYTES, observer=observer)
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
        delete_quietly(key)
        raise
    finally:
        reader.close()
    return Stored(
        key=saved, size=reader.size, sha256=reader.digest.hexdigest(), head=bytes(reader.head)
    )


def delete_quietly(key: str) -> None:
    try:
        default_storage.delete(key)
    except Exception:  # the original error matters more; an orphan costs only space
        logger.exception("could not delete partial artifact object %s", key)


def workspace_files_delete(workspace: Workspace, actor: Actor) -> Callable[[], None]:
    """A workspace delete hook (registered in ArtifactsConfig.ready): the stored objects of
    the workspace's artifacts, deleted once the deletion of the rows commits."""
    keys = list(Artifact.objects.filter(workspace=workspace).values_list("file", flat=True))

    def delete() -> None:
        for key in keys:
            delete_quietly(key)

    return delete
