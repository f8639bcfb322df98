# Two commands: `make serve` and `make test`. Everything else is a helper.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint pytest bench serve clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

test: lint pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

serve: $(STAMP)
	@echo "mailkeep serve arrives with the mail-service issue (#6); the engine and 'mailkeep eseutil' work today."
	@false

clean:
	rm -rf $(VENV) build src/*.egg-info
