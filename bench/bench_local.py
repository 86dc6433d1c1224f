"""The local sandbox backend: exec in a live sandbox against a fresh bwrap, and the cost of a
sandbox's life with every limit in force (cgroups, disk image, seccomp).

    python -m bench.bench_local        # prints its section of docs/benchmarks.md

Needs root (cgroups, loop devices), like the backend's limits themselves. No database.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench import common
from bench.common import load, machine, ms, timed
from sandboxes.backends.local import LocalBackend

PAIRS = 30
EXPLAINED = """\
What the numbers mean. A live exec is a request to the sandbox's init, which hands the command
to a standby shell it started beforehand (rlimits set, already in the command's own cgroup):
the cost is the command's bash starting and two Unix socket round trips; no namespace is
made. Moving a process into a cgroup is what a naive live
exec would pay on every call: the kernel's cgroup migration lock waits for an RCU grace period
when it has been idle, 5-18 ms on this machine (exec of `true` 0.5 s apart took 16-20 ms when
each command was moved at its start). The standby is moved while no command waits for it.
`create` pays that grace period once (the sandbox's first processes are moved into its
cgroups), plus bwrap's setup, the init's Python start, `mkfs.ext4` of the sparse image and the
loop mount; `destroy` kills the cgroups, waits for them to empty, unmounts (the loop device
clears itself) and removes the files."""
IDLE_PAIRS = 10
IDLE_S = 0.5  # between commands, as an agent's calls come: no lock or cache is still warm
LIVES = 30


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="airlock-bench-local-"))
    root.chmod(0o711)
    backend = LocalBackend(root=root, cgroup_parent="airlock-bench")
    try:
        run(backend)
    finally:
        for info in backend.list_sandboxes({}):
            backend.kill(info.sandbox_id)
        shutil.rmtree(root, ignore_errors=True)


def run(backend: LocalBackend) -> None:
    # One long report on purpose: measure everything in one sitting, then print it in order.
    load_before = load()
    limits = backend.limits()
    sandbox_id = backend.create(template="bench", metadata={}, envs={}, timeout_s=3600).sandbox_id
    bwrap = shutil.which(backend.bwrap_path) or "bwrap"
    user: dict[str, Any] = {}
    if backend.host_uid is not None:
        user = {"user": backend.host_uid, "group": backend.host_gid}
    minimal = common.minimal_bwrap(bwrap)
    for _ in range(3):  # warm both paths
        backend.run(sandbox_id, "true", timeout_s=30)
        subprocess.run(minimal, check=True, **user)

    def live() -> None:
        assert backend.run(sandbox_id, "true", timeout_s=30).exit_code == 0

    def fresh() -> None:
        subprocess.run(minimal, check=True, **user)

    def full_fresh() -> None:
        # What every exec cost before sandboxes were live: the whole jail, per command.
        with backend.bwrap_command(sandbox_id, "true") as prepared:
            subprocess.run(prepared.argv, check=True, **prepared.popen_kwargs())

    pairs: list[tuple[float, float]] = []
    old_way: list[float] = []
    for index in range(PAIRS):
        # Interleaved, and the order flips each pair, so drift in load hits both alike.
        if index % 2:
            fresh_s, live_s = timed(fresh), timed(live)
        else:
            live_s, fresh_s = timed(live), timed(fresh)
        pairs.append((live_s, fresh_s))
        old_way.append(timed(full_fresh))
    idle_pairs: list[tuple[float, float]] = []
    for index in range(IDLE_PAIRS):
        time.sleep(IDLE_S)
        first, second = (fresh, live) if index % 2 else (live, fresh)
        first_s = timed(first)
        time.sleep(IDLE_S)
        second_s = timed(second)
        idle_pairs.append((second_s, first_s) if index % 2 else (first_s, second_s))
    backend.kill(sandbox_id)

    creates, destroys = [], []
    for _ in range(LIVES):
        started = time.perf_counter()
        info = backend.create(template="bench", metadata={}, envs={}, timeout_s=600)
        creates.append(time.perf_counter() - started)
        destroys.append(timed(partial(backend.kill, info.sandbox_id)))

    ratios = [live_s / fresh_s for live_s, fresh_s in pairs]
    live_median = statistics.median(p[0] for p in pairs)
    fresh_median = statistics.median(p[1] for p in pairs)
    old_median = statistics.median(old_way)
    create_median, destroy_median = statistics.median(creates), statistics.median(destroys)

    print("## Local sandboxes\n")
    print(
        f"Written by `python -m bench.bench_local` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"on {machine()}; Python {platform.python_version()}, running as uid {os.geteuid()}. "
        f"Load average (1/5/15 min) {load_before} before, {load()} after.\n"
    )
    print("Limits in force for every sandbox measured here:\n")
    for limit in limits:
        print(f"- {limit.name}: {'' if limit.enforced else 'NOT ENFORCED — '}{limit.detail}")
    print()
    print("| measure | median | p90 | target | met |")
    print("|---|---|---|---|---|")
    print(
        f"| `exec` of `true` in a live sandbox ({PAIRS}) | {ms(live_median)} | "
        f"{ms(statistics.quantiles([p[0] for p in pairs], n=10)[-1])} | cheaper than a fresh "
        f"bwrap | {'yes' if live_median < fresh_median else 'no'} |"
    )
    print(
        f"| fresh minimal `bwrap --unshare-all … true` ({PAIRS}, interleaved) | "
        f"{ms(fresh_median)} | {ms(statistics.quantiles([p[1] for p in pairs], n=10)[-1])} "
        "| — | — |"
    )
    idle_live = [p[0] for p in idle_pairs]
    idle_fresh = [p[1] for p in idle_pairs]
    idle_met = statistics.median(idle_live) < statistics.median(idle_fresh)
    print(
        f"| `exec` of `true`, {IDLE_S:g} s apart ({IDLE_PAIRS}) | "
        f"{ms(statistics.median(idle_live))} | {ms(max(idle_live))} (max) | cheaper than a "
        f"fresh bwrap | {'yes' if idle_met else 'no'} |"
    )
    print(
        f"| fresh minimal bwrap, {IDLE_S:g} s apart ({IDLE_PAIRS}, interleaved) | "
        f"{ms(statistics.median(idle_fresh))} | {ms(max(idle_fresh))} (max) | — | — |"
    )
    print(
        f"| fresh bwrap with the whole jail per command, as before ({PAIRS}) | "
        f"{ms(old_median)} | {ms(statistics.quantiles(old_way, n=10)[-1])} | — | — |"
    )
    print(
        f"| create, every limit ({LIVES}) | {ms(create_median)} | "
        f"{ms(statistics.quantiles(creates, n=10)[-1])} | ≤ 50 ms | "
        f"{'yes' if create_median <= 0.050 else 'no'} |"
    )
    print(
        f"| destroy (kill), every limit ({LIVES}) | {ms(destroy_median)} | "
        f"{ms(statistics.quantiles(destroys, n=10)[-1])} | ≤ 50 ms | "
        f"{'yes' if destroy_median <= 0.050 else 'no'} |"
    )
    print()
    print("Each pair, live exec / fresh minimal bwrap:\n")
    print("| pair | live | fresh | ratio |")
    print("|---|---|---|---|")
    for index, ((live_s, fresh_s), ratio) in enumerate(zip(pairs, ratios, strict=True), 1):
        print(f"| {index} | {ms(live_s)} | {ms(fresh_s)} | {ratio:.2f} |")
    print(f"\nMedian ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}).")  # fmt: skip
    print(f"\n{EXPLAINED}")


if __name__ == "__main__":
    main()
