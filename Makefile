# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo test lint bench clean

$(BIN)/cxr: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,dask]'
	touch $@

install: $(BIN)/cxr

# The main job: generate the synthetic demo data, run the retrain flow on it, register the model.
demo: install
	$(BIN)/cxr train

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # layers and independent stages: [tool.importlinter] in pyproject.toml

test: lint
	$(BIN)/python -m pytest -q -ra

bench: install
	$(BIN)/python -m bench --quick

# Stops the state folder's Prefect server (the first `cxr` command started it) before deleting its database.
clean:
	if [ -x $(BIN)/cxr ]; then $(BIN)/cxr dashboard --stop; fi
	rm -rf .cxr test-output
