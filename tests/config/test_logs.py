"""config/logs.py: LOG_FORMAT=json writes one JSON object per line; plain stays the default.
The processes are real: a Python that configures uvicorn (as the web process does, before
Django) and then Django, with the environment a deployment would set."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from config.logs import JsonFormatter

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, uvicorn
uvicorn.Config("config.asgi:application")  # uvicorn's own logging config, as at startup
import django
django.setup()
logging.getLogger("sandboxes.services").info("run running id=%s", "r-1", extra={"run_id": "r-1"})
logging.getLogger("uvicorn.error").info("Started server process")
try:
    raise ValueError("bad\\nthing")
except ValueError:
    logging.getLogger("config").exception("it broke")
"""


def _run(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_logs_are_one_object_per_line_from_every_logger() -> None:
    done = _run(LOG_FORMAT="json")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [(e["level"], e["logger"], e["message"]) for e in entries] == [
        ("INFO", "sandboxes.services", "run running id=r-1"),
        ("INFO", "uvicorn.error", "Started server process"),
        ("ERROR", "config", "it broke"),
    ]
    assert entries[0]["run_id"] == "r-1"
    assert entries[0]["time"].endswith("+00:00") and entries[0]["process"] > 0
    assert entries[2]["exception"].startswith("Traceback")
    assert "ValueError: bad\nthing" in entries[2]["exception"]


def test_plain_logs_stay_the_default() -> None:
    done = _run()
    assert done.returncode == 0, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.endswith(" INFO sandboxes.services run running id=r-1")
    assert not first.startswith("{")


def test_a_log_format_that_does_not_exist_is_refused_by_name() -> None:
    done = _run(LOG_FORMAT="xml")
    assert done.returncode != 0
    assert "LOG_FORMAT='xml' is invalid: expected one of plain, json" in done.stderr


def test_values_json_cannot_hold_are_written_as_text() -> None:
    record = logging.makeLogRecord(
        {"name": "x", "levelname": "INFO", "msg": "m", "path": Path("/tmp/a"), "_private": 1}
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["path"] == "/tmp/a"
    assert "_private" not in entry
