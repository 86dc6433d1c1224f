"""E2B sandboxes through the official SDK (``e2b`` pinned exactly, sync API).

Every SDK call goes through :meth:`E2BBackend._sdk_call` (or ``_sdk_errors``), the one place
that maps the SDK's exceptions — which do not share a base class — and raw transport errors
onto ``base``'s normalised ones. What goes over the wire for each operation, and which of
E2B's behaviours this relies on, is in docs/e2b.md.

Things the SDK or E2B would otherwise decide:

- The SDK falls back to ``E2B_API_KEY`` / ``E2B_API_URL`` / ``E2B_SANDBOX_URL`` /
  ``E2B_DOMAIN`` / ``E2B_DEBUG`` from the process environment for every option left empty (and
  ``E2B_DEBUG`` makes create and kill silently skip the API). The backend passes all of them
  from its own configuration; the sandbox URL only when one is configured, so that otherwise
  each sandbox is reached on the domain the API answers for it (self-hosted and BYOC clusters).
- ``Sandbox.connect`` resumes a paused sandbox (and moves a running one's deadline). Calls on a
  sandbox read it with ``GET /sandboxes/{id}`` instead, which changes nothing: a paused sandbox
  is reported (SandboxPaused), never resumed behind the caller's back.
- envd signals only a command's main process, at its deadline and on kill, and a command's
  stream stays open while anything holds its stdout or stderr. So every command runs under a
  small bash wrapper (``_FOREGROUND``) that puts it in a process group of its own, sends its
  output through files in the sandbox (where background children can neither block nor die
  of a closed pipe) and streams them while the command's own process lives; a timeout, a
  cancel or an error kills that group with a second command (``_KILL_FOREGROUND``). The
  wrapper needs bash and GNU coreutils (``tail --pid``, ``dd iflag=count_bytes``, ``base64``)
  in the template, as E2B's ``base`` has.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import shlex
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, BinaryIO, Literal, TypeVar

import httpx
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b import (
    AuthenticationException,
    CommandExitException,
    ConnectionConfig,
    FileNotFoundException,
    FileType,
    NotFoundException,
    RateLimitException,
    Sandbox,
    SandboxException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxUnreachableException,
    ServiceBusyException,
    TimeoutException,
)
from e2b import SandboxInfo as E2BSandboxInfo
from e2b.api import handle_api_exception
from e2b.api.client.api.sandboxes import get_sandboxes_sandbox_id
from e2b.api.client.models import SandboxDetail, SandboxState
from e2b.api.client_sync import get_api_client
from e2b.exceptions import SandboxNotFoundException
from e2b.sandbox.filesystem.filesystem import FileStreamReader
from e2b.sandbox.sandbox_api import SandboxNetworkOpts
from e2b.sandbox_sync.commands.command_handle import CommandHandle
from packaging.version import Version

from .base import (
    DEFAULT_MAX_OUTPUT_BYTES,
    SANDBOX_HOME,
    BackendError,
    CommandCanceled,
    CommandNotFound,
    CommandOutput,
    CommandResult,
    CommandTimeout,
    FileEntry,
    NetworkPolicy,
    OutputCallback,
    OutputStream,
    SandboxBackend,
    SandboxFileNotFound,
    SandboxInfo,
    SandboxNotFound,
    SandboxPaused,
    TransientBackendError,
    UnsupportedOption,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DOMAIN = "e2b.app"
_LIST_PAGE_SIZE = 100
# connectrpc codes that describe the path to the sandbox rather than the request.
_TRANSIENT_RPC_CODES = frozenset(
    {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED, Code.ABORTED}
)
# The short commands the backend runs for itself (kill a group, read a background command).
_CONTROL_TIMEOUT_S = 30
# The in-sandbox watchdog kills a timed-out command's group this long after its timeout, in
# case the backend's own kill never arrives (the worker died meanwhile).
_WATCHDOG_GRACE_S = 5
# A command whose wrapper was killed by a signal this close to its timeout (or later) timed
# out: envd's deadline and the client's run on different clocks.
_DEADLINE_SLACK_S = 0.5
_COMMAND_ID = re.compile(r"[0-9a-f]{32}")
_EXIT_NOT_FOUND = 3  # what the status and kill scripts exit with for an unknown handle
# E2B's ALL_TRAFFIC (infra sandbox-network AllInternetTrafficCIDR); IPv4 only.
_ALL_TRAFFIC = "0.0.0.0/0"
_DOMAIN = re.compile(r"(\*\.)?([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
# envd reports a command killed by a signal as exit -1 with Go's name for the signal
# ("signal: killed"); Go's names are strsignal's, lower-cased.
_SIGNAL_NUMBERS = {(signal.strsignal(s) or "").lower(): s.value for s in signal.Signals}

# Where a command's files live in the sandbox (not in the home: no artifact sees them).
_DIR = '"${TMPDIR:-/tmp}/airlock-cmd/%s"'
# Every process a command starts inherits AIRLOCK_COMMAND=<its id> (the directory's name);
# this kills them all, the ones that left the command's process group too (`setsid`, a
# double fork): envd signals one pid and has no cgroup per command. Only a process that
# clears its own environment escapes, until the sandbox ends. Twice: a process forking while
# the first pass kills its parent is caught by the second.
_KILL_TAGGED = (
    "for _ in 1 2; do for e in /proc/[0-9]*/environ; do q=${e#/proc/}; q=${q%/environ}; "
    'grep -qzxF "AIRLOCK_COMMAND=${d##*/}" "$e" 2>/dev/null && kill -KILL "$q" 2>/dev/null; '
    "done; done;"
)

# A foreground command. Arguments: the command id, the command, the watchdog. The command runs
# as a job of its own (``set -m``: its own process group, pgid = its pid, in $d/pgid) with its
# output appended to files, which the two ``tail``s stream to envd until the command's own
# process is gone; then the wrapper exits with its status, and envd's pipes close even when
# background children live on, writing to the (then unlinked) files.
_FOREGROUND = """\
d=%(dir)s
mkdir -p "$d" && : >>"$d/out" && : >>"$d/err" || { echo "airlock: cannot write $d" >&2; exit 125; }
set -m
AIRLOCK_COMMAND="${d##*/}" /bin/bash -c %(command)s </dev/null >>"$d/out" 2>>"$d/err" &
p=$!
set +m
echo "$p" >"$d/pgid"
%(watchdog)s
tail -q -c +1 -s 0.02 --pid="$p" -f "$d/out" &
o=$!
tail -q -c +1 -s 0.02 --pid="$p" -f "$d/err" >&2 &
e=$!
wait "$p"
r=$?
wait "$o" "$e"
[ -f "$d/watchdog" ] && kill "$(cat "$d/watchdog")" 2>/dev/null
rm -rf "$d"
exit "$r"
"""
_WATCHDOG = """\
( trap 'kill "$s" 2>/dev/null; exit 0' TERM; sleep %(after)s & s=$!; wait "$s" && \
{ kill -KILL -- "-$p"; %(kill_tagged)s } ) </dev/null >/dev/null 2>&1 &
echo "$!" >"$d/watchdog"
"""
# Kill a foreground command's group (and its watchdog), whatever became of its wrapper.
_KILL_FOREGROUND = """\
d=%(dir)s
[ -f "$d/watchdog" ] && kill "$(cat "$d/watchdog")" 2>/dev/null
[ -f "$d/pgid" ] && kill -KILL -- "-$(cat "$d/pgid")" 2>/dev/null
%(kill_tagged)s
rm -rf "$d"
exit 0
"""
# Start a background command: a runner job (its own group, pgid in $d/pgid) detached from the
# launcher, which returns at once. The runner keeps the first ``max`` bytes of each stream in
# $d/out and $d/err (marking $d/out.cut when it dropped some; the rest is read and dropped, so
# the command never blocks on a full pipe), and writes the exit status to $d/exit.
_START_BACKGROUND = """\
d=%(dir)s
mkdir -p "$d" || { echo "airlock: cannot write $d" >&2; exit 125; }
set -m
/bin/bash -c %(runner)s airlock "$d" %(max)d %(command)s </dev/null >/dev/null 2>&1 &
echo "$!" >"$d/pgid"
"""
_RUNNER = """\
d=$1 m=$2
cap() {
  dd of="$1" bs=64K count="$m" iflag=count_bytes status=none
  if LC_ALL=C read -r -d '' -n 1 _; then : >"$1.cut"; cat >/dev/null; fi
}
mkfifo "$d/out.fifo" "$d/err.fifo" || exit 125
cap "$d/out" <"$d/out.fifo" &
co=$!
cap "$d/err" <"$d/err.fifo" &
ce=$!
AIRLOCK_COMMAND="${d##*/}" /bin/bash -c "$3" </dev/null >"$d/out.fifo" 2>"$d/err.fifo" &
echo "$!" >"$d/pid"
wait "$!"
r=$?
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  kill -0 "$co" 2>/dev/null || kill -0 "$ce" 2>/dev/null || break
  sleep 0.05
done
echo "$r" >"$d/exit.tmp" && mv "$d/exit.tmp" "$d/exit"
"""
_STATUS_MARK = "airlock-command-status"
_STATUS = """\
d=%(dir)s
[ -d "$d" ] || exit 3
if [ -f "$d/killed" ]; then s=killed
elif [ -f "$d/exit" ]; then s="exit $(cat "$d/exit")"
elif kill -0 "$(cat "$d/pgid" 2>/dev/null)" 2>/dev/null; then s=running
else s=lost
fi
echo %(mark)s
echo "$s"
if [ -f "$d/out.cut" ] || [ -f "$d/err.cut" ]; then echo 1; else echo 0; fi
tail -c +%(stdout_from)d "$d/out" 2>/dev/null | head -c %(max)d | base64 -w0; echo
tail -c +%(stderr_from)d "$d/err" 2>/dev/null | head -c %(max)d | base64 -w0; echo
"""
_KILL_BACKGROUND = """\
d=%(dir)s
[ -d "$d" ] || exit 3
if [ -f "$d/exit" ] || [ -f "$d/killed" ]; then was=0; else was=1; : >"$d/killed"; fi
[ -f "$d/pgid" ] && kill -KILL -- "-$(cat "$d/pgid")" 2>/dev/null
%(kill_tagged)s
echo %(mark)s
echo "$was"
"""


class _BoundedText:
    """Collects streamed text up to ``limit`` UTF-8 bytes and remembers if it dropped any."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._parts: list[str] = []
        self.truncated = False

    def append(self, text: str) -> None:
        if self.truncated:
            return
        data = text.encode()
        room = self._limit - self._size
        if len(data) > room:
            # Cut on a character boundary: a split multi-byte character is dropped whole.
            self._parts.append(data[: max(room, 0)].decode(errors="ignore"))
            self._size = self._limit
            self.truncated = True
            return
        self._parts.append(text)
        self._size += len(data)

    def text(self) -> str:
        return "".join(self._parts)


class E2BBackend(SandboxBackend):
    name = "e2b"
    supports_pause = True

    def __init__(
        self,
        *,
        api_key: str,
        api_url: str | None,
        sandbox_url: str | None,
        template: str,
        request_timeout_s: float,
        domain: str | None = None,
    ) -> None:
        self.api_key = api_key
        self.domain = domain or DEFAULT_DOMAIN
        self.api_url = api_url or f"https://api.{self.domain}"
        self.sandbox_url = sandbox_url or None  # None: each sandbox's own domain
        self.template = template
        self.request_timeout_s = request_timeout_s

    @classmethod
    def from_settings(cls) -> E2BBackend:
        from django.conf import settings

        return cls(
            api_key=getattr(settings, "E2B_API_KEY", None) or "",
            api_url=getattr(settings, "E2B_API_URL", None),
            sandbox_url=getattr(settings, "E2B_SANDBOX_URL", None),
            template=getattr(settings, "E2B_TEMPLATE", None) or "base",
            request_timeout_s=float(getattr(settings, "E2B_REQUEST_TIMEOUT_S", None) or 30),
            domain=getattr(settings, "E2B_DOMAIN", None),
        )

    # -- SDK plumbing ----------------------------------------------------------------------------

    def _opts(self) -> dict[str, Any]:
        """Connection options for every SDK call: explicit, so the environment never decides.

        ``sandbox_url`` goes only when configured; the SDK then reaches envd on the sandbox's
        own domain. (Connections to envd are configured in ``_config``, which also keeps the
        SDK from reading ``E2B_SANDBOX_URL`` from the environment.)"""
        if not self.api_key:
            raise BackendError(
                "E2B_API_KEY is not set: create a key at https://e2b.dev/dashboard?tab=keys "
                "and set E2B_API_KEY (or use SANDBOX_BACKEND=local)"
            )
        opts: dict[str, Any] = {
            "api_key": self.api_key,
            "api_url": self.api_url,
            "domain": self.domain,
            "debug": False,
            "request_timeout": self.request_timeout_s,
        }
        if self.sandbox_url:
            opts["sandbox_url"] = self.sandbox_url
        return opts

    def _config(self, extra_sandbox_headers: dict[str, str] | None = None) -> ConnectionConfig:
        config = ConnectionConfig(extra_sandbox_headers=extra_sandbox_headers, **self._opts())
        # ConnectionConfig falls back to the E2B_SANDBOX_URL environment variable for an
        # empty sandbox_url (its instance attribute shadows a static method of that name);
        # only the configuration decides here.
        vars(config)["_sandbox_url"] = self.sandbox_url
        return config

    @contextmanager
    def _sdk_errors(self, action: str) -> Iterator[None]:
        """Translate whatever the SDK or its transports raise into ``base``'s errors."""
        try:
            yield
        except BackendError:
            raise
        except AuthenticationException as e:
            raise BackendError(
                f"E2B rejected the API key while trying to {action} (401): E2B_API_KEY is wrong "
                f"or revoked for {self.api_url}"
            ) from e
        except (RateLimitException, ServiceBusyException) as e:
            raise TransientBackendError(f"E2B is busy, could not {action}: {e}") from e
        except (SandboxNotRunningException, NotFoundException) as e:
            if isinstance(e, FileNotFoundException):
                raise SandboxFileNotFound(f"could not {action}: {e}") from e
            # SandboxNotFoundException from the API, SandboxNotRunningException from the
            # proxy in front of a sandbox that was killed or reached its deadline.
            raise SandboxNotFound(f"could not {action}: the sandbox is gone ({e})") from e
        except SandboxUnreachableException as e:
            raise TransientBackendError(f"sandbox unreachable, could not {action}: {e}") from e
        except TimeoutException as e:
            raise TransientBackendError(f"E2B timed out, could not {action}: {e}") from e
        except SandboxException as e:
            status = e.status_code
            if status is not None and status >= 500:
                raise TransientBackendError(f"E2B failed to {action} ({status}): {e}") from e
            raise BackendError(f"E2B refused to {action}: {e}") from e
        except ConnectError as e:
            error_class = TransientBackendError if e.code in _TRANSIENT_RPC_CODES else BackendError
            raise error_class(f"envd failed to {action}: {e}") from e
        except (httpx.TransportError, OSError) as e:
            # OSError covers the builtin ConnectionError/TimeoutError of the SDK's transport.
            raise TransientBackendError(
                f"could not reach E2B to {action} ({self.api_url}): {e!r}"
            ) from e

    def _sdk_call(self, action: str, call: Callable[[], T]) -> T:
        with self._sdk_errors(action):
            return call()

    def _detail(self, sandbox_id: str) -> SandboxDetail:
        """``GET /sandboxes/{id}``: state, envd's token and the sandbox's domain, changing
        nothing (``Sandbox.connect`` would resume a paused sandbox)."""
        config = self._config()

        def read() -> SandboxDetail:
            answer = get_sandboxes_sandbox_id.sync_detailed(
                sandbox_id, client=get_api_client(config)
            )
            if answer.status_code == 404:
                raise SandboxNotFoundException(f"Sandbox {sandbox_id} not found")
            if answer.status_code >= 300:
                raise handle_api_exception(answer)
            if not isinstance(answer.parsed, SandboxDetail):
                raise SandboxException(f"unexpected answer for sandbox {sandbox_id}")
            return answer.parsed

        return self._sdk_call(f"read sandbox {sandbox_id}", read)

    def _open(self, sandbox_id: str) -> Sandbox:
        """An SDK handle on a running sandbox, for envd calls; SandboxPaused when paused."""
        detail = self._detail(sandbox_id)
        if detail.state == SandboxState.PAUSED:
            raise SandboxPaused(f"sandbox {sandbox_id} is paused: resume it first")
        token = detail.envd_access_token if isinstance(detail.envd_access_token, str) else None
        headers = {
            "E2b-Sandbox-Id": sandbox_id,
            "E2b-Sandbox-Port": str(ConnectionConfig.envd_port),
        }
        if token is not None:
            headers["X-Access-Token"] = token
        # What Sandbox.connect builds from its answer (sandbox_sync/main.py
        # _cls_connect_sandbox), from the read instead.
        return Sandbox(
            sandbox_id=sandbox_id,
            sandbox_domain=detail.domain if isinstance(detail.domain, str) else None,
            envd_version=Version(detail.envd_version),
            envd_access_token=token,
            traffic_access_token=None,
            connection_config=self._config(headers),
        )

    def _gone_or_paused(self, sandbox_id: str, cause: Exception) -> BackendError:
        """After envd stopped answering: SandboxPaused or SandboxNotFound, as the API says;
        a transient error when it cannot tell."""
        try:
            detail = self._detail(sandbox_id)
        except SandboxNotFound as e:
            return e
        except BackendError:
            return TransientBackendError(f"sandbox {sandbox_id} stopped answering: {cause}")
        if detail.state == SandboxState.PAUSED:
            return SandboxPaused(f"sandbox {sandbox_id} was paused during the call")
        return TransientBackendError(f"sandbox {sandbox_id} stopped answering: {cause}")

    @staticmethod
    def _info(info: E2BSandboxInfo) -> SandboxInfo:
        paused = info.state == SandboxState.PAUSED
        return SandboxInfo(
            sandbox_id=info.sandbox_id,
            metadata=dict(info.metadata or {}),
            cpu_count=info.cpu_count,
            memory_mb=info.memory_mb,
            started_at=_aware(info.started_at),
            # E2B keeps a paused sandbox until it is killed; its endAt is then the pause time.
            end_at=None if paused else _aware(info.end_at),
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def check_network(self, network: NetworkPolicy) -> None:
        """What E2B can enforce (infra sandbox_create.go ``validateEgressRules``): deny rules
        name IPs or CIDRs, never domains; allow rules IPs, CIDRs or domains, and a domain only
        when all other traffic is denied (internet off)."""
        for entry in network.deny_out:
            if not _is_ip_or_cidr(entry):
                raise UnsupportedOption(
                    f"the e2b backend can deny only IP addresses and CIDR blocks, not {entry!r}"
                )
        for entry in network.allow_out:
            if _is_ip_or_cidr(entry):
                continue
            if _DOMAIN.fullmatch(entry) is None or len(entry) > 253:
                raise UnsupportedOption(
                    f"the e2b backend cannot allow {entry!r}: not an IP address, CIDR block or "
                    "domain name"
                )
            if network.internet:
                raise UnsupportedOption(
                    f"the e2b backend can allow a domain ({entry!r}) only with internet off: "
                    "E2B matches domains only when all other traffic is denied"
                )

    @staticmethod
    def _network_options(network: NetworkPolicy | None) -> dict[str, Any]:
        """The SDK's own options for a policy: ``allow_internet_access`` alone when no list is
        given, else ``network`` (deny 0.0.0.0/0 is what internet off means to E2B, and allow
        rules take precedence over deny rules)."""
        network = network or NetworkPolicy()
        if not network.allow_out and not network.deny_out:
            return {"allow_internet_access": network.internet}
        rules: SandboxNetworkOpts = {}
        if network.allow_out:
            rules["allow_out"] = list(network.allow_out)
        deny = list(network.deny_out)
        if not network.internet and _ALL_TRAFFIC not in deny:
            deny.insert(0, _ALL_TRAFFIC)
        if deny:
            rules["deny_out"] = deny
        options: dict[str, Any] = {"network": rules}
        if network.internet:
            options["allow_internet_access"] = True
        return options

    def create(
        self,
        *,
        template: str,
        metadata: dict[str, str],
        envs: dict[str, str],
        timeout_s: int,
        network: NetworkPolicy | None = None,
    ) -> SandboxInfo:
        if network is not None:
            self.check_network(network)
        opts = self._opts()
        template = template or self.template
        options = self._network_options(network)
        sandbox = self._sdk_call(
            f"create a sandbox from template {template!r}",
            lambda: Sandbox.create(
                template=template,
                timeout=timeout_s,
                metadata=metadata,
                envs=envs,
                **options,
                **opts,
            ),
        )
        try:
            # The create answer carries no sizes or times; cost and deadlines need them.
            info = self._sdk_call(
                f"read sandbox {sandbox.sandbox_id}", lambda: sandbox.get_info(**opts)
            )
        except BackendError:
            # Nobody knows this sandbox's id yet: kill it rather than leave it to reconcile.
            self._kill_quietly(sandbox.sandbox_id)
            raise
        return self._info(info)

    def _kill_quietly(self, sandbox_id: str) -> None:
        try:
            self.kill(sandbox_id)
        except BackendError:
            logger.warning("could not kill sandbox %s; reconcile will find it", sandbox_id)

    def kill(self, sandbox_id: str) -> bool:
        opts = self._opts()
        return self._sdk_call(
            f"kill sandbox {sandbox_id}", lambda: Sandbox.kill(sandbox_id, **opts)
        )

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        opts = self._opts()
        try:
            self._sdk_call(
                f"set the timeout of sandbox {sandbox_id}",
                lambda: Sandbox.set_timeout(sandbox_id, timeout_s, **opts),
            )
        except SandboxNotFound as e:
            # E2B answers 404 for a paused sandbox too (it is not in the orchestrator).
            raise self._gone_or_paused(sandbox_id, e) from e

    def get_info(self, sandbox_id: str) -> SandboxInfo:
        return self._info(E2BSandboxInfo._from_sandbox_detail(self._detail(sandbox_id)))

    def pause(self, sandbox_id: str) -> None:
        """``POST /sandboxes/{id}/pause`` with a memory snapshot: processes, memory and files
        kept. Pausing a paused sandbox is a no-op (E2B's 409)."""
        opts = self._opts()
        self._sdk_call(f"pause sandbox {sandbox_id}", lambda: Sandbox.pause(sandbox_id, **opts))

    def resume(self, sandbox_id: str, *, timeout_s: int) -> None:
        """``POST /v2/sandboxes/{id}/connect`` with the timeout, which resumes a paused
        sandbox; a running one is left alone (connect would move its deadline)."""
        if self._detail(sandbox_id).state != SandboxState.PAUSED:
            return
        opts = self._opts()
        self._sdk_call(
            f"resume sandbox {sandbox_id}",
            lambda: Sandbox.connect(sandbox_id, timeout=timeout_s, **opts),
        )

    def list_sandboxes(self, metadata: dict[str, str]) -> list[SandboxInfo]:
        """Running and paused ones (E2B's default), newest first."""
        opts = self._opts()
        paginator = Sandbox.list(
            query=SandboxQuery(metadata=dict(metadata)), limit=_LIST_PAGE_SIZE, **opts
        )
        found: list[SandboxInfo] = []
        while paginator.has_next:  # follows x-next-token to the last page
            page = self._sdk_call("list sandboxes", paginator.next_items)
            found.extend(self._info(info) for info in page)
        return found

    def check(self) -> str:
        opts = self._opts()  # BackendError naming E2B_API_KEY when it is missing
        paginator = Sandbox.list(limit=_LIST_PAGE_SIZE, **opts)
        try:
            page = self._sdk_call("list sandboxes", paginator.next_items)
        except TransientBackendError as e:
            raise TransientBackendError(
                f"E2B API at {self.api_url} is unreachable or failing: {e}. Check E2B_API_URL "
                "and the network, or retry if E2B reports an outage"
            ) from e
        except BackendError as e:
            if isinstance(e.__cause__, AuthenticationException):
                raise  # already says to fix E2B_API_KEY
            raise BackendError(
                f"E2B API at {self.api_url} answered unexpectedly: {e}. Check E2B_API_URL"
            ) from e
        count = f"{len(page)}{'+' if paginator.has_next else ''}"
        return (
            f"e2b: API {self.api_url} accepted the key; live sandboxes: {count}; "
            f"template {self.template!r}"
        )

    # -- commands --------------------------------------------------------------------------------

    def run(
        self,
        sandbox_id: str,
        command: str,
        *,
        timeout_s: float,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        cancel: threading.Event | None = None,
    ) -> CommandResult:
        sandbox = self._open(sandbox_id)
        run = _ForegroundRun(self, sandbox, command, timeout_s, on_output, max_output_bytes)
        with self._sdk_errors(f"run a command in sandbox {sandbox_id}"):
            return run.execute(cwd=cwd or SANDBOX_HOME, envs=envs or {}, cancel=cancel)

    def _kill_group(self, sandbox: Sandbox, command_id: str) -> None:
        """Kill a foreground command's group: best effort (its watchdog, and the sandbox's
        end, get the rest)."""
        script = _KILL_FOREGROUND % {"dir": _DIR % command_id, "kill_tagged": _KILL_TAGGED}
        try:
            sandbox.commands.run(script, timeout=_CONTROL_TIMEOUT_S)
        except Exception:
            logger.warning(
                "could not kill command %s in sandbox %s", command_id, sandbox.sandbox_id,
                exc_info=True,
            )  # fmt: skip

    def start_command(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> str:
        sandbox = self._open(sandbox_id)
        command_id = uuid.uuid4().hex
        script = _START_BACKGROUND % {
            "dir": _DIR % command_id,
            "runner": shlex.quote(_RUNNER),
            "max": max(max_output_bytes, 0),
            "command": shlex.quote(command),
        }
        self._control(
            sandbox,
            f"start a background command in sandbox {sandbox_id}",
            script,
            cwd=cwd or SANDBOX_HOME,
            envs=envs or {},
        )
        return command_id

    def command_output(
        self,
        sandbox_id: str,
        handle: str,
        *,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> CommandOutput:
        command_id = _command_id(handle)
        sandbox = self._open(sandbox_id)
        script = _STATUS % {
            "dir": _DIR % command_id,
            "mark": _STATUS_MARK,
            "stdout_from": max(stdout_offset, 0) + 1,
            "stderr_from": max(stderr_offset, 0) + 1,
            "max": max(max_bytes, 0),
        }
        lines = self._control(
            sandbox, f"read background command {handle} in sandbox {sandbox_id}", script, handle
        )
        if len(lines) != 4:
            raise BackendError(f"unreadable status of background command {handle}: {lines!r}")
        state, cut, stdout_b64, stderr_b64 = lines
        stdout = base64.b64decode(stdout_b64)
        stderr = base64.b64decode(stderr_b64)
        exit_code = int(state.split()[1]) if state.startswith("exit ") else None
        return CommandOutput(
            stdout=stdout,
            stderr=stderr,
            stdout_end=max(stdout_offset, 0) + len(stdout),
            stderr_end=max(stderr_offset, 0) + len(stderr),
            exit_code=exit_code,
            running=state == "running",
            truncated=cut == "1",
        )

    def kill_command(self, sandbox_id: str, handle: str) -> bool:
        command_id = _command_id(handle)
        sandbox = self._open(sandbox_id)
        script = _KILL_BACKGROUND % {
            "dir": _DIR % command_id,
            "mark": _STATUS_MARK,
            "kill_tagged": _KILL_TAGGED,
        }
        lines = self._control(
            sandbox, f"kill background command {handle} in sandbox {sandbox_id}", script, handle
        )
        return lines == ["1"]

    def _control(
        self,
        sandbox: Sandbox,
        action: str,
        script: str,
        handle: str | None = None,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
    ) -> list[str]:
        """Run one of the backend's own short scripts; the lines it printed after its mark."""
        with self._sdk_errors(action):
            try:
                result = sandbox.commands.run(
                    script, cwd=cwd, envs=envs, timeout=_CONTROL_TIMEOUT_S
                )
            except CommandExitException as e:
                if handle is not None and e.exit_code == _EXIT_NOT_FOUND:
                    raise CommandNotFound(handle) from e
                raise BackendError(f"could not {action}: {e}") from e
            except SandboxNotRunningException as e:
                raise self._gone_or_paused(sandbox.sandbox_id, e) from e
        lines = (result.stdout or "").splitlines()
        if _STATUS_MARK in lines:  # a login shell's profile may print before the mark
            return lines[len(lines) - lines[::-1].index(_STATUS_MARK) :]
        return []

    # -- files -----------------------------------------------------------------------------------

    def write_file(self, sandbox_id: str, path: str, data: bytes | BinaryIO) -> None:
        sandbox = self._open(sandbox_id)
        # bytes go as one multipart body; a file object is streamed (octet-stream, chunked).
        self._sdk_call(
            f"write {path} in sandbox {sandbox_id}", lambda: sandbox.files.write(path, data)
        )

    def read_file(
        self, sandbox_id: str, path: str, *, chunk_size: int = 64 * 1024
    ) -> Iterator[bytes]:
        sandbox = self._open(sandbox_id)
        action = f"read {path} in sandbox {sandbox_id}"
        # format="stream" answers with the response headers, so a missing file raises here,
        # before the caller gets an iterator; the body is read as the caller iterates.
        reader = self._sdk_call(action, lambda: sandbox.files.read(path, format="stream"))
        return self._stream(reader, action, chunk_size)

    def _stream(self, reader: FileStreamReader, action: str, chunk_size: int) -> Iterator[bytes]:
        with self._sdk_errors(action):
            try:
                for chunk in reader:
                    for start in range(0, len(chunk), chunk_size):
                        yield chunk[start : start + chunk_size]
            finally:
                reader.close()  # releases the connection when the caller stops early

    def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        sandbox = self._open(sandbox_id)
        entries = self._sdk_call(
            f"list {path} in sandbox {sandbox_id}", lambda: sandbox.files.list(path, depth=1)
        )
        return [
            FileEntry(
                name=entry.name,
                path=entry.path,
                type=_entry_type(entry.type),
                size=entry.size if entry.type == FileType.FILE else None,
                mode=getattr(entry, "mode", None),
            )
            for entry in entries
        ]


class _ForegroundRun:
    """One foreground command: the wrapper started through the SDK, its output collected
    (bounded) and forwarded, and its group killed on timeout, cancel or any failure."""

    def __init__(
        self,
        backend: E2BBackend,
        sandbox: Sandbox,
        command: str,
        timeout_s: float,
        on_output: OutputCallback | None,
        max_output_bytes: int,
    ) -> None:
        self.backend = backend
        self.sandbox = sandbox
        self.timeout_s = timeout_s
        self.on_output = on_output
        self.command_id = uuid.uuid4().hex
        self.outputs = {
            "stdout": _BoundedText(max_output_bytes),
            "stderr": _BoundedText(max_output_bytes),
        }
        watchdog = ""
        if timeout_s > 0:
            watchdog = _WATCHDOG % {
                "after": f"{timeout_s + _WATCHDOG_GRACE_S:g}",
                "kill_tagged": _KILL_TAGGED,
            }
        self.script = _FOREGROUND % {
            "dir": _DIR % self.command_id,
            "command": shlex.quote(command),
            "watchdog": watchdog,
        }
        self.done = threading.Event()
        self.canceled = threading.Event()
        self.started = time.monotonic()

    def _receiver(self, stream: OutputStream) -> Callable[[str], None]:
        def receive(text: str) -> None:
            self.outputs[stream].append(text)
            if self.on_output is not None:
                self.on_output(stream, text)

        return receive

    def _timed_out(self) -> bool:
        elapsed = time.monotonic() - self.started
        return self.timeout_s > 0 and elapsed >= self.timeout_s - _DEADLINE_SLACK_S

    def _watch(self, cancel: threading.Event) -> None:
        while not self.done.is_set():
            if cancel.wait(timeout=0.1) and not self.done.is_set():
                self.canceled.set()
                self.backend._kill_group(self.sandbox, self.command_id)
                return

    def execute(
        self, *, cwd: str, envs: dict[str, str], cancel: threading.Event | None
    ) -> CommandResult:
        """The result, or CommandTimeout / CommandCanceled / the SDK's error (for
        ``_sdk_errors``). envd ends a timed-out command's stream with DEADLINE_EXCEEDED (the
        SDK's TimeoutException) or, racing it, an end event with exit -1: both are the
        command's timeout once its time is up."""
        handle: CommandHandle[Any] | None = None
        error: str | None = None
        try:
            # background=True returns once the command started; output is kept by us
            # (bounded), not by the SDK.
            handle = self.sandbox.commands.run(
                self.script,
                background=True,
                envs=envs,
                cwd=cwd,
                timeout=self.timeout_s,
                retain_output=False,
            )
            if cancel is not None:
                threading.Thread(target=self._watch, args=(cancel,), daemon=True).start()
            try:
                exit_code = handle.wait(
                    on_stdout=self._receiver("stdout"), on_stderr=self._receiver("stderr")
                ).exit_code
            except CommandExitException as e:
                exit_code, error = e.exit_code, e.error  # a failing command is a result
            self.done.set()
            if self.canceled.is_set():
                raise self._canceled()
            if exit_code == -1:  # the wrapper itself was killed by a signal
                if self._timed_out():
                    raise self._timeout()
                exit_code = 128 + _SIGNAL_NUMBERS.get((error or "").removeprefix("signal: "), 9)
        except (CommandTimeout, CommandCanceled):
            raise
        except (SandboxNotRunningException, SandboxUnreachableException) as e:
            self.done.set()
            if self.canceled.is_set():
                raise self._canceled() from e
            if isinstance(e, SandboxNotRunningException):
                raise self.backend._gone_or_paused(self.sandbox.sandbox_id, e) from e
            raise
        except TimeoutException as e:
            self.done.set()
            if self.canceled.is_set():
                raise self._canceled() from e
            if handle is None or not self._timed_out():
                # Not the command's deadline: a request timeout, or a pause cutting the stream.
                raise self.backend._gone_or_paused(self.sandbox.sandbox_id, e) from e
            raise self._timeout() from e
        except BaseException:
            # E.g. on_output raised: do not leave the command running unattended.
            self.done.set()
            if handle is not None:
                self.backend._kill_group(self.sandbox, self.command_id)
            raise
        return CommandResult(
            exit_code=exit_code,
            stdout=self.outputs["stdout"].text(),
            stderr=self.outputs["stderr"].text(),
            truncated=self.outputs["stdout"].truncated or self.outputs["stderr"].truncated,
            duration_ms=round((time.monotonic() - self.started) * 1000),
        )

    def _timeout(self) -> CommandTimeout:
        self.backend._kill_group(self.sandbox, self.command_id)
        return CommandTimeout(
            f"command timed out after {self.timeout_s:g} s and was killed",
            stdout=self.outputs["stdout"].text(),
            stderr=self.outputs["stderr"].text(),
        )

    def _canceled(self) -> CommandCanceled:
        return CommandCanceled(
            "command canceled and killed",
            stdout=self.outputs["stdout"].text(),
            stderr=self.outputs["stderr"].text(),
        )


def _command_id(handle: str) -> str:
    if _COMMAND_ID.fullmatch(handle) is None:
        raise CommandNotFound(handle)
    return handle


def _is_ip_or_cidr(entry: str) -> bool:
    """An IP address or CIDR block E2B accepts (infra ``IsSpecifiedIPOrCIDR``): not the
    unspecified address, except 0.0.0.0/0 itself."""
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return entry == _ALL_TRAFFIC or not ipaddress.ip_address(entry.split("/")[0]).is_unspecified


def _entry_type(file_type: FileType | None) -> Literal["file", "dir", "symlink", "other"]:
    match file_type:
        case FileType.FILE:
            return "file"
        case FileType.DIR:
            return "dir"
        case FileType.SYMLINK:
            return "symlink"
        case _:
            return "other"


def _aware(moment: datetime) -> datetime:
    """E2B answers in UTC; make sure a naive value is read that way too."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
