"""HTTP responses that carry an artifact's bytes, for the API and the admin alike.

Bytes leave as an attachment with nosniff and a content type from an allowlist, so nothing a
sandbox wrote (HTML, SVG, JavaScript) is ever rendered in our origin. The only inline use is
the admin's image preview, and only for raster formats the bytes themselves proved."""

from __future__ import annotations

import logging
import posixpath
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any

from django.core.files.storage import default_storage
from django.http import Http404, StreamingHttpResponse
from django.utils.http import content_disposition_header

from artifacts import content
from artifacts.models import Artifact

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024


class _ClosingChunks:
    """Chunks that close their source when the response is closed, even unread (HEAD)."""

    def __init__(self, chunks: Iterator[bytes], source: Any):
        self._chunks = chunks
        self._source = source

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._source.close()


def _open_chunks(key: str) -> _ClosingChunks:
    """The stored bytes in chunks, opened now so a missing object is a 404, not a response
    that breaks after its headers."""
    # django-storages' S3 file object downloads the whole object before the first read;
    # the S3 body streams instead.
    bucket = getattr(default_storage, "bucket", None)
    if bucket is not None and hasattr(default_storage, "_normalize_name"):
        from botocore.exceptions import ClientError

        try:
            body = bucket.Object(default_storage._normalize_name(key)).get()["Body"]
        except ClientError as exc:
            raise Http404("The artifact's stored file is missing.") from exc
        return _ClosingChunks(body.iter_chunks(CHUNK_BYTES), body)
    try:
        file = default_storage.open(key, "rb")
    except FileNotFoundError as exc:
        raise Http404("The artifact's stored file is missing.") from exc
    return _ClosingChunks(iter(lambda: file.read(CHUNK_BYTES), b""), file)


def _response(artifact: Artifact, content_type: str, disposition: str) -> StreamingHttpResponse:
    if not artifact.file.name:
        raise Http404("The artifact has no stored file.")
    response = StreamingHttpResponse(_open_chunks(artifact.file.name), content_type=content_type)
    response["Content-Length"] = str(artifact.size)
    response["Content-Disposition"] = disposition
    response["X-Content-Type-Options"] = "nosniff"
    # Even if a browser were talked into rendering it: no scripts, no plugins, no framing.
    response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    response["Cache-Control"] = "private, no-store"
    return response


def download_filename(artifact: Artifact) -> str:
    """The stored basename: already sanitised, unlike the title, which is free text."""
    return posixpath.basename(artifact.file.name or "") or "artifact"


def attachment_response(artifact: Artifact) -> StreamingHttpResponse:
    disposition = content_disposition_header(
        as_attachment=True, filename=download_filename(artifact)
    )
    return _response(
        artifact, content.safe_serving_type(artifact.content_type), disposition or "attachment"
    )


def is_inline_image(artifact: Artifact) -> bool:
    return content.base_content_type(artifact.content_type) in content.INLINE_IMAGE_TYPES


def inline_image_response(artifact: Artifact) -> StreamingHttpResponse:
    if not is_inline_image(artifact):
        raise Http404("Only raster images are shown inline.")
    return _response(artifact, content.base_content_type(artifact.content_type), "inline")


# --- a run's artifacts as one zip ------------------------------------------------------


class _Sink:
    """A write-only, unseekable file for zipfile: it holds what zipfile wrote until the
    stream takes it, so at most one chunk and zipfile's own buffers are in memory. zipfile
    then writes each member with a data descriptor (sizes and CRC after the bytes)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _member_name(artifact: Artifact, output_dir: str) -> str:
    """Where the file was in the sandbox, relative to the run's output folder (or the
    sandbox home); the command log by its stored name. Never absolute, never with `..`."""
    path = artifact.sandbox_path or download_filename(artifact)
    for root in (output_dir.rstrip("/") + "/", "/home/user/"):
        if path.startswith(root):
            path = path[len(root) :]
            break
    parts = [content.printable(p, limit=200) for p in path.split("/")]
    return "/".join(p for p in parts if p not in ("", ".", "..")) or "artifact"


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        stem, dot, extension = name.rpartition(".")
        candidate = f"{stem} ({number}).{extension}" if dot and stem else f"{name} ({number})"
    taken.add(candidate)
    return candidate


def archive_chunks(artifacts: Iterable[Artifact], *, output_dir: str) -> Iterator[bytes]:
    """The artifacts as one zip, produced as it is sent: each stored file is read in chunks
    and written through zipfile onto a sink the stream empties after every chunk, so memory
    stays flat whatever the sizes. Text is deflated; everything else (mostly compressed
    already) is stored. A file missing from storage is left out (and logged)."""
    sink = _Sink()
    taken: set[str] = set()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:
        for artifact in artifacts:
            try:
                source = _open_chunks(artifact.file.name)
            except Http404:
                logger.warning("archive: stored file of artifact %s is missing", artifact.pk)
                continue
            info = zipfile.ZipInfo(
                _unique(_member_name(artifact, output_dir), taken),
                date_time=artifact.created_at.timetuple()[:6],
            )
            text = content.is_text_type(artifact.content_type)
            info.compress_type = zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED
            info.file_size = artifact.size  # zipfile decides on ZIP64 from it
            try:
                with archive.open(info, "w") as member:
                    for chunk in source:
                        member.write(chunk)
                        if data := sink.take():
                            yield data
            finally:
                source.close()
    yield sink.take()
