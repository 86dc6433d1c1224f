"""Run the benchmarks and write docs/benchmarks.md with the machine and the date.

    python -m bench                 # all of them
    python -m bench runs sweep      # a selection (module names without `bench_`)

Each benchmark is a module `bench/bench_<name>.py` run as its own process that prints its
section as markdown. They share one database: DATABASE_URL when set, else the local
PostgreSQL's `airlock_bench` (created if missing), else a SQLite file under var/bench.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.common import machine

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["runs", "artifacts", "sweep", "agent", "loop", "local", "review"]


def _database_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    try:
        import psycopg

        server = "postgresql://postgres@127.0.0.1:5432"
        with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=3) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = 'airlock_bench'"
            if conn.execute(query).fetchone() is None:
                conn.execute("CREATE DATABASE airlock_bench")
        return f"{server}/airlock_bench"
    except Exception as exc:  # no local PostgreSQL: say so, and use SQLite
        print(f"PostgreSQL unavailable ({exc}); benchmarking on SQLite", file=sys.stderr)
        (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{ROOT / 'var' / 'bench' / 'bench.sqlite3'}"


def main(argv: list[str]) -> None:
    selected = argv or MODULES
    env = {**os.environ, "DATABASE_URL": _database_url()}
    sections = []
    for name in selected:
        print(f"running bench_{name} …", file=sys.stderr)
        done = subprocess.run(
            [sys.executable, "-m", f"bench.bench_{name}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        print(done.stdout)
        sections.append(done.stdout.strip())
    header = (
        "# Benchmarks\n\n"
        f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on {machine()}.\n"
        "Each section says which database and broker it used. Targets are from the issues; "
        "none is asserted in tests.\n"
    )
    target = ROOT / "docs" / "benchmarks.md"
    target.write_text(header + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
