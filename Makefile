# The README's commands. `make` bootstraps uv itself, so a fresh machine needs only python3.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export AWS_EC2_METADATA_DISABLED := true
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen --all-extras
API_PORT ?= 3000
AWS_PORT ?= 4566

.PHONY: dev test lint typecheck unit e2e bench synth install clean sandbox

.venv/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -c "import uv" 2>/dev/null || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-extras
	@touch $@

install: .venv/.installed

dev: install
	API_PORT=$(API_PORT) AWS_PORT=$(AWS_PORT) $(RUN) crm-to-books dev

sandbox: install
	$(RUN) crm-to-books sandbox --port 8088

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: install
	$(RUN) mypy layers/core/python/crm_to_books src/crm_to_books_cli functions infra bench

test: lint typecheck
	$(RUN) pytest

unit: install
	$(RUN) pytest tests/unit

e2e: install
	$(RUN) pytest tests/e2e

bench: install
	$(RUN) python -m bench

synth: install
	$(RUN) python -m infra.app

clean:
	rm -rf .venv cdk.out .build .pytest_cache .mypy_cache .ruff_cache
