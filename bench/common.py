"""What every benchmark shares: the machine, the date and load average it ran under, names
that never collide with an earlier run's rows (every benchmark reruns against the same
database), and ratios taken as interleaved pairs (A, B, A, B…) so the shared machine's load
moves both sides of each pair alike."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path


def machine() -> str:
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
    return f"{cpu}, {os.cpu_count()} cores, {memory} memory, {platform.platform()}"


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def stamp() -> str:
    """One line for the top of a section: machine, date, load average now."""
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; Python "
        f"{platform.python_version()}; load average (1/5/15 min) {load()} at the start."
    )


def unique(prefix: str) -> str:
    """A name no earlier run used: rows of previous runs stay in the database."""
    return f"{prefix}-{time.time_ns():x}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def quantile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (1–99) of at least two values."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


Pair = tuple[float, float]


def interleaved(
    first: Callable[[], float], second: Callable[[], float], pairs: int, warmup: int = 3
) -> list[Pair]:
    """`pairs` (first, second) timings, taken alternately, after `warmup` untimed pairs.
    Each callable returns the seconds it measured (so its set-up stays out of the figure)."""
    for _ in range(warmup):
        first()
        second()
    return [(first(), second()) for _ in range(pairs)]


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def pair_summary(pairs: Sequence[Pair]) -> dict[str, float]:
    ratios = [a / b for a, b in pairs if b > 0]
    return {
        "first": statistics.median(a for a, _ in pairs),
        "second": statistics.median(b for _, b in pairs),
        "first_p90": quantile([a for a, _ in pairs], 90),
        "second_p90": quantile([b for _, b in pairs], 90),
        "ratio": statistics.median(ratios),
        "ratio_p10": quantile(ratios, 10),
        "ratio_p90": quantile(ratios, 90),
        "difference": statistics.median(a - b for a, b in pairs),
    }


def pairs_block(title: str, pairs: Sequence[Pair], unit: str = "ms") -> list[str]:
    """Every pair, printed: `first/second = ratio`, ten to a line, in a <details> block."""
    scale, digits = (1000, 1) if unit == "ms" else (1, 3)
    cells = [
        f"{a * scale:.{digits}f}/{b * scale:.{digits}f}={a / b:.2f}" for a, b in pairs if b > 0
    ]
    rows = [" ".join(cells[n : n + 10]) for n in range(0, len(cells), 10)]
    return [
        f"<details><summary>{title}: {len(pairs)} pairs ({unit}, first/second=ratio)</summary>",
        "",
        "```",
        *rows,
        "```",
        "",
        "</details>",
    ]


def verdict(met: bool) -> str:
    return "yes" if met else "**no**"


# --- processes the benchmarks start ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    output = process.stdout.read() if process.stdout else ""
    raise RuntimeError(f"nothing listens on port {port}:\n{output}")


def start_server(port: int, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """uvicorn (one process) serving config.asgi on 127.0.0.1:`port`."""
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log",
         "--timeout-keep-alive", "120"],
        cwd=ROOT, env=env or os.environ.copy(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    wait_port(port, server)
    return server


def start_worker(
    concurrency: int = 2, env: dict[str, str] | None = None, name: str = "bench"
) -> subprocess.Popen[str]:
    """A Celery worker (prefork, `concurrency` children) on the configured broker."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING",
         "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-n", f"{name}-{os.getpid()}-{time.time_ns()}@%h"],
        cwd=ROOT, env=env or os.environ.copy(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip


def stop(process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """SIGTERM to the process group the benchmark started, SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


def start_e2b_double(
    port: int, latencies: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """The E2B test double in its own process (`latencies`: `--latency` values such as
    `create=0.15-0.45`); the variables that point Airlock at it."""
    argv = [sys.executable, "-m", "tests.fakes.e2b", "--port", str(port)]
    for latency in latencies:
        argv += ["--latency", latency]
    double = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    variables: dict[str, str] = {}
    assert double.stdout is not None
    while len(variables) < 3:
        line = double.stdout.readline()
        if not line:
            raise RuntimeError("the E2B double did not start")
        name, _, value = line.strip().partition("=")
        if name.startswith("E2B_"):
            variables[name] = value
    return double, variables


def tree_pids(pid: int) -> list[int]:
    """`pid` and every live descendant."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += [child for child, parent in parents.items() if parent == current]
    return found


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants (shared pages counted in each)."""
    total = 0
    for each in tree_pids(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{each}/statm").read_text().split()[1]) * os.sysconf(
                "SC_PAGE_SIZE"
            )
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of `pid` and every live descendant, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu.get(current, 0.0)
        todo += [child for child, parent in parents.items() if parent == current]
    return total


def environment(**variables: str) -> None:
    """The environment a benchmark process runs in: var/bench (its SQLite file unless
    DATABASE_URL is set), Redis db 14 as broker and as the shared cache (as in production: API
    keys are cached only in a shared one, workspaces/keycache), quiet logs; then `variables`."""
    var = ROOT / "var" / "bench"
    var.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRLOCK_VAR_DIR", str(var))
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{var / 'bench.sqlite3'}")
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("CACHE_URL", "redis://127.0.0.1:6379/14")
    os.environ.update(variables)


def django_setup() -> None:
    """Django set up in this process, its database migrated."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def minimal_bwrap(bwrap: str) -> list[str]:
    """The least a fresh sandbox per command costs: every namespace, /usr, /proc, /dev."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64"):
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{name}"]
    return [*argv, "--proc", "/proc", "--dev", "/dev", "true"]
