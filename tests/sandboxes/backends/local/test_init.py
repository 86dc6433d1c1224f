"""The sandbox's init (sandboxes/backends/local/init.py) without a sandbox: the pieces it
writes itself instead of importing them (its start is on every create's path)."""

from __future__ import annotations

import json

import pytest

from sandboxes.backends.local.init import Ring, dump_json, request_frame, split_frames, suppress


@pytest.mark.parametrize(
    "value",
    [
        {"id": "c0123", "tracked": True, "exit_code": None, "signal": 9},
        {"message": 'cwd /home/user/a "b"\\c\n\t\x00\x1f é 日本'},
        {"nested": [1, "two", [False, None]], "empty": {}},
        [],
    ],
)
def test_what_the_init_writes_is_json_the_worker_reads(value: object) -> None:
    assert json.loads(dump_json(value)) == value


def test_it_refuses_what_it_cannot_write() -> None:
    with pytest.raises(TypeError):
        dump_json({"bytes": b"x"})


def test_frames_split_whole_and_keep_a_partial_one() -> None:
    buffer = bytearray(request_frame(b"R", {"op": "ping"}) + request_frame(b"K", None)[:3])

    frames = split_frames(buffer)

    assert [kind for kind, _ in frames] == [b"R"]
    assert len(buffer) == 3


def test_a_ring_keeps_the_latest_bytes_and_counts_from_the_start() -> None:
    ring = Ring(limit=5)
    ring.append(b"abc")
    ring.append(b"defg")

    assert ring.read(0, 100) == (b"cdefg", 7, True)
    assert ring.read(4, 2) == (b"ef", 6, True)
    assert ring.read(7, 100) == (b"", 7, True)
    assert Ring(limit=10).read(0, 10) == (b"", 0, False)


def test_suppress_swallows_only_what_it_names() -> None:
    with suppress(KeyError):
        raise KeyError("gone")
    with pytest.raises(ValueError, match="kept"), suppress(KeyError):
        raise ValueError("kept")
