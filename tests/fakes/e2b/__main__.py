"""Run the E2B double on its own: ``python -m tests.fakes.e2b --port 8900``.

It prints the variables that point Airlock (or any E2B SDK user) at it and serves until
stopped (Ctrl-C or SIGTERM). Sandboxes live in a temporary directory removed on exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .server import FakeE2BServer
from .state import FAKE_API_KEY, Latencies, Latency


def _latency(text: str) -> tuple[str, Latency]:
    """``create=0.15-0.45`` or ``kill=0.05``."""
    name, _, value = text.partition("=")
    if name not in Latencies.names():
        raise argparse.ArgumentTypeError(f"unknown operation {name!r}: {Latencies.names()}")
    try:
        low, _, high = value.partition("-")
        return name, (float(low), float(high)) if high else float(low)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not seconds or a low-high range: {value!r}") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.e2b", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="control-plane port (0: any)")
    parser.add_argument(
        "--envd-port", type=int, default=None, help="envd port (default: --port + 1, or any)"
    )
    parser.add_argument(
        "--latency",
        type=_latency,
        action="append",
        default=[],
        metavar="OP=SECONDS[-SECONDS]",
        help=f"answer OP this slowly, e.g. create=0.15-0.45 ({', '.join(Latencies.names())})",
    )
    args = parser.parse_args(argv)
    envd_port = (
        args.envd_port if args.envd_port is not None else (args.port + 1 if args.port else 0)
    )
    server = FakeE2BServer(host=args.host, api_port=args.port, envd_port=envd_port)
    for name, value in args.latency:
        setattr(server.state.latencies, name, value)
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with server:
        print(f"E2B_API_URL={server.api_url}")
        print(f"E2B_SANDBOX_URL={server.sandbox_url}")
        print(f"E2B_API_KEY={FAKE_API_KEY}")
        print(
            f"# per-sandbox domain {server.sandbox_domain} (HTTPS) instead of E2B_SANDBOX_URL: "
            f"SSL_CERT_FILE={server.ca_bundle}",
            file=sys.stderr,
        )
        sys.stdout.flush()
        stopped.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
