# Two commands: `make run` (the main job) and `make test` (the whole suite).
# Both create .venv and install the package when missing; a stamp keeps reruns fast.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= cpu

.PHONY: run test lint install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main --preset $(PRESET)

# Worker processes (pytest-xdist; `tests/conftest.py` caps "auto" at 4), one test file per
# worker so module fixtures are built once. `make test PYTEST_ARGS=-n0` runs in one process.
PYTEST_ARGS ?= -n auto --dist loadfile

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache .ruff_cache
