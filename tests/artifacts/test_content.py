"""artifacts/content.py: what a captured file is, from its name and its first bytes — the sniff,
the content type, the artifact type, the text preview, a printable name — and the only content
types it may be served with. Pure functions: no storage, no database."""

from __future__ import annotations

import pytest

from artifacts import content
from artifacts.models import PREVIEW_MAX_CHARS
from tests.artifacts.conftest import PNG, XSS

GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "

# --- sniffing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "sniffed"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (b"GIF87a" + GIF[6:], "image/gif"),
        (WEBP, "image/webp"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"\x1f\x8b\x08\x00", "application/gzip"),
        (b"\x7fELF\x02\x01", "application/x-executable"),
        (b"PK\x03\x04\x14\x00", "application/zip"),
        (f"<!DOCTYPE html>{XSS}".encode(), "text/html"),
        (b"  \n<HTML><body>", "text/html"),
        (b"<!-- a comment --><script>x()</script>", "text/html"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        (b"<svg onload='x()'/>", "image/svg+xml"),
    ],
)
def test_the_first_bytes_prove_a_format_whatever_the_name(head: bytes, sniffed: str) -> None:
    assert content.sniff(head) == sniffed


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"plain text",
        b"xxxxxxxxWEBP",  # "WEBP" at 8 but not in a RIFF container
        b"<p>a paragraph, not a page</p>",
        b"text first <html>",
        b"<?xml version='1.0'?><feed/>",
    ],
)
def test_bytes_that_prove_nothing_are_not_sniffed(head: bytes) -> None:
    assert content.sniff(head) is None


def test_text_is_bytes_without_nul_and_almost_no_control_characters() -> None:
    assert content.looks_like_text(b"line\n\ttabbed\r\n\x1b[31mred\x1b[0m")
    assert content.looks_like_text("café".encode("latin-1"))  # text, whatever its encoding
    assert not content.looks_like_text(b"a\x00b")
    assert not content.looks_like_text(bytes(range(32)) * 4)


# --- content types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "guessed"),
    [
        pytest.param("chart.png", PNG, "image/png", id="a-proven-image"),
        pytest.param("no-extension", PNG, "image/png", id="sniffed-without-a-name"),
        pytest.param("claims.png", b"not a picture", "application/octet-stream", id="a-false-png"),
        pytest.param("claims.jpg", PNG, "image/png", id="the-bytes-win-over-the-name"),
        pytest.param("page.txt", b"<!DOCTYPE html><p>", "text/html", id="html-named-text"),
        pytest.param("report.docx", b"PK\x03\x04", "application/vnd.openxmlformats-officedocument"
                     ".wordprocessingml.document", id="a-zip-with-a-better-name"),
        pytest.param("bundle.zip", b"PK\x03\x04", "application/zip", id="a-zip"),
        pytest.param("notes.md", b"# Title", "text/markdown", id="markdown"),
        pytest.param("main.py", b"print()", "text/x-python", id="python"),
        pytest.param("config.yaml", b"a: 1", "application/yaml", id="yaml"),
        pytest.param("logo.svg", b"plain", "image/svg+xml", id="svg-by-name"),
        pytest.param("README", b"Read me first.\n", "text/plain", id="unnamed-text"),
        pytest.param("blob", b"\x00\x01\x02", "application/octet-stream", id="unnamed-binary"),
        pytest.param("empty", b"", "application/octet-stream", id="empty"),
    ],
)  # fmt: skip
def test_the_content_type_comes_from_the_sniff_then_the_name(
    name: str, head: bytes, guessed: str
) -> None:
    assert content.guess_content_type(name, head) == guessed


@pytest.mark.parametrize(
    ("content_type", "is_text"),
    [
        ("text/plain", True),
        ("text/csv; charset=utf-8", True),
        ("TEXT/HTML", True),
        ("application/json", True),
        ("application/vnd.api+json", True),
        ("application/atom+xml", True),
        ("image/svg+xml", True),
        ("application/x-sh", True),
        ("image/png", False),
        ("application/pdf", False),
        ("application/octet-stream", False),
    ],
)
def test_which_content_types_are_text(content_type: str, is_text: bool) -> None:
    assert content.is_text_type(content_type) is is_text


# --- artifact types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type", "kind"),
    [
        ("chart.png", "image/png", "image"),
        ("logo.svg", "image/svg+xml", "image"),
        ("build.log", "text/plain", "log"),
        ("stderr.err", "text/plain", "log"),
        ("main.py", "text/x-python", "code"),
        ("app.js", "application/javascript", "code"),
        ("Makefile", "text/plain", "code"),
        ("Dockerfile", "text/plain", "code"),
        ("dir/deep/query.SQL", "application/sql", "code"),
        ("script", "application/javascript", "code"),
        ("report.pdf", "application/pdf", "file"),
        ("data.csv", "text/csv", "file"),
        ("notes.txt", "text/plain", "file"),
        ("blob", "application/octet-stream", "other"),
        ("a.out", "application/x-executable", "log"),  # .out is a log, whatever it holds
        ("tool", "application/x-executable", "other"),
    ],
)
def test_the_artifact_type_is_inferred_from_the_name_and_content_type(
    name: str, content_type: str, kind: str
) -> None:
    assert content.infer_type(name, content_type) == kind


# --- previews --------------------------------------------------------------------------------


def test_a_preview_is_the_start_of_the_text_at_most_its_limit() -> None:
    assert content.preview(b"hello\n") == "hello\n"
    assert content.preview(("é" * (PREVIEW_MAX_CHARS + 10)).encode()) == "é" * PREVIEW_MAX_CHARS


def test_a_preview_never_fails_on_bad_bytes() -> None:
    assert content.preview(b"caf\xe9 ok") == "caf\ufffd ok"  # invalid UTF-8
    assert content.preview("ab€".encode()[:-1]) == "ab"  # a character cut at the end
    assert content.preview(b"a\x00b") == "a\ufffdb"  # NUL: PostgreSQL text cannot hold it


# --- serving ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "served_as"),
    [
        ("image/png", "image/png"),
        ("image/webp", "image/webp"),
        ("application/pdf", "application/pdf"),
        ("application/json", "application/json"),
        ("text/plain", "text/plain; charset=utf-8"),
        ("text/csv; charset=latin-1", "text/csv; charset=utf-8"),
        ("TEXT/MARKDOWN", "text/markdown; charset=utf-8"),
        ("text/html", "application/octet-stream"),
        ("image/svg+xml", "application/octet-stream"),
        ("application/javascript", "application/octet-stream"),
        ("application/xml", "application/octet-stream"),
        ("text/x-python", "application/octet-stream"),
        ("", "application/octet-stream"),
    ],
)
def test_only_allowlisted_types_are_served_as_themselves(content_type: str, served_as: str) -> None:
    assert content.safe_serving_type(content_type) == served_as


def test_only_raster_images_are_inline_images() -> None:
    assert {"image/png", "image/jpeg", "image/gif", "image/webp"} == content.INLINE_IMAGE_TYPES
    assert content.INLINE_IMAGE_TYPES <= content.SERVE_AS_IS
    assert "image/svg+xml" not in content.SERVE_AS_IS


# --- printable names -------------------------------------------------------------------------


def test_a_printable_name_drops_control_and_format_characters() -> None:
    assert content.printable("report\x1b[31m.txt", limit=100) == "report[31m.txt"
    assert content.printable("a\u202eb\u200bc\nd", limit=100) == "abcd"  # RTL override, ZWSP
    assert content.printable("café ✓.txt", limit=100) == "café ✓.txt"


def test_a_printable_name_replaces_undecodable_bytes_and_is_cut_to_its_limit() -> None:
    from_disk = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    assert content.printable(from_disk, limit=100) == "caf\ufffd.txt"
    assert content.printable("x" * 300, limit=255) == "x" * 255
