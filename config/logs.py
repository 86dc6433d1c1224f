"""LOG_FORMAT=json: one JSON object per line, for a log shipper; the default stays plain."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# What every LogRecord has: anything else on a record came as `extra=` and is logged too.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", "process"} plus the record's `extra` fields,
    "exception" (its traceback) and "stack" when there are; values JSON cannot hold are
    written as their str(). Never more than one line: newlines inside are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """settings.LOGGING. With json, uvicorn's own loggers (which it gives handlers of its own
    before Django starts) are sent through the same handler, so the web process writes only
    JSON lines too."""
    formatter = (
        {"()": "config.logs.JsonFormatter"}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    loggers: dict[str, Any] = {"django.db.backends": {"level": "INFO"}}
    if log_format == "json":
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            loggers[name] = {"handlers": ["console"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "main"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": loggers,
    }
