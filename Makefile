# Everything a fresh machine needs: `make train` and `make test` create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TASK ?= ssdlite
ARGS ?=

.PHONY: install train test lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python tools/train.py task=$(TASK) $(ARGS)

# pytest spreads the tests over the cores (addopts in pyproject.toml); ARGS="-n 0" runs them in one
# process, ARGS="-m numerics" only those CI reruns on another kernel path (.ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

# ruff: lint rules and formatting as configured in pyproject.toml (CI runs this before the tests).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .cache
