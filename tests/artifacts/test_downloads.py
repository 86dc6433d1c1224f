"""artifacts/downloads.py: the responses that carry an artifact's bytes, for the API and the
admin — always an attachment with nosniff and an allowlisted type, named after the stored file
(never the free-text title), streamed, and a 404 when the bytes are missing; inline only for
raster images the bytes themselves proved."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from django.core.files.storage import default_storage
from django.http import Http404, StreamingHttpResponse

from artifacts import downloads
from artifacts.models import Artifact
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import PNG, XSS, make_artifact
from tests.conftest import streamed

pytestmark = pytest.mark.django_db


def _chunks(response: StreamingHttpResponse) -> list[bytes]:
    """What the response streams, read to the end; then closed, as the server would."""
    try:
        return list(cast("Iterator[bytes]", response.streaming_content))
    finally:
        response.close()


@pytest.mark.parametrize(
    ("title", "data", "served_as"),
    [
        ("page.html", f"<html>{XSS}</html>".encode(), "application/octet-stream"),
        ("img.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
         "application/octet-stream"),
        ("app.js", XSS.encode(), "application/octet-stream"),
        ("feed.xml", b"<?xml version='1.0'?><a/>", "application/octet-stream"),
        ("disguised.txt", f"<!doctype html>{XSS}".encode(), "application/octet-stream"),
        ("notes.txt", b"plain", "text/plain; charset=utf-8"),
        ("chart.png", PNG, "image/png"),
    ],
)  # fmt: skip
def test_bytes_are_always_an_attachment_with_nosniff_and_a_safe_type(
    run: SandboxRun, title: str, data: bytes, served_as: str
) -> None:
    artifact = make_artifact(run, title=title, data=data)

    response = downloads.attachment_response(artifact)

    assert response.status_code == 200
    assert response["Content-Type"] == served_as
    assert response["Content-Disposition"].startswith("attachment; filename=")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Length"] == str(len(data))
    assert streamed(response) == data


def test_even_a_rendered_download_could_run_nothing(run: SandboxRun) -> None:
    response = downloads.attachment_response(make_artifact(run))
    assert response["Content-Security-Policy"] == "default-src 'none'; img-src 'self'; sandbox"
    assert response["Cache-Control"] == "private, no-store"
    response.close()


def test_the_download_is_named_after_the_stored_file_never_the_title(run: SandboxRun) -> None:
    artifact = make_artifact(run, title="a.txt")
    Artifact.objects.filter(pk=artifact.pk).update(title='x"\r\nSet-Cookie: a=b; <script>')
    artifact.refresh_from_db()

    response = downloads.attachment_response(artifact)

    assert downloads.download_filename(artifact) == "a.txt"
    assert response["Content-Disposition"] == 'attachment; filename="a.txt"'
    assert "Set-Cookie" not in response
    response.close()


def test_a_name_that_is_not_ascii_is_sent_the_rfc_5987_way(run: SandboxRun) -> None:
    artifact = make_artifact(run, title="rapport-été.txt")
    response = downloads.attachment_response(artifact)
    assert response["Content-Disposition"] == (
        "attachment; filename*=utf-8''rapport-%C3%A9t%C3%A9.txt"
    )
    response.close()


def test_large_bytes_stream_in_chunks(run: SandboxRun) -> None:
    data = bytes(range(256)) * (2 * downloads.CHUNK_BYTES // 256 + 7)
    response = downloads.attachment_response(make_artifact(run, title="big.bin", data=data))
    chunks = _chunks(response)
    assert b"".join(chunks) == data
    assert len(chunks) == 3
    assert max(len(chunk) for chunk in chunks) == downloads.CHUNK_BYTES


def test_missing_bytes_are_a_404_before_any_header_is_sent(run: SandboxRun) -> None:
    gone = make_artifact(run)
    default_storage.delete(gone.file.name)
    with pytest.raises(Http404):
        downloads.attachment_response(gone)

    never_stored = make_artifact(run)
    Artifact.objects.filter(pk=never_stored.pk).update(file="")
    never_stored.refresh_from_db()
    with pytest.raises(Http404):
        downloads.attachment_response(never_stored)
    assert downloads.download_filename(never_stored) == "artifact"


def test_a_proven_raster_image_is_shown_inline(run: SandboxRun) -> None:
    image = make_artifact(run, title="chart.png", data=PNG)
    assert downloads.is_inline_image(image)

    response = downloads.inline_image_response(image)

    assert (response["Content-Type"], response["Content-Disposition"]) == ("image/png", "inline")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert streamed(response) == PNG


@pytest.mark.parametrize(
    ("title", "data"),
    [
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="x()"/>'),
        ("claims.png", b"not a picture"),  # the name says image, the bytes do not
        ("page.html", b"<html></html>"),
        ("notes.txt", b"text"),
    ],
)
def test_nothing_else_is_shown_inline(run: SandboxRun, title: str, data: bytes) -> None:
    artifact = make_artifact(run, title=title, data=data)
    assert not downloads.is_inline_image(artifact)
    with pytest.raises(Http404):
        downloads.inline_image_response(artifact)


def test_a_response_closed_unread_closes_its_file(run: SandboxRun, monkeypatch: Any) -> None:
    # A HEAD request, or a client that goes away: the stored file must not stay open.
    opened: list[Any] = []
    real_open = default_storage.open

    def remembering_open(name: str, mode: str = "rb") -> Any:
        file = real_open(name, mode)
        opened.append(file)
        return file

    monkeypatch.setattr(default_storage, "open", remembering_open)
    response = downloads.attachment_response(make_artifact(run))
    assert [file.closed for file in opened] == [False]
    response.close()
    assert [file.closed for file in opened] == [True]
