"""What a captured file is: its content type (name + a sniff of its first bytes), its artifact
type, its text preview, and the content type it may safely be served with.

Pure functions over a name and the first bytes; nothing here touches storage or the database.
"""

from __future__ import annotations

import codecs
import mimetypes
import posixpath
import re
import unicodedata

from artifacts.models import PREVIEW_MAX_CHARS, ArtifactType

SNIFF_BYTES = 8192
OCTET_STREAM = "application/octet-stream"

# Signatures that identify a format whatever the file is called.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # after "RIFF" + 4 length bytes
    (b"%PDF-", 0, "application/pdf"),
    (b"\x1f\x8b", 0, "application/gzip"),
    (b"\x7fELF", 0, "application/x-executable"),
    (b"PK\x03\x04", 0, "application/zip"),
)
# Markup a browser would run as a page (HTML, or SVG with its scripts), however it is named.
_MARKUP = re.compile(
    rb"^\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*"
    rb"<(!doctype\s+html|html|head|body|script|svg)\b",
    re.IGNORECASE | re.DOTALL,
)

# Raster formats a browser renders without running anything: the only ones shown inline,
# and only when the bytes themselves say so (the content type came from the sniff).
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

# Served with their own content type. Everything else (HTML, SVG, XML, JavaScript, unknown)
# leaves as application/octet-stream, so no browser ever renders it in our origin.
SERVE_AS_IS = frozenset(
    {
        *INLINE_IMAGE_TYPES,
        "text/plain",
        "text/csv",
        "text/markdown",
        "application/json",
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-tar",
    }
)

_TEXT_APPLICATION_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/x-sh",
        "application/x-python-code",
        "application/sql",
        "application/toml",
        "application/yaml",
        "application/x-yaml",
        "image/svg+xml",
    }
)

_CODE_EXTENSIONS = frozenset(
    {
        "bash", "c", "cc", "cfg", "clj", "conf", "cpp", "cs", "css", "cxx", "dart",
        "dockerfile", "erl", "ex", "exs", "fs", "go", "gradle", "h", "hcl", "hpp", "hs", "htm",
        "html", "ini", "ipynb", "java", "jl", "js", "jsx", "kt", "kts", "lua", "m", "makefile",
        "mjs", "ml", "nim", "php", "pl", "pm", "py", "r", "rb", "rs", "scala", "sh", "sql",
        "svelte", "swift", "tf", "toml", "ts", "tsx", "vue", "xml", "xsl", "yaml", "yml",
        "zig", "zsh",
    }
)  # fmt: skip
_LOG_EXTENSIONS = frozenset({"log", "out", "err"})

# Types mimetypes does not know everywhere (it reads the host's /etc/mime.types).
_EXTRA_TYPES = {
    ".md": "text/markdown",
    ".log": "text/plain",
    ".py": "text/x-python",
    ".ts": "text/x-typescript",
    ".toml": "application/toml",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".webp": "image/webp",
    ".ipynb": "application/json",
}


def base_content_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def sniff(head: bytes) -> str | None:
    """The format the first bytes prove, or None."""
    for signature, offset, content_type in _MAGIC:
        if head[offset : offset + len(signature)] == signature:
            if content_type == "image/webp" and not head.startswith(b"RIFF"):
                continue
            return content_type
    match = _MARKUP.match(head[:1024])
    if match:
        return "image/svg+xml" if match.group(1).lower() == b"svg" else "text/html"
    return None


def looks_like_text(head: bytes) -> bool:
    """No NUL and almost no control characters: text, whatever its encoding."""
    if b"\x00" in head:
        return False
    controls = sum(1 for byte in head if byte < 32 and byte not in b"\t\n\r\f\b\x1b")
    return controls <= len(head) // 100


def guess_content_type(name: str, head: bytes) -> str:
    """The content type from the sniff first, then the name; a name that claims a raster image
    the bytes do not prove is not believed."""
    sniffed = sniff(head)
    extension = posixpath.splitext(name.lower())[1]
    guessed = _EXTRA_TYPES.get(extension) or mimetypes.guess_type(name, strict=False)[0]
    if sniffed is not None:
        if sniffed == "application/zip" and guessed and guessed != sniffed:
            return guessed  # docx, xlsx, jar, … are zip files with a more useful name
        return sniffed
    if guessed is not None and guessed.startswith("image/") and guessed != "image/svg+xml":
        return OCTET_STREAM
    if guessed is not None:
        return guessed
    if head and looks_like_text(head):
        return "text/plain"
    return OCTET_STREAM


def is_text_type(content_type: str) -> bool:
    base = base_content_type(content_type)
    return (
        base.startswith("text/")
        or base in _TEXT_APPLICATION_TYPES
        or base.endswith(("+json", "+xml"))
    )


def infer_type(name: str, content_type: str) -> ArtifactType:
    base = base_content_type(content_type)
    stem, extension = posixpath.splitext(posixpath.basename(name).lower())
    extension = extension.lstrip(".") or stem  # Makefile, Dockerfile
    if base.startswith("image/"):
        return ArtifactType.IMAGE
    if extension in _LOG_EXTENSIONS:
        return ArtifactType.LOG
    if extension in _CODE_EXTENSIONS or base in {"text/x-python", "application/javascript"}:
        return ArtifactType.CODE
    if base in (OCTET_STREAM, "application/x-executable"):
        return ArtifactType.OTHER  # bytes nothing recognised
    return ArtifactType.FILE


def preview(head: bytes) -> str:
    """Up to PREVIEW_MAX_CHARS characters of the start of a text file, never failing on bad
    bytes: invalid UTF-8 becomes U+FFFD, a character cut at the end of `head` is dropped, and
    NUL (which PostgreSQL text cannot hold) is replaced."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(head[: PREVIEW_MAX_CHARS * 4], final=False)[:PREVIEW_MAX_CHARS]
    return text.replace("\x00", "\ufffd")


def safe_serving_type(content_type: str) -> str:
    base = base_content_type(content_type)
    if base not in SERVE_AS_IS:
        return OCTET_STREAM
    return f"{base}; charset=utf-8" if base.startswith("text/") else base


def printable(value: str, *, limit: int) -> str:
    """A file name fit to show and store: undecodable bytes (surrogate escapes from the
    file system) become U+FFFD, control and format characters are dropped."""
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    value = "".join(ch for ch in value if unicodedata.category(ch)[0] != "C")
    return value[:limit]
