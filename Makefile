# One environment for everything: .venv, rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast lint format demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: venv
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

# Everything, including the end-to-end tests that spawn or SIGKILL processes.
test: lint
	$(BIN)/python -m pytest

# The same suite without the `slow` (process-spawning) tests: for the edit-test loop.
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

demo: venv
	$(BIN)/visprompt demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
