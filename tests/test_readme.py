"""The README's configuration table names every variable the settings read, and every shell
example of README.md and docs/api.md is either run against a live server
(tests/e2e/test_docs_examples.py) or named here with the reason it cannot be."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/api.md")

# Shell examples no test can run, by their first command (a trailing comment left out), and why.
NOT_RUN = {
    "make run": (
        "starts the stack (the e2e test serves the same application with uvicorn and a real "
        "worker) and runs this very suite"
    ),
    ".venv/bin/python -m tests.fakes.e2b --port 8900": (
        "serves until Ctrl-C, then `make run`; tests/fakes/test_e2b.py runs the double"
    ),
    "export DATABASE_URL=postgres://airlock:…@db:5432/airlock": (
        "a production deployment: PostgreSQL, Redis, S3 and E2B hosts that do not exist here"
    ),
}


@dataclass(frozen=True)
class Example:
    document: str
    line: int  # where its fence opens, 1-based
    text: str

    @property
    def first_line(self) -> str:
        """Its first line without a trailing comment."""
        first = self.text.splitlines()[0] if self.text else ""
        return re.sub(r"\s+#\s.*$", "", first).strip()


def shell_examples(document: str) -> list[Example]:
    """Every ```sh block of the document, in order."""
    source = (ROOT / document).read_text()
    examples = []
    for match in re.finditer(r"^```(sh|bash|shell)\n(.*?)^```$", source, re.M | re.S):
        line = source.count("\n", 0, match.start()) + 1
        examples.append(Example(document, line, match.group(2)))
    return examples


def runnable(document: str) -> list[Example]:
    return [e for e in shell_examples(document) if e.first_line not in NOT_RUN]


def test_every_environment_variable_is_documented_in_the_readme() -> None:
    settings_source = (ROOT / "config" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z0-9_]+)"', settings_source))
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", readme))
    assert read, "no variables found: the pattern no longer matches settings.py"
    assert sorted(read - documented) == []


def test_the_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def test_every_shell_example_not_run_is_one_named_with_its_reason() -> None:
    first_lines = [e.first_line for doc in DOCUMENTS for e in shell_examples(doc)]
    assert sorted(set(NOT_RUN) - set(first_lines)) == []  # no stale entries
    assert len(runnable("docs/api.md")) == len(shell_examples("docs/api.md")) > 10
    assert len(runnable("README.md")) >= 1


def test_runnable_examples_name_no_placeholder_left_to_guess() -> None:
    """What a reader must fill in is `…` (a value make run printed) or one of the README's
    `<workspace>`/`<api key>`; ids come from the calls before, as shell variables."""
    allowed = {"<workspace>", "<api key>"}
    for document in DOCUMENTS:
        for example in runnable(document):
            code = "\n".join(  # without comments, whole-line or trailing
                re.sub(r"\s#\s.*$", "", line)
                for line in example.text.splitlines()
                if not line.lstrip().startswith("#")
            )
            left = set(re.findall(r"<[a-z][a-z ]*>", code)) - allowed
            assert not left, f"{document}:{example.line}: {sorted(left)}"
