# Everything runs from .venv, which `make install` creates from the lock files in requirements/
# (compiled from pyproject.toml by `make lock`).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# `make run` needs the service and the developer tools; tests, linters and load tools come
# with the dev lock.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev
LINTED := app devtools tests migrations bench
LOCK := $(BIN)/uv pip compile pyproject.toml --python-version 3.11 --universal --generate-hashes -q

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): requirements/run.txt pyproject.toml devtools/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements/run.txt
	$(BIN)/pip install --quiet --no-deps -e . -e ./devtools
	@touch $(RUN_STAMP)

$(STAMP): requirements/dev.txt pyproject.toml devtools/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e . -e ./devtools
	@touch $(STAMP) $(RUN_STAMP)

install: $(STAMP) ## create .venv from the lock files, with the dev tools and the developer tools

run: $(RUN_STAMP) ## demo on 127.0.0.1:PORT (8000): embedded Postgres, B2 emulator, seeded data
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/orbit-dev run

run-s3: $(STAMP) ## the demo with STORAGE_SIGNER=s3 against a local SeaweedFS instead of the emulator
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/orbit-dev run --signer s3

cluster: $(RUN_STAMP) fleet-tools ## 3 replicas behind HAProxy, through PgBouncer, with Redis, as local processes
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/orbit-dev cluster $(if $(filter 1,$(SMOKE)),--smoke)

serve: $(RUN_STAMP) ## the API alone, configured from the environment (no demo data)
	$(BIN)/orbit-exports serve

migrate: $(RUN_STAMP) ## apply migrations to DATABASE_URL (or the embedded Postgres)
	$(BIN)/orbit-exports migrate

migration: $(STAMP) ## autogenerate a revision from app/db/tables.py: make migration m="what changed"
	@test -n "$(m)" || { echo 'usage: make migration m="what changed"'; exit 2; }
	$(BIN)/orbit-exports migrate
	$(BIN)/alembic -c migrations/alembic.ini revision --autogenerate -m "$(m)"

lint: $(STAMP) ## ruff, ruff format --check, mypy --strict, import-linter, hadolint, OpenAPI drift
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy app devtools/orbit_dev
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	$(BIN)/orbit-dev openapi --check contract/openapi.json

openapi: $(STAMP) ## write the service's OpenAPI document to contract/openapi.json
	$(BIN)/orbit-dev openapi --output contract/openapi.json

test: $(STAMP) lint ## lint, then the whole suite (the browser and PgBouncer tests where they can run)
	@$(MAKE) --no-print-directory browser || echo "make test: chromium could not be installed here (needs root and apt); the browser test will be skipped"
	@$(MAKE) --no-print-directory fleet-tools || echo "make test: haproxy/pgbouncer could not be installed here (needs root and apt); their tests will be skipped"
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		BROWSER_TESTS=$${BROWSER_TESTS:-required} $(BIN)/pytest -q; \
	else \
		$(BIN)/pytest -q; \
	fi

# Debian's Chromium and ChromeDriver for tests/system/test_browser.py, when missing.
browser: ## install Debian's chromium and chromium-driver when missing (as root, via apt)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || exit 1; \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || { \
		apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver; }; }

fleet-tools: ## install Debian's haproxy, pgbouncer and redis-server when missing (as root, via apt)
	@{ command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null \
		&& { command -v pgbouncer || test -x /usr/sbin/pgbouncer; } >/dev/null \
		&& command -v redis-server >/dev/null || { \
		command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || exit 1; \
		apt-get install -y -q haproxy pgbouncer redis-server >/dev/null 2>&1 || { \
		apt-get update -q >/dev/null && apt-get install -y -q haproxy pgbouncer redis-server; }; }

# The long runs: SMOKE=1 runs each for a few seconds on a few rows (`make smoke`, run by CI),
# so a target that breaks fails CI the day it breaks.
FUZZ_EXAMPLES := $(if $(filter 1,$(SMOKE)),5,1000)
FUZZ_TIME := $(if $(filter 1,$(SMOKE)),10,120)
FUZZ_PROFILE := $(if $(filter 1,$(SMOKE)),default,deep)

fuzz: $(STAMP) ## schemathesis and hypothesis at depth (FUZZ_MAX_TIME s per run, default 120)
	FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-$(FUZZ_EXAMPLES)} FUZZ_MAX_TIME=$${FUZZ_MAX_TIME:-$(FUZZ_TIME)} \
	HYPOTHESIS_PROFILE=$(FUZZ_PROFILE) $(BIN)/pytest -q tests/system/test_fuzz.py tests/api/test_hostile_input.py \
	  --timeout=$$(( $${FUZZ_MAX_TIME:-$(FUZZ_TIME)} * 2 + 300 ))

soak: $(STAMP) ## a few minutes of mixed traffic on a real multi-worker server (SOAK_SECONDS=180)
	SMOKE=$(SMOKE) $(BIN)/python bench/soak.py

bench: $(STAMP) ## wrk against the floor on 1,000,000 rows; writes docs/performance.md
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	SMOKE=$(SMOKE) $(BIN)/python bench/bench.py
	SMOKE=$(SMOKE) $(BIN)/python bench/s3_signing.py
	SMOKE=$(SMOKE) $(BIN)/python bench/framework_costs.py

drill: $(RUN_STAMP) fleet-tools ## restarts, failovers and silent faults under load on the cluster topology; writes docs/reliability.md
	$(BIN)/orbit-dev drill $(if $(filter 1,$(SMOKE)),--smoke)

smoke: ## every long run (fuzz, soak, bench, cluster, drill) for a few seconds: do they still work
	$(MAKE) --no-print-directory fuzz SMOKE=1
	$(MAKE) --no-print-directory soak SMOKE=1
	$(MAKE) --no-print-directory bench SMOKE=1
	$(MAKE) --no-print-directory cluster SMOKE=1
	$(MAKE) --no-print-directory drill SMOKE=1

# service.txt: the image (with the otel extra); run.txt: + the embedded Postgres (make run); dev.txt: + tests and tools;
# build.txt: the build backend of [build-system] (the image builds the wheels with it, hashed).
lock: $(STAMP) ## recompile requirements/*.txt (hashed) from pyproject.toml
	$(LOCK) --extra otel -o requirements/service.txt
	$(LOCK) --extra otel --extra embedded -o requirements/run.txt
	$(LOCK) --extra dev -o requirements/dev.txt
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(BIN)/uv pip compile - --python-version 3.11 --universal --generate-hashes -q -o requirements/build.txt

lowest: $(STAMP) ## the lowest direct versions pyproject.toml allows: install, import, serve
	PYTHON=$(PYTHON) .ci/lowest

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

.PHONY: help install run run-s3 cluster serve migrate migration lint openapi test browser fleet-tools fuzz soak bench drill smoke lock lowest format
