"""Risk signals (SPEC §13): what a reviewer should know about a file before approving it,
computed while the capture streams the bytes into storage — the file is read once.

    scanner = SignalScanner(name="report.txt", mode=0o644)
    for chunk in chunks: scanner.feed(chunk)      # storage calls this for every chunk
    signals = scanner.finish(size=…, head=…, content_type=…)

Codes: `secret` (detect-secrets' plugins and filters over text lines), `active_content`
(HTML/SVG/XML with scripts or event handlers, JavaScript), `executable` (ELF, PE, Mach-O, a
shebang script with its exec bit), `archive` (zip/tar: members, absolute or `..` names, links,
nesting), `binary`, `large`. A signal names a kind and a line, never the secret: the values
found are kept in memory only until the preview is redacted (`redact`).

Speed. detect-secrets costs ~30 µs per line and plugin set; scanning every line would cost
seconds per 10 MiB. Lines are first filtered with a few C-speed passes over the bytes (the
anchors every default plugin needs: one of its keywords, or a run of token characters at
least MIN_TOKEN_RUN long, or a URL with credentials, or a private key header); only those
lines reach the plugins. At most MAX_CANDIDATE_LINES do; past that the scan says it stopped.
"""

from __future__ import annotations

import io
import posixpath
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.filters import heuristic
from detect_secrets.plugins.base import BasePlugin
from detect_secrets.plugins.ip_public import IPPublicDetector
from detect_secrets.plugins.keyword import KeywordDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.util.code_snippet import get_code_snippet
from detect_secrets.util.filetype import FileType, determine_file_type
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from artifacts import content

Severity = Literal["high", "warning", "info"]
SEVERITY_RANK: dict[str, int] = {"high": 3, "warning": 2, "info": 1}
CODES = ("secret", "active_content", "executable", "archive", "binary", "large")
# Signals that keep a file from ever being approved by a policy rule (SPEC §13).
BLOCKS_AUTO_APPROVE = frozenset({"secret", "active_content"})

MIN_TOKEN_RUN = 20  # AWS key ids are 20; base64 over detect-secrets' entropy limit needs ≥ 23
MAX_CANDIDATE_LINES = 20_000
MAX_LINE_BYTES = 64 * 1024  # longer "lines" (minified code) are scanned in pieces
MAX_SECRET_SIGNALS = 20
MAX_ARCHIVE_NAMES_SHOWN = 5
ARCHIVE_TAIL_BYTES = 1024 * 1024  # the end of a zip kept for its central directory
TAR_HEADER_LIMIT = 100_000  # members looked at in a tar
TAR_GZIP_INFLATE_LIMIT = 256 * 1024 * 1024  # bytes of a .tar.gz inflated to list it
MARKUP_OVERLAP = 64

NESTED_ARCHIVE_SUFFIXES = (
    ".zip",
    ".jar",
    ".war",
    ".whl",
    ".apk",
    ".tar",
    ".tgz",
    ".tar.gz",
    ".gz",
    ".bz2",
    ".xz",
    ".zst",
    ".7z",
    ".rar",
)
_TEXT_KEYWORDS = (b"pass", b"pwd", b"secret", b"key", b"contrase")
KEYWORDS, TOKENS = 1, 2  # which plugins a candidate line goes to
_TOKEN_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-")
_TOKEN_TABLE = bytes(0x74 if byte in _TOKEN_CHARS else 0x20 for byte in range(256))
_TOKEN_RUN = b"t" * MIN_TOKEN_RUN
_MARKUP_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "application/xml", "text/xml"}
)
_SCRIPT_TYPES = frozenset({"application/javascript", "application/x-javascript", "text/javascript"})
_SCRIPT_EXTENSIONS = (".js", ".mjs", ".cjs", ".jsx")
# Script elements, event handler attributes, javascript: URLs: what makes markup run code.
_ACTIVE_MARKUP = re.compile(
    rb"<script\b|\son[a-z]{3,30}\s*=|(?:href|src|action)\s*=\s*[\"']?\s*javascript:",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Signal:
    code: str
    severity: Severity
    message: str
    line: int | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
        }
        if self.line is not None:
            data["line"] = self.line
        return data


def highest_severity(signals: Iterable[dict[str, Any]]) -> str:
    """The most severe of stored signals ("" for none)."""
    best = ""
    for signal in signals:
        if SEVERITY_RANK.get(signal["severity"], 0) > SEVERITY_RANK.get(best, 0):
            best = signal["severity"]
    return best


def blocks_auto_approve(signals: Iterable[dict[str, Any]]) -> str | None:
    """The code of the first signal that keeps a policy from approving the file, or None."""
    return next((s["code"] for s in signals if s["code"] in BLOCKS_AUTO_APPROVE), None)


# --- secrets: detect-secrets' plugins and filters -----------------------------------------


@cache
def _plugins() -> tuple[BasePlugin, ...]:
    """Every detect-secrets plugin with its defaults, made once. Not the public-IP detector:
    an address in a log is not a credential, and it would flag most logs. Nothing here
    verifies a secret over the network (detect-secrets only does with a filter we never
    enable)."""
    classes: Iterable[type[BasePlugin]] = get_mapping_from_secret_type_to_class().values()
    return tuple(cls() for cls in classes if cls is not IPPublicDetector)


def _filtered_out(secret: str, line: str, plugin: BasePlugin) -> bool:
    """detect-secrets' default heuristic filters on a found value. Not its allowlist pragma
    (`# pragma: allowlist secret`): a sandbox must not be able to hide a secret by asking,
    and not its file-name filters (lock files, swagger): the sandbox chose the name."""
    return bool(
        heuristic.is_sequential_string(secret)
        or heuristic.is_potential_uuid(secret)
        or heuristic.is_likely_id_string(secret, line, plugin)
        or heuristic.is_templated_secret(secret)
        or heuristic.is_prefixed_with_dollar_sign(secret)
        or heuristic.is_indirect_reference(line)
        or heuristic.is_not_alphanumeric_string(secret)
    )


def _scan_name(name: str) -> str:
    """The file name detect-secrets' keyword rules are chosen by. A file type it does not
    know (.env, .txt, .log, no extension) gets its config-file rules, which accept unquoted
    `NAME=value`: agent output is mostly such files, and quoted-only rules would miss
    `AWS_SECRET_ACCESS_KEY=…`."""
    return name if determine_file_type(name) != FileType.OTHER else f"{name}.conf"


@dataclass(frozen=True)
class FoundSecret:
    kind: str  # detect-secrets' secret_type, e.g. "AWS Access Key"
    line: int
    value: str  # kept in memory for the redaction only; never stored


@cache
def _plugins_for(kinds: int) -> tuple[BasePlugin, ...]:
    """The keyword and private key detectors for KEYWORDS lines, the others for TOKENS."""
    keyword_plugins = (KeywordDetector, PrivateKeyDetector)
    return tuple(
        plugin
        for plugin in _plugins()
        if (kinds & KEYWORDS and isinstance(plugin, keyword_plugins))
        or (kinds & TOKENS and not isinstance(plugin, keyword_plugins))
    )


def scan_line(
    line: str, line_number: int, *, name: str, kinds: int = KEYWORDS | TOKENS
) -> list[FoundSecret]:
    """The secrets detect-secrets' plugins find on one line (after its filters)."""
    found = []
    context = get_code_snippet([line], 1)
    for plugin in _plugins_for(kinds):
        for potential in plugin.analyze_line(
            filename=name, line=line, line_number=line_number, context=context
        ):
            value = potential.secret_value or ""
            if value and not _filtered_out(value, line, plugin):
                found.append(FoundSecret(potential.type, line_number, value))
    return found


_KEY_PREFIXES = (
    b"api",
    b"auth",
    b"service",
    b"account",
    b"db",
    b"database",
    b"priv",
    b"private",
    b"client",
)
_NOT_DIGITS = bytes(byte for byte in range(256) if not 48 <= byte <= 57)


def _secret_shaped(block: bytes, run: bytes, line_start: int) -> bool:
    """Whether a long run of token characters can be what a token plugin finds. Every
    provider format and base64 over the entropy limit mixes an upper-case letter with
    lower-case letters or digits; a run of only lower-case letters and digits (a URL path,
    a hash in a log) can only be a quoted hex string (HexHighEntropyString needs the
    quotes) or a Mailchimp key (`…-us6`). Anything else is an identifier or a path."""
    digits = bool(run.translate(None, _NOT_DIGITS))
    if run.lower() != run:  # an upper-case letter
        return digits or run.upper() != run
    if not digits:
        return False
    line_end = block.find(b"\n", line_start)
    line = block[line_start : len(block) if line_end == -1 else line_end]
    return b"-us" in run or b'"' in line or b"'" in line


def _keyword_hit(lowered: bytes, at: int, anchor: bytes) -> bool:
    """Whether an anchor occurrence can be what KeywordDetector or PrivateKeyDetector look
    for: "key" only as one of the keyword list's `<prefix>_?key` / `key_?pass`, or in a
    private key header (`PRIVATE KEY`, PuTTY's `User-Key`)."""
    if anchor != b"key":
        return True
    before = lowered[max(0, at - 9) : at]
    if before.endswith((b"private ", b"user-")) or lowered.startswith((b"_pass", b"pass"), at + 3):
        return True
    return before.rstrip(b"_").endswith(_KEY_PREFIXES)


def _candidates(block: bytes) -> dict[int, int]:
    """Offsets in `block` of the lines that could hold a secret any plugin finds, and which
    plugins to ask (KEYWORDS, TOKENS or both), found fast: one pass to lower-case, one per
    anchor word, one to map token characters and one to find their long runs (a run of
    lower-case letters, `_` and `-` alone is an identifier, never over the entropy limits
    or a provider's token format). Every other line is never looked at by the plugins."""
    hits: dict[int, int] = {}
    lowered = block.lower()
    for anchor in _TEXT_KEYWORDS:
        at = lowered.find(anchor)
        while at != -1:
            start = block.rfind(b"\n", 0, at) + 1
            if _keyword_hit(lowered, at, anchor):
                hits[start] = hits.get(start, 0) | KEYWORDS
            at = lowered.find(anchor, at + len(anchor))
    at = lowered.find(b"://")
    while at != -1:  # credentials in a URL: scheme://user:password@host
        end = block.find(b"\n", at)
        if block.find(b"@", at, len(block) if end == -1 else end) != -1:
            start = block.rfind(b"\n", 0, at) + 1
            hits[start] = hits.get(start, 0) | TOKENS
        at = lowered.find(b"://", at + 3)
    tokens = block.translate(_TOKEN_TABLE)
    at = tokens.find(_TOKEN_RUN)
    while at != -1:
        run_end = tokens.find(b" ", at)
        run_end = len(block) if run_end == -1 else run_end
        start = block.rfind(b"\n", 0, at) + 1
        if _secret_shaped(block, block[at:run_end], start):
            hits[start] = hits.get(start, 0) | TOKENS
        at = tokens.find(_TOKEN_RUN, run_end)
    return dict(sorted(hits.items()))


class _SecretScan:
    """Lines of a text stream through the prefilter and detect-secrets, chunk by chunk; a
    line cut by a chunk boundary waits for the rest of it (up to MAX_LINE_BYTES)."""

    def __init__(self, name: str):
        self.name = _scan_name(name)
        self.found: list[FoundSecret] = []
        self.lines_before = 0  # newlines in everything already scanned
        self.checked = 0
        self.stopped_at_line: int | None = None
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        if self.stopped_at_line is not None:
            return
        data = self._carry + chunk if self._carry else chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) <= MAX_LINE_BYTES:
            self._carry = data
            return
        if cut == 0:
            cut = len(data)
        self._carry = data[cut:]
        self._scan_block(data[:cut])

    def finish(self) -> None:
        if self._carry and self.stopped_at_line is None:
            self._scan_block(self._carry)
        self._carry = b""

    def _scan_block(self, block: bytes) -> None:
        counted_to, line_number = 0, self.lines_before + 1
        for start, kinds in _candidates(block).items():
            line_number += block.count(b"\n", counted_to, start)
            counted_to = start
            if self.checked >= MAX_CANDIDATE_LINES:
                self.stopped_at_line = line_number
                return
            self.checked += 1
            end = block.find(b"\n", start)
            raw = block[start : len(block) if end == -1 else end]
            line = raw.decode("utf-8", "replace").rstrip()
            self.found.extend(scan_line(line, line_number, name=self.name, kinds=kinds))
        self.lines_before += block.count(b"\n")

    def signals(self) -> list[Signal]:
        by_line: dict[tuple[str, int], None] = {}
        for secret in self.found:
            by_line.setdefault((secret.kind, secret.line), None)
        signals = [
            Signal("secret", "high", f"{kind} on line {line}", line)
            for kind, line in list(by_line)[:MAX_SECRET_SIGNALS]
        ]
        if len(by_line) > MAX_SECRET_SIGNALS:
            more = len(by_line) - MAX_SECRET_SIGNALS
            signals.append(Signal("secret", "high", f"… and {more} more possible secrets"))
        if self.stopped_at_line is not None:
            signals.append(
                Signal(
                    "secret",
                    "warning",
                    f"Secret scan incomplete: it checks at most {MAX_CANDIDATE_LINES:,} "
                    f"suspicious lines and stopped at line {self.stopped_at_line:,}; the rest "
                    "of the file was not checked.",
                    self.stopped_at_line,
                )
            )
        return signals


def redact(text: str, secrets: Iterable[FoundSecret]) -> str:
    """`text` with every value found replaced by its kind, and private key blocks blanked
    from their header to their end marker (detect-secrets finds the header only)."""
    found = list(secrets)
    if any(s.kind == PrivateKeyDetector.secret_type for s in found):
        text = _PRIVATE_KEY_BLOCK.sub("[private key removed]", text)
    for secret in sorted(found, key=lambda s: len(s.value), reverse=True):
        if len(secret.value) >= 4:  # too short to mean anything alone; the line is flagged
            text = text.replace(secret.value, f"[{secret.kind} removed]")
    return text


_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----.*?"
    r"(?:-----END[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\Z)|PuTTY-User-Key-File-\d.*\Z",
    re.DOTALL,
)


def redact_text(text: str, *, name: str = "output.log") -> str:
    """Any text shown in the console that a sandbox wrote (a command's output excerpt),
    scanned and redacted the same way as a file's preview."""
    scan = _SecretScan(name)
    scan.feed(text.encode("utf-8", "replace"))
    scan.finish()
    return redact(text, scan.found) if scan.found else text


# --- archives --------------------------------------------------------------------------


@dataclass
class _Members:
    """What an archive's listing says, whatever the format."""

    count: int = 0
    unsafe: list[str] = field(default_factory=list)  # absolute or with a `..` part
    links: list[str] = field(default_factory=list)
    nested: list[str] = field(default_factory=list)
    unpacked: int = 0
    complete: bool = True

    def add(self, name: str, *, is_link: bool = False, size: int = 0) -> None:
        self.count += 1
        self.unpacked += max(size, 0)
        clean = name.replace("\\", "/")
        if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean) or ".." in clean.split("/"):
            self.unsafe.append(name)
        if is_link:
            self.links.append(name)
        if clean.lower().endswith(NESTED_ARCHIVE_SUFFIXES):
            self.nested.append(name)

    def signals(self, kind: str, size: int) -> list[Signal]:
        def shown(names: list[str]) -> str:
            listed = ", ".join(repr(content.printable(n, limit=120)) for n in names[:5])
            return listed + (f" and {len(names) - 5} more" if len(names) > 5 else "")

        expands = f", {filesizeformat(self.unpacked)} unpacked" if self.unpacked else ""
        more = "" if self.complete else " (listing stopped early)"
        signals = [Signal("archive", "info", f"{kind}: {self.count:,} members{expands}{more}")]
        if self.unsafe:
            signals.append(
                Signal(
                    "archive",
                    "high",
                    f"{len(self.unsafe)} member names are absolute or contain '..' and "
                    f"would be written outside the folder it is unpacked in: {shown(self.unsafe)}",
                )
            )
        if self.links:
            signals.append(
                Signal(
                    "archive",
                    "high",
                    f"{len(self.links)} members are links, which can point anywhere once "
                    f"unpacked: {shown(self.links)}",
                )
            )
        if self.nested:
            signals.append(
                Signal(
                    "archive",
                    "warning",
                    f"{len(self.nested)} members are archives themselves (not inspected): "
                    f"{shown(self.nested)}",
                )
            )
        if size and self.unpacked > 100 * size and self.unpacked > 1024**3:
            signals.append(
                Signal(
                    "archive",
                    "high",
                    f"Unpacks to {filesizeformat(self.unpacked)} from "
                    f"{filesizeformat(size)}: a decompression bomb?",
                )
            )
        return signals


class _Tail(io.RawIOBase):
    """The last bytes of a stream as a read-only file whose offsets are the stream's: what
    zipfile needs to read a central directory that lies in those bytes."""

    def __init__(self, data: bytes, size: int):
        super().__init__()
        self._data, self._start, self._pos = data, size - len(data), size - len(data)
        self._size = size

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos < self._start:
            raise OSError("before the kept tail")
        piece = self._data[self._pos - self._start : self._pos - self._start + len(buffer)]
        buffer[: len(piece)] = piece
        self._pos += len(piece)
        return len(piece)


def _zip_signals(tail: bytes, size: int) -> list[Signal]:
    members = _Members()
    try:
        with zipfile.ZipFile(io.BufferedReader(_Tail(tail, size))) as archive:
            for info in archive.infolist():
                mode = info.external_attr >> 16
                members.add(info.filename, is_link=stat.S_ISLNK(mode), size=info.file_size)
    except (zipfile.BadZipFile, OSError, ValueError, struct.error, EOFError):
        return [
            Signal(
                "archive",
                "warning",
                "zip archive whose listing could not be read (damaged, or its directory is "
                f"larger than the {filesizeformat(ARCHIVE_TAIL_BYTES)} inspected)",
            )
        ]
    return members.signals("zip archive", size)


class _TarListing:
    """tar headers as the stream passes: each 512-byte header, its data skipped, GNU long
    names and pax paths read. The stream may be gzip-compressed (inflated as it comes,
    up to TAR_GZIP_INFLATE_LIMIT)."""

    def __init__(self, *, gzipped: bool):
        self.members = _Members()
        self._inflate = zlib.decompressobj(wbits=31) if gzipped else None
        self._inflated = 0
        self._buffer = bytearray()
        self._skip = 0  # data bytes of the current member still to pass
        self._long_name: str | None = None
        self._collect: tuple[bytes, int] | None = None  # (type, size) of a name block
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        if self._inflate is not None:
            try:
                chunk = self._inflate.decompress(chunk, TAR_GZIP_INFLATE_LIMIT)
            except zlib.error:
                self.done, self.members.complete = True, False
                return
            self._inflated += len(chunk)
            if self._inflated >= TAR_GZIP_INFLATE_LIMIT:
                self.done, self.members.complete = True, False
        self._walk(memoryview(chunk))

    def _walk(self, data: memoryview) -> None:
        while data:
            if self._skip:
                step = min(self._skip, len(data))
                if self._collect is not None:
                    self._buffer += data[:step]
                self._skip -= step
                data = data[step:]
                if not self._skip and self._collect is not None:
                    self._finish_name_block()
                continue
            need = 512 - len(self._buffer)
            self._buffer += data[:need]
            data = data[need:]
            if len(self._buffer) == 512:
                header, self._buffer = bytes(self._buffer), bytearray()
                self._header(header)
                if self.done:
                    return

    def _header(self, block: bytes) -> None:
        if block == b"\0" * 512:
            return  # end-of-archive marker (two of them) or padding
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            self.done, self.members.complete = True, False
            return
        padded = (info.size + 511) // 512 * 512
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE) and info.size <= 65536:
            self._collect, self._skip = (info.type, info.size), padded
            return
        self._skip = padded
        name = self._long_name or info.name
        self._long_name = None
        self.members.add(name, is_link=info.issym() or info.islnk(), size=info.size)
        if self.members.count >= TAR_HEADER_LIMIT:
            self.done, self.members.complete = True, False

    def _finish_name_block(self) -> None:
        assert self._collect is not None
        kind, size = self._collect
        data, self._buffer, self._collect = bytes(self._buffer[:size]), bytearray(), None
        if kind == tarfile.GNUTYPE_LONGNAME:
            self._long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            return
        for record in data.split(b"\n"):  # pax: "<len> key=value"
            key, _, value = record.partition(b" ")[2].partition(b"=")
            if key == b"path":
                self._long_name = value.decode("utf-8", "surrogateescape")


# --- executables and markup ------------------------------------------------------------


_MACHO_MAGIC = (b"\xfe\xed\xfa\xce", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe")


def _executable_signals(head: bytes, mode: int | None) -> list[Signal]:
    if head.startswith(b"\x7fELF") and len(head) >= 20:
        endian = "<" if head[5:6] == b"\x01" else ">"
        kind = {2: "executable", 3: "shared object or PIE executable", 1: "object file"}.get(
            struct.unpack(f"{endian}H", head[16:18])[0], "file"
        )
        return [Signal("executable", "high", f"ELF {kind} (Linux/Unix machine code)")]
    if head.startswith(b"MZ") and len(head) >= 64:
        offset = struct.unpack("<I", head[60:64])[0]
        if head[offset : offset + 4] == b"PE\0\0":
            return [Signal("executable", "high", "PE executable (Windows machine code)")]
    magic = head[:4]
    if magic in (
        b"\xfe\xed\xfa\xce",
        b"\xce\xfa\xed\xfe",
        b"\xfe\xed\xfa\xcf",
        b"\xcf\xfa\xed\xfe",
    ):
        return [Signal("executable", "high", "Mach-O executable (macOS machine code)")]
    if magic == b"\xca\xfe\xba\xbe" and len(head) >= 8 and struct.unpack(">I", head[4:8])[0] < 45:
        return [Signal("executable", "high", "Mach-O universal binary (macOS machine code)")]
    if head.startswith(b"#!"):
        interpreter = content.printable(
            head[2:].split(b"\n", 1)[0].decode("utf-8", "replace"), limit=80
        ).strip()
        if mode is None:
            return [
                Signal(
                    "executable",
                    "warning",
                    f"Script for {interpreter or 'an interpreter'} (#!); the sandbox did "
                    "not say whether it was executable",
                )
            ]
        if mode & 0o111:
            return [
                Signal(
                    "executable",
                    "high",
                    f"Executable script for {interpreter} (#!, mode "
                    f"{stat.filemode(stat.S_IFREG | mode)[1:]})",
                )
            ]
    return []


class _MarkupScan:
    """Scripts and event handlers in HTML, SVG or XML, found in every chunk (with a little
    overlap, so a tag cut by a chunk boundary is still seen)."""

    def __init__(self) -> None:
        self.found: set[str] = set()
        self._overlap = b""

    def feed(self, chunk: bytes) -> None:
        data = self._overlap + chunk
        for match in _ACTIVE_MARKUP.finditer(data):
            token = match.group(0).lower()
            if token.startswith(b"<script"):
                self.found.add("script elements")
            elif b"javascript:" in token:
                self.found.add("javascript: URLs")
            else:
                self.found.add("event handler attributes (on…=)")
        self._overlap = data[-MARKUP_OVERLAP:]


# --- the scanner -----------------------------------------------------------------------


ModeLookup = int | None | Callable[[], int | None]


class SignalScanner:
    """Every signal of one file, fed the file's chunks once, in order (see the module
    docstring). What it keeps is bounded: the first bytes, a zip's last ARCHIVE_TAIL_BYTES,
    a line cut by a chunk boundary, and the secrets found (for `redact`)."""

    def __init__(self, *, name: str, mode: ModeLookup = None):
        """`mode`: the file's permission bits, or how to ask for them (called only for a
        script with a shebang: whether it is executable)."""
        self.name = posixpath.basename(name) or name
        self._mode = mode
        self._head = bytearray()
        self._kind: str | None = None  # decided from the first chunk
        self._secrets: _SecretScan | None = None
        self._markup: _MarkupScan | None = None
        self._tar: _TarListing | None = None
        self._zip_tail: bytearray | None = None
        self._early = b""  # chunks before the first SNIFF_BYTES are in

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._kind is None:
            self._head += chunk[: content.SNIFF_BYTES - len(self._head)]
            if len(self._head) < content.SNIFF_BYTES:
                self._early += chunk
                return
            chunk, self._early = self._early + chunk, b""
            self._start(bytes(self._head))
        self._route(chunk)

    def _start(self, head: bytes) -> None:
        """What to look for, from the first bytes and the name."""
        sniffed = content.guess_content_type(self.name, head)
        base = content.base_content_type(sniffed)
        lowered = self.name.lower()
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            self._kind, self._zip_tail = "zip", bytearray()
        elif len(head) >= 262 and head[257:262] == b"ustar":
            self._kind, self._tar = "tar", _TarListing(gzipped=False)
        elif head.startswith(b"\x1f\x8b") and lowered.endswith((".tar.gz", ".tgz")):
            self._kind, self._tar = "tar.gz", _TarListing(gzipped=True)
        elif content.looks_like_text(head):
            self._kind = "text"
            self._secrets = _SecretScan(self.name)
            if base in _MARKUP_TYPES or lowered.endswith(
                (".html", ".htm", ".svg", ".xml", ".xhtml")
            ):
                self._markup = _MarkupScan()
        else:
            self._kind = "binary"

    def _route(self, chunk: bytes) -> None:
        if self._secrets is not None:
            self._secrets.feed(chunk)
        if self._markup is not None:
            self._markup.feed(chunk)
        if self._tar is not None:
            self._tar.feed(chunk)
        if self._zip_tail is not None:
            self._zip_tail += chunk
            if len(self._zip_tail) > 2 * ARCHIVE_TAIL_BYTES:
                del self._zip_tail[: len(self._zip_tail) - ARCHIVE_TAIL_BYTES]

    @property
    def secrets(self) -> list[FoundSecret]:
        return self._secrets.found if self._secrets is not None else []

    def finish(self, *, size: int, content_type: str) -> list[Signal]:
        if self._kind is None:  # shorter than the sniff: everything is in the head
            self._start(bytes(self._head))
            self._route(self._early)
            self._early = b""
        head = bytes(self._head)
        signals: list[Signal] = []
        if self._secrets is not None:
            self._secrets.finish()
            signals += self._secrets.signals()
        signals += self._active_content(content_type)
        mode = self._mode() if callable(self._mode) and head.startswith(b"#!") else self._mode
        signals += _executable_signals(head, mode if isinstance(mode, int) else None)
        if self._zip_tail is not None:
            signals += _zip_signals(bytes(self._zip_tail[-ARCHIVE_TAIL_BYTES:]), size)
        if self._tar is not None:
            kind = "tar archive" if self._kind == "tar" else "gzip-compressed tar archive"
            signals += self._tar.members.signals(kind, size)
        if self._kind == "binary" and not signals and size:
            base = content.base_content_type(content_type)
            if base not in content.INLINE_IMAGE_TYPES:
                signals.append(
                    Signal(
                        "binary",
                        "info",
                        f"Binary content ({base}): no text preview; download it to inspect it",
                    )
                )
        if size > settings.ARTIFACT_LARGE_BYTES:
            signals.append(
                Signal(
                    "large",
                    "info",
                    f"{filesizeformat(size)}: larger than "
                    f"{filesizeformat(settings.ARTIFACT_LARGE_BYTES)}; the preview shows only "
                    "its start",
                )
            )
        return signals

    def _active_content(self, content_type: str) -> list[Signal]:
        base = content.base_content_type(content_type)
        if base in _SCRIPT_TYPES or self.name.lower().endswith(_SCRIPT_EXTENSIONS):
            return [
                Signal(
                    "active_content", "high", "JavaScript: runs when opened in a browser or Node.js"
                )
            ]
        if self._markup is not None and self._markup.found:
            what = ", ".join(sorted(self._markup.found))
            kind = (
                "SVG"
                if base == "image/svg+xml" or self.name.lower().endswith(".svg")
                else (
                    "HTML"
                    if "html" in base or self.name.lower().endswith((".html", ".htm"))
                    else "XML"
                )
            )
            return [Signal("active_content", "high", f"{kind} with {what}: runs in a browser")]
        return []


def scan_all(chunks: Iterable[bytes], *, name: str, mode: int | None = None) -> Iterator[Signal]:
    """Signals of a whole byte stream at once (tests, and text the console shows)."""
    scanner = SignalScanner(name=name, mode=mode)
    size = 0
    head = b""
    for chunk in chunks:
        if len(head) < content.SNIFF_BYTES:
            head += chunk[: content.SNIFF_BYTES - len(head)]
        scanner.feed(chunk)
        size += len(chunk)
    yield from scanner.finish(size=size, content_type=content.guess_content_type(name, head))
