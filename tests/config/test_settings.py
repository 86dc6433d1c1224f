"""config/settings.py and config/env.py: strict parsing that names the bad variable, and a
production configuration that passes `manage.py check --deploy`."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from config import env

PROJECT_DIR = Path(__file__).resolve().parents[2]
LOAD_SETTINGS = (
    "import os; os.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings'; "
    "from django.conf import settings; settings.DEBUG"
)


def _run(args: list[str], tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "PYTEST_"))
    }
    environment.update(AIRLOCK_VAR_DIR=str(tmp_path), **variables)
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_settings_load_when_every_variable_is_valid(tmp_path: Path) -> None:
    result = _run(["-c", LOAD_SETTINGS], tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEBUG", "maybe"),
        ("WORKSPACE_MAX_ACTIVE_RUNS", "abc"),
        ("SANDBOX_BACKEND", "docker"),
        ("DATABASE_URL", "nonsense://x"),
        ("CACHE_URL", "memcached://127.0.0.1:11211"),
        ("API_KEY_CACHE_S", "-1"),
    ],
)
def test_a_bad_variable_stops_startup_with_its_name(tmp_path: Path, name: str, value: str) -> None:
    result = _run(["-c", LOAD_SETTINGS], tmp_path, **{name: value})
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last_line
    assert f"Environment variable {name}" in last_line


def test_a_bad_database_url_is_not_echoed_with_its_password(tmp_path: Path) -> None:
    result = _run(
        ["-c", LOAD_SETTINGS], tmp_path, DATABASE_URL="nonsense://airlock:hunter2@db/airlock"
    )
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
    assert "hunter2" not in result.stderr


def test_production_settings_pass_the_deploy_check(tmp_path: Path) -> None:
    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        tmp_path,
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(60),
        HTTPS_ONLY="true",
        ALLOWED_HOSTS="airlock.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


# The parsers themselves, in process: fast, and every rule has a case.


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[("1", True), ("TRUE", True), (" yes ", True), ("on", True)],
        *[("0", False), ("False", False), ("no", False), ("OFF", False)],
    ],
)
def test_booleans_accept_the_usual_spellings(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("AIRLOCK_TEST_FLAG", raw)
    assert env.env_bool("AIRLOCK_TEST_FLAG", False) is expected


@pytest.mark.parametrize(
    ("parse", "raw"),
    [
        (lambda: env.env_bool("AIRLOCK_TEST_VALUE", False), "2"),
        (lambda: env.env_int("AIRLOCK_TEST_VALUE", 1), "1.5"),
        (lambda: env.env_int("AIRLOCK_TEST_VALUE", 1, min_value=1), "0"),
        (lambda: env.env_decimal("AIRLOCK_TEST_VALUE", 0), "NaN"),
        (lambda: env.env_decimal("AIRLOCK_TEST_VALUE", 0), "-0.1"),
        (lambda: env.env_decimal("AIRLOCK_TEST_VALUE", 0), "cheap"),
        (lambda: env.env_choice("AIRLOCK_TEST_VALUE", ("a", "b"), "a"), "c"),
        (lambda: env.env_db("AIRLOCK_TEST_VALUE", "sqlite:///x"), "nonsense://x"),
        (lambda: env.env_db("AIRLOCK_TEST_VALUE", "sqlite:///x"), "mysql://u:p@h/db"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, parse: object, raw: str
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("AIRLOCK_TEST_VALUE", raw)
    with pytest.raises(ImproperlyConfigured, match="AIRLOCK_TEST_VALUE"):
        parse()  # type: ignore[operator]


def test_a_required_variable_that_is_missing_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.delenv("AIRLOCK_TEST_REQUIRED", raising=False)
    with pytest.raises(ImproperlyConfigured, match="AIRLOCK_TEST_REQUIRED"):
        env.env_str("AIRLOCK_TEST_REQUIRED")


@pytest.mark.parametrize(
    ("raw", "engine"),
    [
        ("postgres://u:p@db:5432/airlock", "django.db.backends.postgresql"),
        ("postgresql://u:p@db/airlock", "django.db.backends.postgresql"),
        ("sqlite:////tmp/airlock.sqlite3", "django.db.backends.sqlite3"),
    ],
)
def test_supported_database_urls_parse(
    monkeypatch: pytest.MonkeyPatch, raw: str, engine: str
) -> None:
    monkeypatch.setenv("AIRLOCK_TEST_DB", raw)
    assert env.env_db("AIRLOCK_TEST_DB", "sqlite:///x")["ENGINE"] == engine


def test_lists_drop_blanks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRLOCK_TEST_LIST", " a.example.com, ,b.example.com ,")
    assert env.env_list("AIRLOCK_TEST_LIST", []) == ["a.example.com", "b.example.com"]
