# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install install-cluster install-review demo test lint bench clean

$(BIN)/cxr: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,dask,cluster]'
	touch $@

install: $(BIN)/cxr

# `cxr cluster up` needs PostgreSQL's server binaries (Debian's package; no service is started).
install-cluster: install
	command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

# Label Studio for `cxr review` in its own virtual environment, so its pins never touch the project's.
# sentry-sdk 3.x stops Label Studio 1.23.2 at start.
REVIEW_VENV := .venv-review
install-review:
	test -x $(REVIEW_VENV)/bin/label-studio || ( \
		$(PYTHON) -m venv $(REVIEW_VENV) && \
		$(REVIEW_VENV)/bin/python -m pip install --quiet --upgrade pip && \
		$(REVIEW_VENV)/bin/python -m pip install --quiet 'label-studio==1.23.2' 'sentry-sdk<3')

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
