"""The shared cache (CACHE_URL): the login throttle holds across processes — two real
processes posting bad logins share one AUTH_THROTTLE_RATE budget, on the default file cache
and on Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_cache
from tests.conftest import require_service
from tests.e2e.conftest import PROJECT_ROOT

# What one process does: bad logins through the whole Django stack, printing the statuses.
BAD_LOGINS = """
import json, sys
from django.test import Client
client = Client()
codes = [
    client.post("/api/v1/auth/token/", {"username": "nobody", "password": "wrong"},
                content_type="application/json").status_code
    for _ in range(int(sys.argv[1]))
]
print(json.dumps(codes))
"""


def _bad_logins(env: dict[str, str], count: int) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + BAD_LOGINS, str(count)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def _redis_url() -> str:
    broker = os.environ.get("CELERY_BROKER_URL", "")
    require_service(broker.startswith("redis://"), "Redis (CELERY_BROKER_URL=redis://…) is not set")
    return broker


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", ["default", pytest.param("redis", marks=pytest.mark.redis)])
def test_the_login_throttle_holds_across_two_processes(cache: str, tmp_path: Path) -> None:
    from tests.e2e.conftest import _database_url

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": _database_url(),
        "AIRLOCK_VAR_DIR": str(tmp_path),  # the default file cache: tmp_path/cache
        "ALLOWED_HOSTS": "testserver",
        "AUTH_THROTTLE_RATE": "5/min",
    }
    env.pop("CACHE_URL", None)
    if cache == "redis":
        env["CACHE_URL"] = _redis_url()
        flush = "from django.core.cache import cache; cache.clear()"
        subprocess.run([sys.executable, "-c", "import django; django.setup()\n" + flush],
                       cwd=PROJECT_ROOT, env=env, check=True, timeout=60)  # fmt: skip

    first = _bad_logins(env, 3)
    second = _bad_logins(env, 3)

    assert 429 not in first  # 3 of the 5 a minute
    assert second == [first[0], first[0], 429]  # the other process had used 3 of them
    assert first[0] in (400, 401)  # refused credentials, not throttled


def test_cache_url_takes_redis_files_and_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_URL", "redis://cache:6379/2")
    assert env_cache("CACHE_URL", "filecache:///tmp/x") == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://cache:6379/2",
    }
    monkeypatch.setenv("CACHE_URL", "dbcache://airlock_cache")
    assert env_cache("CACHE_URL", "")["BACKEND"] == "django.core.cache.backends.db.DatabaseCache"
    monkeypatch.delenv("CACHE_URL")
    assert env_cache("CACHE_URL", "filecache:///srv/var/cache") == {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": "/srv/var/cache",
    }
    monkeypatch.setenv("CACHE_URL", "memcache://x")
    with pytest.raises(ImproperlyConfigured, match="CACHE_URL is invalid"):
        env_cache("CACHE_URL", "")
