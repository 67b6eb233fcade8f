# The two quickstart commands (`make up`, `make test`) install everything they need into
# .venv from this repository's pyproject.toml, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export DO_NOT_TRACK := 1
export DAGSTER_DISABLE_TELEMETRY := 1
# The venv's tools (dbt, dagster, penguin) first, as if it were activated.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install up test bench lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# Prints where the UIs, the sent mail and the logs are; the demo run shows in the Dagster UI.
up: $(STAMP)
	$(BIN)/penguin up --demo

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# sqlfluff's dbt templater compiles the models as dbt does, so it connects: to the database
# `penguin env` points at (the embedded one, started and migrated if need be).
lint: $(STAMP)
	$(BIN)/ruff check engine orchestration dashboards tests benchmarks
	$(BIN)/penguin db upgrade
	eval "$$($(BIN)/penguin env)" && cd dbt_project && $(abspath $(BIN))/sqlfluff lint models

# Removes what the build made here. State (database, mail, uploads) lives in PENGUIN_HOME: the
# per-user data folder (`~/.local/share/penguinmails` on Linux) unless ./.penguin exists, which
# this removes too; the per-user folder is left alone (`penguin db stop`, then delete it).
clean:
	rm -rf $(VENV) .penguin dbt_project/target dbt_project/logs
