# slotlog: `make run` serves the API, `make test` runs every check and test.
# The first interpreter that actually runs and is 3.11 or 3.12 (pyenv shims may exist yet fail).
PY ?= $(shell for p in python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null \
	&& { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check fmt bench clean

$(STAMP): pyproject.toml setup.py projections/_binary_copy.c
	@test -n "$(PY)" || { echo "slotlog needs Python 3.11 or 3.12 (the embedded PostgreSQL, pgserver, has wheels for 3.10-3.12 only); none was found on PATH. Set PY=/path/to/python3.12 or use DATABASE_URL with a supported Python." >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	exec $(BIN)/slotlog serve

check: $(STAMP)
	$(BIN)/ruff format --check service projections tests bench setup.py
	$(BIN)/ruff check service projections tests bench setup.py
	$(BIN)/mypy

test: check
	$(BIN)/pytest

fmt: $(STAMP)
	$(BIN)/ruff format service projections tests bench
	$(BIN)/ruff check --fix service projections tests bench

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .slotlog .mypy_cache .ruff_cache build projections/*.so
