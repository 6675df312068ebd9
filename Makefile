# Quick start: `make up` runs the service, `make test` runs the whole suite. Both create .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: install
	$(BIN)/flywheel up

lint: install
	$(BIN)/ruff check .

# Tests build their own tiny models; nothing may be downloaded.
test: install lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
