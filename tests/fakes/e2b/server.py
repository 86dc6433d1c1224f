"""The double's servers: the control plane, envd on one sandbox URL, and envd on the per-sandbox
domain (HTTPS, as the SDK addresses it: https://49983-<sandbox id>.<domain>).

The per-sandbox domain is ``e2b-fake.localhost:<port>``: ``*.localhost`` resolves to the
loopback address in the SDK's resolver (pyqwest's, RFC 6761), and the port rides in the domain
because the SDK builds the host as ``f"{port}-{sandbox_id}.{domain}"``. Its certificate comes
from a throwaway CA (``trustme``); a client trusts it through ``ca_bundle`` (certifi's roots
plus that CA), e.g. ``SSL_CERT_FILE``, which the SDK's rustls transport reads when it is made.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import threading
from pathlib import Path

import certifi
import trustme

from .control_plane import ControlPlane
from .envd import Envd
from .httpd import Server
from .state import FakeE2BState

DOMAIN_NAME = "e2b-fake.localhost"


class FakeE2BServer:
    """The double: start it, point the SDK at ``api_url`` / ``sandbox_url`` (or trust
    ``ca_bundle`` and leave the sandbox URL out to go through ``sandbox_domain``), read
    ``state``."""

    def __init__(self, *, host: str = "127.0.0.1", api_port: int = 0, envd_port: int = 0) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="fake-e2b-"))
        try:
            self._setup(host, api_port, envd_port)
        except BaseException:
            shutil.rmtree(self._root, ignore_errors=True)  # e.g. the port was taken
            raise
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def _setup(self, host: str, api_port: int, envd_port: int) -> None:
        self.state = FakeE2BState(self._root / "sandboxes")
        self.state.root.mkdir()
        ca = trustme.CA()
        self.ca_bundle = self._root / "ca-bundle.pem"
        self.ca_bundle.write_bytes(Path(certifi.where()).read_bytes() + ca.cert_pem.bytes())
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(f"*.{DOMAIN_NAME}").configure_cert(tls)
        envd = Envd(self.state)
        self._api = Server("api", self.state, ControlPlane(self.state), host=host, port=api_port)
        self._envd = Server("envd", self.state, envd, host=host, port=envd_port)
        self._envd_tls = Server("envd", self.state, envd, host="127.0.0.1", tls=tls)
        self.state.sandbox_domain = f"{DOMAIN_NAME}:{self._envd_tls.port}"

    @property
    def api_url(self) -> str:
        return self._api.url

    @property
    def sandbox_url(self) -> str:
        return self._envd.url

    @property
    def sandbox_domain(self) -> str:
        assert self.state.sandbox_domain is not None
        return self.state.sandbox_domain

    def start(self) -> FakeE2BServer:
        for server in (self._api, self._envd, self._envd_tls):
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-e2b-{server.role}-{server.scheme}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        reaper = threading.Thread(target=self._reap, name="fake-e2b-reaper", daemon=True)
        reaper.start()
        self._threads.append(reaper)
        return self

    def _reap(self) -> None:
        while not self._stopping.wait(0.05):
            self.state.reap_expired()

    def stop(self) -> None:
        self._stopping.set()
        self.state.reset()
        for server in (self._api, self._envd, self._envd_tls):
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> FakeE2BServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
