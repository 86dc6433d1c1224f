"""Run the benchmarks and write docs/benchmarks.md with the machine and the date.

    python -m bench                 # all of them
    python -m bench runs sweep      # a selection (module names without `bench_`)

Environment: DATABASE_URL (default: a SQLite file under var/bench), CELERY_BROKER_URL
(default: the local Redis, database 14). Each benchmark module has `main()`, which prints
its section as markdown.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["runs", "artifacts", "sweep"]


def _machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    return f"{platform.node()} · {cpu} · {os.cpu_count()} cores · {memory} · {platform.platform()}"


def main(argv: list[str]) -> None:
    var = ROOT / "var" / "bench"
    var.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRLOCK_VAR_DIR", str(var))
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{var / 'bench.sqlite3'}")
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    selected = argv or MODULES
    sections = []
    for name in selected:
        module = importlib.import_module(f"bench.bench_{name}")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            module.main()
        print(out.getvalue())
        sections.append(out.getvalue().strip())

    header = (
        "# Benchmarks\n\n"
        f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n"
        f"- Machine: {_machine()}\n"
        f"- Database: {connection.vendor}; broker: {os.environ['CELERY_BROKER_URL'].split('://')[0]}\n"
        f"- Benchmarks run: {', '.join(selected)}\n"
    )
    target = ROOT / "docs" / "benchmarks.md"
    target.write_text(header + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
