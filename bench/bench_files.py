"""Files in and out of a live local sandbox through the API (uvicorn, one process), against
`cp` of the same file on the same disk, as interleaved pairs; and the server's resident
memory while it moves files of two sizes.

Targets (issue 15): upload ≥ 50 % of cp's rate, download ≥ 70 %, RSS flat in the file's size.

    python -m bench files
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import common

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
SIZE_MIB = 100
SMALL_MIB = 10
PAIRS = 5


def setup() -> None:
    common.environment(SANDBOX_BACKEND="local", UPLOAD_MAX_BYTES=str((SIZE_MIB + 1) * MIB))
    common.django_setup()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class _PeakRss:
    """The server's peak resident memory while a block runs (sampled every 2 ms)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.before = pid, 0, 0
        self._done = threading.Event()

    def __enter__(self) -> _PeakRss:
        self.before = self.peak = _rss(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            self._done.wait(0.002)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def main() -> None:
    from sandboxes.backends import get_backend
    from tests.factories import UserFactory, make_api_key, make_workspace

    print("## Files through the API\n")
    print(common.stamp() + "\n")
    user: Any = UserFactory(username=common.unique("bench-files"))
    workspace = make_workspace(owner=user, name=common.unique("bench-files"))
    _, key = make_api_key(workspace=workspace)
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-files-", dir=ROOT / "var" / "bench"))
    sources = {}
    for mib in (SMALL_MIB, SIZE_MIB):
        source = work / f"source-{mib}.bin"
        block = os.urandom(MIB)
        with source.open("wb") as file:
            for n in range(mib):
                file.write(block[n % 7 :] + block[: n % 7])
        sources[mib] = source

    port = common.free_port()
    server = common.start_server(port)
    worker = common.start_worker(concurrency=1)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        api = http.client.HTTPConnection("127.0.0.1", port, timeout=120, blocksize=MIB)

        def call(method: str, path: str, body: Any = None, extra: Any = None) -> Any:
            api.request(method, path, body=body, headers={**headers, **(extra or {})})
            response = api.getresponse()
            return response

        import json

        response = call(
            "POST",
            f"/api/v1/workspaces/{workspace.pk}/runs/",
            json.dumps({"thread_id": "files", "prompt": "p"}),
            {"Content-Type": "application/json"},
        )
        run = json.loads(response.read())
        while run["status"] == "booting":
            response = call("GET", f"/api/v1/runs/{run['id']}/?wait_s=30&while_status=booting")
            run = json.loads(response.read())
        assert run["status"] == "running", run
        backend: Any = get_backend()
        home = Path(backend.root) / run["sandbox_id"] / "home"
        files_url = f"/api/v1/runs/{run['id']}/files/?path=/home/user/"

        def upload(mib: int) -> float:
            with sources[mib].open("rb") as body:
                started = time.perf_counter()
                response = call(
                    "PUT",
                    files_url + f"up-{mib}.bin",
                    body,
                    {
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(mib * MIB),
                    },
                )
                response.read()
                elapsed = time.perf_counter() - started
            assert response.status == 200, response.status
            return elapsed

        def download(mib: int) -> float:
            started = time.perf_counter()
            response = call("GET", files_url + f"up-{mib}.bin")
            total = 0
            while chunk := response.read(MIB):
                total += len(chunk)
            elapsed = time.perf_counter() - started
            assert response.status == 200 and total == mib * MIB, (response.status, total)
            return elapsed

        def cp_in() -> float:
            target = home / "cp-copy.bin"
            elapsed = common.timed(
                lambda: subprocess.run(["cp", str(sources[SIZE_MIB]), str(target)], check=True)
            )
            target.unlink()
            return elapsed

        def cp_out() -> float:
            target = work / "cp-out.bin"
            elapsed = common.timed(
                lambda: subprocess.run(
                    ["cp", str(home / f"up-{SIZE_MIB}.bin"), str(target)], check=True
                )
            )
            target.unlink()
            return elapsed

        ups = common.interleaved(lambda: upload(SIZE_MIB), cp_in, PAIRS, warmup=1)
        downs = common.interleaved(lambda: download(SIZE_MIB), cp_out, PAIRS, warmup=1)
        rss: dict[str, dict[int, int]] = {"upload": {}, "download": {}}
        peaks: dict[str, dict[int, int]] = {"upload": {}, "download": {}}
        for mib in (SMALL_MIB, SIZE_MIB, SMALL_MIB, SIZE_MIB):
            for name, move in (("upload", upload), ("download", download)):
                with _PeakRss(server.pid) as peak:
                    move(mib)
                rss[name][mib] = max(rss[name].get(mib, 0), peak.peak - peak.before)
                peaks[name][mib] = max(peaks[name].get(mib, 0), peak.peak)
        call("POST", f"/api/v1/runs/{run['id']}/cancel/", b"{}",
             {"Content-Type": "application/json"}).read()  # fmt: skip
    finally:
        common.stop(worker)
        common.stop(server)
        for source in work.iterdir():
            source.unlink()
        work.rmdir()

    print(
        f"A {SIZE_MIB} MiB file of random bytes, {PAIRS} interleaved pairs after one of "
        f"warm-up; `cp` copies the same file into (out of) the same sandbox home on the same "
        f"disk, the page cache warm for both. The client is http.client in the benchmark's "
        f"process, 1 MiB blocks. Load average at the end: {common.load()}.\n"
    )
    print("| measure | API (median) | cp (median) | API rate / cp rate, median of pairs | "
          "target | met |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, pairs, target in (("upload (`PUT files/`)", ups, 0.5),
                                ("download (`GET files/`)", downs, 0.7)):  # fmt: skip
        share = statistics.median(b / a for a, b in pairs)
        api_s = statistics.median(a for a, _ in pairs)
        cp_s = statistics.median(b for _, b in pairs)
        print(
            f"| {name} | {api_s:.3f} s ({SIZE_MIB / api_s:,.0f} MiB/s) | {cp_s:.3f} s "
            f"({SIZE_MIB / cp_s:,.0f} MiB/s) | {share:.0%} | ≥ {target:.0%} | "
            f"{common.verdict(share >= target)} |"
        )
    print()
    print(
        "The server's resident memory while it moves a file, sampled every 2 ms (max of two "
        "tries; the process had moved 100 MiB files before, so its allocator is warm):\n"
    )
    print(f"| direction | {SMALL_MIB} MiB: peak (growth) | {SIZE_MIB} MiB: peak (growth) | "
          "target |")  # fmt: skip
    print("|---|---|---|---|")
    for name, sizes in rss.items():
        small, big = peaks[name][SMALL_MIB] / MIB, peaks[name][SIZE_MIB] / MIB
        print(
            f"| {name} | {small:.0f} MiB (+{sizes[SMALL_MIB] / MIB:.1f}) | {big:.0f} MiB "
            f"(+{sizes[SIZE_MIB] / MIB:.1f}) | flat in the file's size |"
        )
    print()
    print("\n".join(common.pairs_block("upload / cp", ups, unit="s")))
    print()
    print("\n".join(common.pairs_block("download / cp", downs, unit="s")))


if __name__ == "__main__":
    setup()
    main()
