"""Run the benchmarks and write docs/benchmarks.md with the machine and the date.

    python -m bench                 # all of them
    python -m bench runs sweep      # a selection (module names without `bench_`)

Each benchmark is a module `bench/bench_<name>.py` run as its own process that prints its
section as markdown. They share one database: DATABASE_URL when set, else the local
PostgreSQL's `airlock_bench` (created if missing), else a SQLite file under var/bench. A
selection replaces its own sections of docs/benchmarks.md (by title) and keeps the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "runs", "files", "scale", "cloud", "artifacts", "sweep", "agent", "loop", "local", "review",
    "pause",
]  # fmt: skip


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


HEADER = (
    "# Benchmarks\n\n"
    "Written by `python -m bench` (`make bench`); each section says when it ran, on which "
    "machine, under which load, with which database and broker. Targets are from the issues; "
    "none is asserted in tests. The machine is shared: ratios are taken as interleaved pairs.\n"
)


def _merged(target: Path, sections: list[str]) -> str:
    """The file with each section that ran replaced (matched by its `## ` title) or added:
    a selection reruns its own sections and keeps the others'."""
    old = target.read_text() if target.exists() else ""
    parts: list[str] = []
    for block in ("\n" + old).split("\n## ")[1:]:
        parts.append("## " + block.strip())
    titles = [part.splitlines()[0] for part in parts]
    for section in sections:
        title = section.splitlines()[0]
        if title in titles:
            parts[titles.index(title)] = section
        else:
            parts.append(section)
            titles.append(title)
    return HEADER + "\n" + "\n\n".join(parts) + "\n"


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
    target = ROOT / "docs" / "benchmarks.md"
    target.write_text(_merged(target, sections))
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
