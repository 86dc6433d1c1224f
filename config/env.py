"""Strict environment parsing: a bad value is an error that names the variable."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")

_env = environ.Env()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_UNSET: Any = object()


def _parse(name: str, default: Any, parse: Callable[[str], T], *, secret: bool = False) -> T:
    raw = _env.str(name, default=None)
    if raw is None:
        if default is _UNSET:
            raise ImproperlyConfigured(f"Environment variable {name} is required but not set.")
        return cast(T, default)
    try:
        return parse(raw.strip())
    except (ValueError, InvalidOperation, ImproperlyConfigured) as exc:
        if secret:
            # The value may hold a password: name the variable, never echo it (logs, reports).
            raise ImproperlyConfigured(f"Environment variable {name} is invalid: {exc}") from None
        raise ImproperlyConfigured(
            f"Environment variable {name}={raw!r} is invalid: {exc}"
        ) from exc


def env_str(name: str, default: Any = _UNSET) -> str:
    return _parse(name, default, str)


def env_bool(name: str, default: Any = _UNSET) -> bool:
    def parse(raw: str) -> bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError("expected one of true/false, 1/0, yes/no, on/off")

    return _parse(name, default, parse)


def env_int(name: str, default: Any = _UNSET, *, min_value: int | None = None) -> int:
    def parse(raw: str) -> int:
        value = int(raw)
        if min_value is not None and value < min_value:
            raise ValueError(f"must be at least {min_value}")
        return value

    return _parse(name, default, parse)


def env_decimal(name: str, default: Any = _UNSET) -> Decimal:
    def parse(raw: str) -> Decimal:
        value = Decimal(raw)
        if not value.is_finite() or value < 0:
            raise ValueError("must be a non-negative number")
        return value

    return _parse(name, default, parse)


def env_choice(name: str, choices: tuple[str, ...], default: Any = _UNSET) -> str:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return raw

    return _parse(name, default, parse)


def env_list(name: str, default: Any = _UNSET) -> list[str]:
    return _parse(
        name, default, lambda raw: [item.strip() for item in raw.split(",") if item.strip()]
    )


_DB_ENGINES = {"django.db.backends.postgresql", "django.db.backends.sqlite3"}


def env_db(name: str, default: str) -> dict[str, Any]:
    def parse(raw: str) -> dict[str, Any]:
        try:
            config = dict(environ.Env.db_url_config(raw))
        except (KeyError, ValueError, ImproperlyConfigured):
            config = {}
        # django-environ takes an unknown scheme ("nonsense://") for an engine's module path.
        if config.get("ENGINE") not in _DB_ENGINES:
            raise ValueError("expected a postgres://, postgresql:// or sqlite:/// URL")
        return config

    config = _parse(name, None, parse, secret=True)
    return config if config is not None else dict(environ.Env.db_url_config(default))


_EMAIL_SCHEMES = (
    "smtp",
    "smtps",
    "smtp+tls",
    "smtp+ssl",
    "consolemail",
    "filemail",
    "memorymail",
    "dummymail",
)


def env_email(name: str, default: str) -> dict[str, Any]:
    """django-environ's email URL (`smtp+tls://user:pass@host:587`, `consolemail://`, …) as
    Django's EMAIL_* settings."""

    def parse(raw: str) -> dict[str, Any]:
        if raw.split("://", 1)[0] not in _EMAIL_SCHEMES or "://" not in raw:
            raise ValueError(f"expected a URL with one of the schemes {', '.join(_EMAIL_SCHEMES)}")
        config = dict(environ.Env.email_url_config(raw))
        if raw.startswith("filemail://"):  # django-environ drops the path's leading slash
            config["EMAIL_FILE_PATH"] = urlsplit(raw).path
        return config

    config = _parse(name, None, parse, secret=True)
    return config if config is not None else dict(environ.Env.email_url_config(default))


_CACHE_BACKENDS = {
    "django.core.cache.backends.redis.RedisCache",
    "django.core.cache.backends.filebased.FileBasedCache",
    "django.core.cache.backends.db.DatabaseCache",
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
}


def env_cache(name: str, default: str) -> dict[str, Any]:
    """django-environ's cache URL: `redis://host:6379/1` (Django's own Redis cache),
    `filecache:///path`, `dbcache://table`, `locmemcache://`, `dummycache://`."""

    def parse(raw: str) -> dict[str, Any]:
        try:
            config = dict(environ.Env.cache_url_config(raw))
        except (KeyError, ValueError, ImproperlyConfigured):
            config = {}
        if config.get("BACKEND") not in _CACHE_BACKENDS:
            raise ValueError("expected a redis://, rediss://, filecache://, dbcache:// URL")
        return config

    config = _parse(name, None, parse, secret=True)
    return config if config is not None else dict(environ.Env.cache_url_config(default))
