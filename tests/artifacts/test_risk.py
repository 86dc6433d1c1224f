"""artifacts/risk.py: each signal on a planted example, fed the way capture feeds it (chunks,
once), and the secret never in a signal's text; the redaction of previews and excerpts."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from typing import Any

import pytest

from artifacts import risk

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_PAIR = f"AWS_ACCESS_KEY_ID={AWS_KEY_ID}\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n".encode()
PRIVATE_KEY = (
    b"-----BEGIN RSA PRIVATE KEY-----\n"
    b"MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi6Z5Vz0oBuN8vkOl6bB5hR7C4X\n"
    b"-----END RSA PRIVATE KEY-----\n"
)
# The smallest header a reader would call an x86-64 ELF executable (e_type 2 = EXEC).
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + struct.pack("<HH", 2, 0x3E) + b"\x00" * 200


def signals_of(data: bytes, name: str, *, chunk: int = 1024 * 1024, **kwargs: Any) -> list[Any]:
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    return [s.as_json() for s in risk.scan_all(pieces, name=name, **kwargs)]


def codes(signals: list[Any]) -> list[str]:
    return [s["code"] for s in signals]


def _zip(**members: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


# --- secrets -------------------------------------------------------------------------


def test_an_aws_key_pair_is_two_secrets_named_by_kind_and_line() -> None:
    signals = signals_of(AWS_PAIR, "creds.env")

    assert [(s["code"], s["severity"], s["line"]) for s in signals] == [
        ("secret", "high", 1),
        ("secret", "high", 2),
    ]
    assert signals[0]["message"] == "AWS Access Key on line 1"
    assert signals[1]["message"] == "Secret Keyword on line 2"
    text = repr(signals)
    assert AWS_KEY_ID not in text and AWS_SECRET not in text


def test_a_private_key_is_a_secret() -> None:
    [signal] = signals_of(PRIVATE_KEY, "id_rsa")
    assert (signal["code"], signal["message"]) == ("secret", "Private Key on line 1")


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("notes.md", "token ghp_0123456789abcdefghijklmnopqrstuvwxyzAB here", "GitHub Token"),
        ("settings.py", 'password = "hunter2-but-longer"', "Secret Keyword"),
        ("log.txt", "fetch https://deploy:s3cr3tpassw0rd@git.example.com/x", "Basic Auth"),
        ("config.js", 'const k = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"', "Stripe Access Key"),
    ],
)
def test_detect_secrets_plugins_find_the_usual_kinds(name: str, text: str, kind: str) -> None:
    messages = [s["message"] for s in signals_of(text.encode(), name) if s["code"] == "secret"]
    assert any(m.startswith(kind) for m in messages), messages


def test_a_secret_is_found_across_a_chunk_boundary_on_the_right_line() -> None:
    filler = b"".join(b"line %d of ordinary text\n" % n for n in range(1, 2001))
    data = filler + AWS_PAIR
    # Chunks of 1000 bytes cut lines everywhere, as a sandbox read may.
    signals = signals_of(data, "big.env", chunk=1000)
    assert [s["line"] for s in signals] == [2001, 2002]


def test_a_pragma_in_the_file_does_not_hide_a_secret() -> None:
    data = f'aws_key = "{AWS_KEY_ID}"  # pragma: allowlist secret\n'.encode()
    assert "secret" in codes(signals_of(data, "x.py"))


def test_ordinary_text_and_code_carry_no_secret_signal() -> None:
    data = (
        b"def get_user_by_name(name):\n"
        b"    key = cache_key(name)  # the dictionary key\n"
        b"    return users[key]\n"
        b"sha256 of nothing: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
    ) * 50
    assert "secret" not in codes(signals_of(data, "users.py"))


def test_past_the_candidate_bound_the_scan_says_it_stopped(monkeypatch: Any) -> None:
    monkeypatch.setattr(risk, "MAX_CANDIDATE_LINES", 3)
    data = b"".join(b"password = 'x%d'\n" % n for n in range(10))
    [*_, last] = signals_of(data, "x.py")
    assert (last["code"], last["severity"], last["line"]) == ("secret", "warning", 4)
    assert "incomplete" in last["message"]


# --- active content, executables -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("page.html", b'<html><body onload="steal()">hi</body></html>', "HTML with event handler"),
        ("x.htm", b"<p>hi</p><script>fetch('/x')</script>", "HTML with script"),
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>x()</script></svg>', "SVG"),
        ("feed.xml", b'<?xml version="1.0"?><a href="javascript:alert(1)">x</a>', "javascript:"),
        ("app.js", b"console.log(document.cookie)", "JavaScript"),
    ],
)
def test_active_content(name: str, data: bytes, says: str) -> None:
    [signal] = [s for s in signals_of(data, name) if s["code"] == "active_content"]
    assert signal["severity"] == "high"
    assert says in signal["message"]


def test_markup_without_scripts_is_not_active() -> None:
    data = b"<html><body><h1>Report</h1><p>Plain.</p></body></html>"
    assert signals_of(data, "report.html") == []


def test_an_elf_is_an_executable() -> None:
    [signal] = signals_of(ELF, "tool")
    assert (signal["code"], signal["severity"]) == ("executable", "high")
    assert signal["message"].startswith("ELF executable")


def test_a_pe_and_a_mach_o_are_executables() -> None:
    pe = b"MZ" + b"\x00" * 58 + struct.pack("<I", 64) + b"PE\x00\x00" + b"\x00" * 64
    macho = b"\xcf\xfa\xed\xfe" + b"\x00" * 64
    assert "PE executable" in signals_of(pe, "a.exe")[0]["message"]
    assert "Mach-O" in signals_of(macho, "a")[0]["message"]


def test_a_shebang_is_executable_only_with_its_exec_bit() -> None:
    script = b"#!/usr/bin/env python3\nprint('hi')\n"
    [high] = signals_of(script, "run.py", mode=0o755)
    assert (high["code"], high["severity"]) == ("executable", "high")
    assert "rwxr-xr-x" in high["message"]
    assert signals_of(script, "run.py", mode=0o644) == []
    [unknown] = signals_of(script, "run.py")  # the backend did not say
    assert (unknown["code"], unknown["severity"]) == ("executable", "warning")


def test_the_mode_is_asked_for_only_for_a_shebang() -> None:
    asked: list[bool] = []

    def mode() -> int:
        asked.append(True)
        return 0o700

    assert signals_of(b"plain text\n", "a.txt", mode=mode) == []
    assert codes(signals_of(b"#!/bin/sh\necho\n", "a.sh", mode=mode)) == ["executable"]
    assert asked == [True]


# --- archives --------------------------------------------------------------------------


def test_a_zip_with_a_dotdot_member_is_flagged_high() -> None:
    data = _zip(**{"../evil": "x", "ok.txt": "y", "inner.zip": "z"})
    signals = signals_of(data, "bundle.zip")

    assert [(s["code"], s["severity"]) for s in signals] == [
        ("archive", "info"),
        ("archive", "high"),
        ("archive", "warning"),
    ]
    assert signals[0]["message"].startswith("zip archive: 3 members")
    assert "'../evil'" in signals[1]["message"]
    assert "'inner.zip'" in signals[2]["message"]


def test_a_zip_read_in_small_chunks_keeps_only_its_tail() -> None:
    data = _zip(**{f"dir/file{n}.txt": "x" * 1000 for n in range(50)}, **{"/etc/cron.d/x": "y"})
    signals = signals_of(data, "a.zip", chunk=333)
    assert signals[0]["message"].startswith("zip archive: 51 members")
    assert "'/etc/cron.d/x'" in signals[1]["message"]


def test_a_zip_with_a_symbolic_link_is_flagged() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("link")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/shadow")
    assert "are links" in signals_of(buffer.getvalue(), "a.zip")[1]["message"]


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_a_tar_with_absolute_and_long_names(mode: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.GNU_FORMAT) as archive:  # type: ignore[call-overload]
        for name in ("/etc/passwd", "ok.txt", "deep/" + "d" * 150 + "/../../x"):
            info = tarfile.TarInfo(name)
            info.size = 3
            archive.addfile(info, io.BytesIO(b"abc"))
    name = "a.tar" if mode == "w" else "a.tar.gz"
    signals = signals_of(buffer.getvalue(), name, chunk=700)

    assert "3 members" in signals[0]["message"]
    assert signals[1]["severity"] == "high"
    assert "'/etc/passwd'" in signals[1]["message"]
    assert "2 member names" in signals[1]["message"]  # the long name is read whole


# --- binary and large --------------------------------------------------------------------


def test_binary_content_and_a_large_file(settings: Any) -> None:
    settings.ARTIFACT_LARGE_BYTES = 1000
    assert codes(signals_of(bytes(range(256)) * 2, "blob.bin")) == ["binary"]
    assert codes(signals_of(b"x" * 1001, "a.txt")) == ["large"]
    assert signals_of(b"x" * 1000, "a.txt") == []


# --- redaction -------------------------------------------------------------------------


def test_redact_removes_every_value_found_and_private_key_blocks() -> None:
    scanner = risk.SignalScanner(name="creds.env")
    scanner.feed(AWS_PAIR + PRIVATE_KEY)
    scanner.finish(size=0, content_type="text/plain")
    shown = risk.redact((AWS_PAIR + PRIVATE_KEY).decode(), scanner.secrets)

    assert AWS_KEY_ID not in shown and AWS_SECRET not in shown
    assert "MIIEpAIBAAKCAQEA3Tz2" not in shown
    assert "[AWS Access Key removed]" in shown and "[private key removed]" in shown


def test_redact_text_cleans_a_command_excerpt() -> None:
    shown = risk.redact_text(f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}\ndone\n")
    assert AWS_SECRET not in shown
    assert shown.endswith("done\n")
