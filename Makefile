# slotlog: `make run` serves the API, `make test` runs every check and test.
PY ?= $(shell command -v python3.12 || command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check fmt bench clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 12) else "slotlog needs Python 3.11 or 3.12 (the embedded PostgreSQL, pgserver, has no wheels for %d.%d)" % v)'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	exec $(BIN)/slotlog serve

check: $(STAMP)
	$(BIN)/ruff format --check service projections tests bench
	$(BIN)/ruff check service projections tests bench
	$(BIN)/mypy

test: check
	$(BIN)/pytest

fmt: $(STAMP)
	$(BIN)/ruff format service projections tests bench
	$(BIN)/ruff check --fix service projections tests bench

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .slotlog .mypy_cache .ruff_cache
