# The README's commands. `make` bootstraps uv itself, so a fresh machine needs only python3 and
# the Python the functions deploy on (.python-version), which it finds or says how to get.
SHELL := /bin/bash
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export AWS_EC2_METADATA_DISABLED := true
# A uv that runs (a pyenv shim on PATH may not, in a folder pinned to another version), else a
# private copy in .build/.
UV := $(shell if uv --version >/dev/null 2>&1; then echo uv; \
	elif python3 -m uv --version >/dev/null 2>&1; then echo "python3 -m uv"; \
	else echo "$(CURDIR)/.build/uv/bin/uv"; fi)
RUN := $(UV) run --frozen --all-extras
PYTHON_VERSION := $(shell cat .python-version)
# The newest Python $(PYTHON_VERSION) (with the GIL, as Lambda's) that runs, as uv, PATH or pyenv
# knows it; printed as its real path, not a shim's.
FIND_PYTHON := for p in "$$($(UV) python find --system $(PYTHON_VERSION) 2>/dev/null)" python$(PYTHON_VERSION) \
	$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$(PYTHON_VERSION).*/bin/python3 2>/dev/null | sort -rV); \
	do "$$p" -c 'import sys, sysconfig; assert "%d.%d" % sys.version_info[:2] == "$(PYTHON_VERSION)"; \
	assert not sysconfig.get_config_var("Py_GIL_DISABLED"); print(sys.executable)' 2>/dev/null && break; done
# None: uv fetches one only where downloads are allowed (UV_PYTHON_DOWNLOADS=automatic).
NO_PYTHON := Python $(PYTHON_VERSION) (what Lambda runs) not found by uv, on PATH or in pyenv: \
	install it (uv python install $(PYTHON_VERSION), pyenv install $(PYTHON_VERSION) or an OS \
	package) or let uv fetch it: make UV_PYTHON_DOWNLOADS=automatic ...
NO_UV := uv not found and pip could not install it: see https://docs.astral.sh/uv/getting-started/installation/
API_PORT ?= 3000
AWS_PORT ?= 4566

.PHONY: dev test lint typecheck unit e2e model bench synth install clean sandbox

.venv/.installed: pyproject.toml uv.lock .python-version
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet --target .build/uv uv \
		|| { echo '$(NO_UV)' >&2; exit 1; }
	@python=$$($(FIND_PYTHON)); \
	if [ -z "$$python" ] && [ "$${UV_PYTHON_DOWNLOADS:-}" = automatic ]; then python=$(PYTHON_VERSION); fi; \
	if [ -z "$$python" ]; then echo '$(NO_PYTHON)' >&2; exit 1; fi; \
	echo "$(UV) sync --frozen --all-extras --python $$python"; \
	$(UV) sync --frozen --all-extras --python "$$python"
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

# The model-based test of the engine, longer than in `make test` and with a fresh seed each run
# (MODEL_SEED=N repeats one). MODEL_EXAMPLES and MODEL_STEPS size it.
model: install
	@seed=$${MODEL_SEED:-$$RANDOM}; echo "model seed $$seed (MODEL_SEED=$$seed repeats this run)"; \
	MODEL_SEED=$$seed MODEL_EXAMPLES=$${MODEL_EXAMPLES:-400} MODEL_STEPS=$${MODEL_STEPS:-100} \
	$(RUN) pytest tests/model -p no:cacheprovider --hypothesis-seed=$$seed \
	--hypothesis-show-statistics -q

bench: install  # all benchmarks, or some: make bench BENCH="cold_start tokens"
	$(RUN) python -m bench $(BENCH)

synth: install
	$(RUN) python -m infra.app

clean:
	rm -rf .venv cdk.out .build .pytest_cache .mypy_cache .ruff_cache
