# Airlock: `make run` starts the whole stack locally, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-packages run test test-fast lint format typecheck bench lock clean

setup: system-packages $(STAMP)

# Debian packages the project needs (bubblewrap, libseccomp2 and e2fsprogs for local sandboxes:
# the jail, its seccomp filter, its disk image; chromium for the admin browser tests; curl, jq
# and unzip, which the documented examples use and their test runs; python3-venv). Installed
# only when running as root on Debian/Ubuntu.
system-packages:
	@missing=""; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	PATH="$$PATH:/usr/sbin:/sbin" ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || missing="$$missing libseccomp2"; \
	PATH="$$PATH:/usr/sbin:/sbin" command -v mkfs.ext4 >/dev/null || missing="$$missing e2fsprogs"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	for tool in curl jq unzip; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "Missing system packages:$$missing (install them: sudo apt-get install$$missing)"; \
	  fi; \
	fi

$(STAMP): requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	touch $(STAMP)

# web (uvicorn on HOST:PORT, default 127.0.0.1:8000), worker, beat, and `ready`, which creates
# the demo user, workspace and key and prints them (and var/demo.txt) once the web server
# answers. A process that dies is restarted (config/stack.py). One Ctrl-C stops them all.
run: setup
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python -m config.stack

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -x -m "not e2e and not browser" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: setup
	$(BIN)/mypy .

bench: setup
	$(BIN)/python -m bench

# Regenerate the lock files after changing dependencies in pyproject.toml (needs `uv`).
lock:
	uv pip compile pyproject.toml --generate-hashes --python-version 3.11 -o requirements.lock
	uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements-dev.lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
