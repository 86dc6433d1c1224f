"""HTTP responses that carry an artifact's bytes, for the API and the admin alike.

Bytes leave as an attachment with nosniff and a content type from an allowlist, so nothing a
sandbox wrote (HTML, SVG, JavaScript) is ever rendered in our origin. The only inline use is
the admin's image preview, and only for raster formats the bytes themselves proved."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from django.core.files.storage import default_storage
from django.http import Http404, StreamingHttpResponse
from django.utils.http import content_disposition_header

from artifacts import content
from artifacts.models import Artifact

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
