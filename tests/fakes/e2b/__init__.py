"""A local E2B for tests and development: the control-plane REST API and envd, over HTTP/1.1.

The official SDK talks to it unchanged (``api_url=`` / ``sandbox_url=``, or the per-sandbox
domain create answers with), so tests exercise the real request building, retries and
exception mapping of ``e2b==2.63.0``, against a server that behaves like E2B where Airlock
depends on it. What it imitates, and the sources each behaviour was read from, are in
``docs/e2b.md``; where a behaviour could not be confirmed from those sources, the code says so
at that spot.

Layout: ``state`` (sandboxes, their host processes, requests, faults, latencies), ``httpd``
(HTTP plumbing), ``control_plane`` (the REST API), ``envd`` (routing, files, filesystem),
``process`` (envd's process service), ``server`` (the servers together); ``python -m
tests.fakes.e2b`` runs it on its own.

What the double is not (its limits):
- Commands run as the test's own user on the host, without isolation. Only ``/home/user`` is
  mapped: a per-sandbox directory that commands get as ``HOME`` and default cwd; the text
  ``/home/user`` in a command, its args, cwd and env values is rewritten to that directory,
  and the directory back to ``/home/user`` in streamed output (not in files a command writes).
  ``TMPDIR`` is a per-sandbox directory; every other absolute path is the host's.
- No PTY, no ``StreamInput``, no watchers, snapshots, metrics, logs, volumes, templates API or
  network enforcement (network options are recorded and reported back, not applied). Every
  sandbox reports ``cpu_count=2``, ``memory_mb=512``.
"""

from .server import FakeE2BServer
from .state import (
    ENVD_VERSION,
    FAKE_API_KEY,
    FakeE2BState,
    FakeSandbox,
    Latencies,
    RecordedRequest,
)

__all__ = [
    "ENVD_VERSION",
    "FAKE_API_KEY",
    "FakeE2BServer",
    "FakeE2BState",
    "FakeSandbox",
    "Latencies",
    "RecordedRequest",
]
