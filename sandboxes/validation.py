"""Checks of what callers ask of a sandbox (paths, env, metadata, timeouts), shared by the run
services, the artifact capture and the commands. A refusal is an InvalidInput (a 400)."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import Any

from django.conf import settings

from config.exceptions import InvalidInput
from sandboxes.backends.base import SANDBOX_HOME

MAX_DURATION_LIMIT_MS = 24 * 60 * 60 * 1000  # E2B's longest sandbox lifetime
MIN_TIMEOUT_MS = 1000
MAX_METADATA_KEYS = 16
MAX_ENV_VARS = 100
MAX_FILES = 100
PATH_MAX_LENGTH = 1024
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def clean_sandbox_path(path: str, *, field: str = "path") -> str:
    """An absolute, normalised path inside the sandbox home: no `..`, no NUL, not too long."""
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"{field}: a path is required.", code="invalid_path")
    if "\x00" in path:
        raise InvalidInput(f"{field}: NUL bytes are not allowed in paths.", code="invalid_path")
    if len(path) > PATH_MAX_LENGTH:
        raise InvalidInput(f"{field}: path is longer than {PATH_MAX_LENGTH}.", code="invalid_path")
    if not path.startswith("/"):
        raise InvalidInput(f"{field}: the path must be absolute.", code="invalid_path")
    if ".." in path.split("/"):
        raise InvalidInput(f"{field}: `..` is not allowed in paths.", code="invalid_path")
    normalised = posixpath.normpath(path)
    if normalised != SANDBOX_HOME and not normalised.startswith(SANDBOX_HOME + "/"):
        raise InvalidInput(f"{field}: the path must be under {SANDBOX_HOME}.", code="invalid_path")
    return normalised


def clean_env(env: dict[str, str] | None, *, field: str = "env") -> dict[str, str]:
    env = env or {}
    if len(env) > MAX_ENV_VARS:
        raise InvalidInput(f"{field}: at most {MAX_ENV_VARS} variables.", code="too_many")
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise InvalidInput(f"{field}: {name!r} is not a valid variable name.", code="invalid")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidInput(f"{field}: {name} must be a string without NUL.", code="invalid")
    return env


def clean_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    metadata = metadata or {}
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(f"metadata: at most {MAX_METADATA_KEYS} keys.", code="too_many")
    for key, value in metadata.items():
        if len(key) > 64:
            raise InvalidInput("metadata: keys are at most 64 characters.", code="invalid")
        if not (value is None or isinstance(value, str | int | float | bool)):
            raise InvalidInput(f"metadata: {key} must be a string, number, boolean or null.")
        if isinstance(value, str) and len(value) > 512:
            raise InvalidInput(f"metadata: {key} is longer than 512 characters.", code="invalid")
    return metadata


def clean_timeouts(max_duration_ms: int | None, idle_timeout_ms: int | None) -> tuple[int, int]:
    max_duration = max_duration_ms or settings.SANDBOX_DEFAULT_MAX_DURATION_MS
    idle = idle_timeout_ms or settings.SANDBOX_DEFAULT_IDLE_TIMEOUT_MS
    for name, value in (("max_duration_ms", max_duration), ("idle_timeout_ms", idle)):
        if not MIN_TIMEOUT_MS <= value <= MAX_DURATION_LIMIT_MS:
            raise InvalidInput(
                f"{name} must be between {MIN_TIMEOUT_MS} and {MAX_DURATION_LIMIT_MS}.",
                code="out_of_range",
            )
    return max_duration, idle


def clean_files(files: dict[str, str] | None) -> dict[str, str]:
    files = files or {}
    if len(files) > MAX_FILES:
        raise InvalidInput(f"files: at most {MAX_FILES} files.", code="too_many")
    return {clean_sandbox_path(path, field="files"): content for path, content in files.items()}


# --- SPEC §15: on_idle and network -----------------------------------------------------------

ON_IDLE_CHOICES = ("kill", "pause")
MAX_NETWORK_RULES = 100
NETWORK_KEYS = frozenset({"internet", "allow_out", "deny_out"})
_DOMAIN = re.compile(r"(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def clean_on_idle(on_idle: str | None) -> str:
    """`kill` or `pause`; SANDBOX_DEFAULT_ON_IDLE when not given."""
    value = on_idle or settings.SANDBOX_DEFAULT_ON_IDLE
    if value not in ON_IDLE_CHOICES:
        raise InvalidInput('on_idle: "kill" or "pause".', code="invalid_choice")
    return value


def clean_network(network: dict[str, Any] | None) -> dict[str, Any]:
    """`{internet, allow_out, deny_out}` with every key filled in: `internet` from
    SANDBOX_DEFAULT_INTERNET when not given, each rule an IP address, a CIDR block or a domain
    name (`*.` for its subdomains), lower-cased, without repeats. Whether the backend can
    enforce it is the backend's to say (`check_network`)."""
    network = {} if network is None else network
    if not isinstance(network, dict):
        raise InvalidInput("network: an object {internet, allow_out, deny_out}.", code="invalid")
    unknown = sorted(set(network) - NETWORK_KEYS)
    if unknown:
        raise InvalidInput(f"network: unknown key {unknown[0]!r}.", code="invalid")
    internet = network.get("internet", settings.SANDBOX_DEFAULT_INTERNET)
    if not isinstance(internet, bool):
        raise InvalidInput("network.internet: true or false.", code="invalid")
    return {
        "internet": internet,
        "allow_out": _clean_rules(network.get("allow_out"), "allow_out"),
        "deny_out": _clean_rules(network.get("deny_out"), "deny_out"),
    }


def _clean_rules(rules: Any, field: str) -> list[str]:
    if rules is None:
        return []
    if not isinstance(rules, list):
        raise InvalidInput(f"network.{field}: a list of CIDRs or domains.", code="invalid")
    if len(rules) > MAX_NETWORK_RULES:
        raise InvalidInput(f"network.{field}: at most {MAX_NETWORK_RULES} rules.", code="too_many")
    cleaned: list[str] = []
    for rule in rules:
        if not isinstance(rule, str):
            raise InvalidInput(f"network.{field}: {rule!r} is not a string.", code="invalid")
        entry = rule.strip().lower()
        if not (_is_cidr(entry) or (len(entry) <= 253 and _DOMAIN.fullmatch(entry))):
            raise InvalidInput(
                f"network.{field}: {rule!r} is neither an IP address, a CIDR block nor a domain.",
                code="invalid_network_rule",
            )
        if entry not in cleaned:
            cleaned.append(entry)
    return cleaned


def _is_cidr(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True
