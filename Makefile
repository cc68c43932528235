# Everything runs from .venv, which `make install` creates from pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# `make run` needs only the service; tests, linters and load tools come with the dev extras.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP) $(RUN_STAMP)

install: $(STAMP) ## create .venv and install the project with its dev tools

run: $(RUN_STAMP) ## demo on 127.0.0.1:$$PORT (8000): embedded Postgres, B2 emulator, seeded data
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/orbit-exports serve --demo

serve: $(RUN_STAMP) ## the API alone, configured from the environment (no demo data)
	$(BIN)/orbit-exports serve

migrate: $(RUN_STAMP) ## apply migrations to DATABASE_URL (or the embedded Postgres)
	$(BIN)/orbit-exports migrate

lint: $(STAMP) ## ruff check, ruff format --check, mypy --strict app
	$(BIN)/ruff check app tests migrations bench
	$(BIN)/ruff format --check app tests migrations bench
	$(BIN)/mypy app

test: $(STAMP) lint browser ## lint, then the whole test suite (the browser test included)
	BROWSER_TESTS=required $(BIN)/pytest -q

# Debian's Chromium and ChromeDriver for tests/test_browser.py, when missing.
browser: ## install Debian's chromium and chromium-driver when missing (as root, via apt)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || { \
		apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver; }; }

fuzz: $(STAMP) ## schemathesis and hypothesis at depth (FUZZ_MAX_TIME s per run, default 120)
	FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-1000} FUZZ_MAX_TIME=$${FUZZ_MAX_TIME:-120} \
	HYPOTHESIS_PROFILE=deep $(BIN)/pytest -q tests/test_fuzz.py tests/test_hostile_input.py

soak: $(STAMP) ## a few minutes of mixed traffic on a real multi-worker server (SOAK_SECONDS=180)
	$(BIN)/python bench/soak.py

bench: $(STAMP) ## wrk against the floor on 1,000,000 rows; writes docs/performance.md
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	$(BIN)/python bench/bench.py

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format app tests migrations bench
	$(BIN)/ruff check --fix app tests migrations bench

.PHONY: help install run serve migrate lint test browser fuzz soak bench format
