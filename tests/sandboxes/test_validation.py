"""sandboxes/validation.py: what callers may ask of a sandbox — paths under its home, env
variables, metadata labels, timeouts and files — refused as InvalidInput (a 400) with a code."""

from __future__ import annotations

from typing import Any

import pytest

from config.exceptions import InvalidInput
from sandboxes import validation

# --- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/home/user", "/home/user"),
        ("/home/user/", "/home/user"),
        ("/home/user/a/b.txt", "/home/user/a/b.txt"),
        ("/home/user//a/./b.txt", "/home/user/a/b.txt"),
        ("/home/user/" + "a" * 1000, "/home/user/" + "a" * 1000),
        ("/home/user/with space/é.txt", "/home/user/with space/é.txt"),
    ],
)
def test_a_path_under_the_home_is_kept_normalised(path: str, clean: str) -> None:
    assert validation.clean_sandbox_path(path) == clean


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("", id="empty"),
        pytest.param("relative.txt", id="relative"),
        pytest.param("/home/user/../../etc/passwd", id="dotdot"),
        pytest.param("/home/user/a/..", id="trailing-dotdot"),
        pytest.param("/home/user/a\x00b", id="nul"),
        pytest.param("/etc/passwd", id="outside"),
        pytest.param("/home/username/x", id="a-sibling-with-the-same-prefix"),
        pytest.param("/home", id="above"),
        pytest.param("/home/user/" + "a" * 1024, id="too-long"),
        pytest.param(None, id="not-a-string"),
    ],
)
def test_a_path_outside_the_home_or_odd_is_refused(path: Any) -> None:
    with pytest.raises(InvalidInput) as raised:
        validation.clean_sandbox_path(path, field="output_dir")
    assert raised.value.code == "invalid_path"
    assert raised.value.detail.startswith("output_dir: ")


# --- env -------------------------------------------------------------------------------------


def test_env_names_are_shell_variable_names_and_values_strings() -> None:
    env = {"A": "1", "_under": "", "MIXED_case9": "with\nnewline"}
    assert validation.clean_env(env) == env
    assert validation.clean_env(None) == {}


@pytest.mark.parametrize(
    ("env", "code"),
    [
        pytest.param({"1BAD": "x"}, "invalid", id="starts-with-a-digit"),
        pytest.param({"A-B": "x"}, "invalid", id="dash"),
        pytest.param({"": "x"}, "invalid", id="empty-name"),
        pytest.param({"A" * 129: "x"}, "invalid", id="name-too-long"),
        pytest.param({"A": "x\x00y"}, "invalid", id="nul-in-value"),
        pytest.param({"A": 1}, "invalid", id="not-a-string"),
        pytest.param({f"V{i}": "x" for i in range(101)}, "too_many", id="too-many"),
    ],
)
def test_bad_env_is_refused(env: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validation.clean_env(env, field="exec env")
    assert raised.value.code == code
    assert raised.value.detail.startswith("exec env: ")


# --- metadata --------------------------------------------------------------------------------


def test_metadata_holds_flat_labels() -> None:
    labels = {"ticket": 7, "ratio": 0.5, "urgent": True, "note": "x" * 512, "none": None}
    assert validation.clean_metadata(labels) == labels
    assert validation.clean_metadata({f"k{i}": i for i in range(16)})
    assert validation.clean_metadata(None) == {}


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        pytest.param({f"k{i}": i for i in range(17)}, "too_many", id="too-many-keys"),
        pytest.param({"k" * 65: 1}, "invalid", id="key-too-long"),
        pytest.param({"a": {"b": 1}}, "invalid", id="nested"),
        pytest.param({"a": [1]}, "invalid", id="list"),
        pytest.param({"a": "x" * 513}, "invalid", id="value-too-long"),
    ],
)
def test_bad_metadata_is_refused(metadata: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validation.clean_metadata(metadata)
    assert raised.value.code == code


# --- timeouts --------------------------------------------------------------------------------


def test_timeouts_default_to_the_settings(settings: Any) -> None:
    settings.SANDBOX_DEFAULT_MAX_DURATION_MS = 120_000
    settings.SANDBOX_DEFAULT_IDLE_TIMEOUT_MS = 30_000
    assert validation.clean_timeouts(None, None) == (120_000, 30_000)
    assert validation.clean_timeouts(5000, None) == (5000, 30_000)


@pytest.mark.parametrize(
    ("max_duration_ms", "idle_timeout_ms"),
    [
        (validation.MIN_TIMEOUT_MS, validation.MIN_TIMEOUT_MS),
        (validation.MAX_DURATION_LIMIT_MS, validation.MAX_DURATION_LIMIT_MS),
    ],
)
def test_timeouts_at_the_limits_are_accepted(max_duration_ms: int, idle_timeout_ms: int) -> None:
    assert validation.clean_timeouts(max_duration_ms, idle_timeout_ms) == (
        max_duration_ms,
        idle_timeout_ms,
    )


@pytest.mark.parametrize(
    ("max_duration_ms", "idle_timeout_ms", "named"),
    [
        (validation.MIN_TIMEOUT_MS - 1, None, "max_duration_ms"),
        (validation.MAX_DURATION_LIMIT_MS + 1, None, "max_duration_ms"),
        (None, validation.MIN_TIMEOUT_MS - 1, "idle_timeout_ms"),
        (None, 10**12, "idle_timeout_ms"),
    ],
)
def test_timeouts_out_of_range_are_refused_naming_the_field(
    max_duration_ms: int | None, idle_timeout_ms: int | None, named: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        validation.clean_timeouts(max_duration_ms, idle_timeout_ms)
    assert raised.value.code == "out_of_range"
    assert raised.value.detail.startswith(named)


# --- files -----------------------------------------------------------------------------------


def test_files_are_keyed_by_their_clean_path() -> None:
    files = {"/home/user/in//a.txt": "a", "/home/user/b.txt": ""}
    assert validation.clean_files(files) == {"/home/user/in/a.txt": "a", "/home/user/b.txt": ""}
    assert validation.clean_files(None) == {}


def test_bad_files_are_refused() -> None:
    with pytest.raises(InvalidInput) as raised:
        validation.clean_files({"rel.txt": "x"})
    assert (raised.value.code, raised.value.detail.split(":")[0]) == ("invalid_path", "files")
    with pytest.raises(InvalidInput) as raised:
        validation.clean_files({f"/home/user/{i}": "" for i in range(101)})
    assert raised.value.code == "too_many"
