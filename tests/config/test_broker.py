"""The embedded broker (config/broker.py) under several real processes at once: every message
is delivered exactly once, whole; an unreadable one is set aside, not fatal."""

from __future__ import annotations

import multiprocessing
import queue
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

PRODUCERS = 4
CONSUMERS = 4
MESSAGES_EACH = 250
# A payload large enough that writing it is not one system call's worth of time.
FILLER = "x" * 200_000


def _options(root: Path) -> dict[str, Any]:
    for sub in ("queue", "processed", "control"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(root / "queue"),
        "data_folder_out": str(root / "queue"),
        "processed_folder": str(root / "processed"),
        "control_folder": str(root / "control"),
        "store_processed": False,
        "polling_interval": 0.01,
    }


def _connection(root: Path, transport: str) -> Connection:
    return Connection(transport=transport, transport_options=_options(root))


def _produce(root: Path, transport: str, producer: int) -> None:
    with _connection(root, transport) as conn:
        q = conn.SimpleQueue("burst")
        for n in range(MESSAGES_EACH):
            q.put({"id": f"{producer}-{n}", "filler": FILLER})
        q.close()


def _consume(root: Path, transport: str, results: Any, expected: int) -> None:
    got: list[str] = []
    errors: list[str] = []
    with _connection(root, transport) as conn:
        q = conn.SimpleQueue("burst")
        idle = 0
        while idle < 30:  # 3 s without a message: the others have taken the rest
            try:
                message = q.get(timeout=0.1)
            except queue.Empty:
                idle += 1
                continue
            except Exception as exc:  # what killed the worker: a half-written file
                errors.append(repr(exc))
                continue
            idle = 0
            payload = message.payload
            if payload["filler"] != FILLER:
                errors.append(f"truncated payload {payload['id']}")
            got.append(payload["id"])
            message.ack()
        q.close()
    results.put((got, errors))


def _burst(root: Path, transport: str) -> tuple[list[str], list[str]]:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    total = PRODUCERS * MESSAGES_EACH
    consumers = [
        ctx.Process(target=_consume, args=(root, transport, results, total))
        for _ in range(CONSUMERS)
    ]
    producers = [ctx.Process(target=_produce, args=(root, transport, p)) for p in range(PRODUCERS)]
    for process in consumers + producers:
        process.start()
    got: list[str] = []
    errors: list[str] = []
    for _ in consumers:
        ids, errs = results.get(timeout=300)
        got += ids
        errors += errs
    for process in consumers + producers:
        process.join(30)
        assert process.exitcode == 0
    return got, errors


@pytest.mark.e2e
def test_every_message_of_a_burst_arrives_once_and_whole(tmp_path: Path) -> None:
    got, errors = _burst(tmp_path, "config.broker:Transport")

    assert errors == []
    expected = {f"{p}-{n}" for p in range(PRODUCERS) for n in range(MESSAGES_EACH)}
    assert sorted(got) == sorted(expected)  # each once: no loss, no double delivery
    assert list((tmp_path / "queue").iterdir()) == []
    assert not (tmp_path / "bad").exists()


def test_an_unreadable_message_is_set_aside_and_the_next_one_delivered(tmp_path: Path) -> None:
    with _connection(tmp_path, "config.broker:Transport") as conn:
        q = conn.SimpleQueue("burst")
        (tmp_path / "queue" / "00000000000000000001_half.burst.msg").write_text('{"body": "eyJ')
        q.put({"id": "next"})

        assert q.get(timeout=1).payload == {"id": "next"}
        (bad,) = (tmp_path / "bad").iterdir()
        assert bad.name.endswith("_half.burst.msg")
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)
        q.close()


def test_filesystem_urls_use_the_safe_transport() -> None:
    from config.broker import Transport
    from config.celery import app

    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport) == app.conf.broker_url.startswith(
            "filesystem://"
        )


def test_a_message_being_written_is_not_seen(tmp_path: Path) -> None:
    from config.broker import write_atomically

    folder = tmp_path / "queue"
    folder.mkdir()
    (folder / ".partial-0123").write_bytes(b'{"half')  # what a writer has not renamed yet
    with _connection(tmp_path, "config.broker:Transport") as conn:
        q = conn.SimpleQueue("burst")
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)
        write_atomically(folder, "00000000000000000002_x.other.msg", b"{}")
        assert sorted(p.name for p in folder.iterdir()) == [
            ".partial-0123", "00000000000000000002_x.other.msg",
        ]  # fmt: skip
        q.close()


def _orphan(root: Path, queue_name: str) -> Path:
    """A message a consumer took (renamed into processing/) and died before reading. (Each
    test its own queue name: kombu keeps the queues a process bound in one state for every
    folder, and would not bind the same name again in a new one.)"""
    import os

    with _connection(root, "config.broker:Transport") as conn:
        q = conn.SimpleQueue(queue_name)
        q.put({"id": "orphan"})
        q.close()
    (name,) = os.listdir(root / "queue")
    (root / "processing").mkdir()
    taken = root / "processing" / f"0123abcd-{name}"
    os.rename(root / "queue" / name, taken)
    return taken


def test_a_message_whose_consumer_died_holding_it_is_queued_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import broker

    _options(tmp_path)
    orphan = _orphan(tmp_path, "orphaned")
    monkeypatch.setattr(broker, "ORPHAN_AFTER_S", 0)  # as if it was taken long ago

    with _connection(tmp_path, "config.broker:Transport") as conn:
        q = conn.SimpleQueue("orphaned")
        assert q.get(timeout=1).payload == {"id": "orphan"}
        q.close()
    assert not orphan.exists()


def test_a_message_a_live_consumer_just_took_is_left_to_it(tmp_path: Path) -> None:
    _options(tmp_path)
    taken = _orphan(tmp_path, "taken")  # taken a moment ago: its consumer is reading it

    with _connection(tmp_path, "config.broker:Transport") as conn:
        q = conn.SimpleQueue("taken")
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)
        q.close()
    assert taken.exists()
