# Two commands: `make serve` and `make test`. Everything else is a helper.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint pytest bench bench-deps serve clean system-deps

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy

# Real servers the tests talk to, from Debian's packages: OpenLDAP slapd for the LDAP backend.
# As root (CI) they are installed when missing; the test harness starts its own instance.
system-deps:
	@if [ ! -x /usr/sbin/slapd ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slapd ldap-utils; \
	  else echo "slapd is missing: run 'sudo apt-get install slapd ldap-utils' (the LDAP tests need it)"; fi; \
	fi

pytest: $(STAMP) system-deps
	$(BIN)/pytest -q -p no:cacheprovider

test: lint pytest

# The mail benchmark's baseline is Debian's Dovecot (its own instance, started by bench/mail.py).
bench-deps:
	@if [ ! -x /usr/sbin/dovecot ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dovecot-imapd dovecot-lmtpd; \
	  else echo "dovecot is missing: run 'sudo apt-get install dovecot-imapd dovecot-lmtpd' (bench/mail.py needs it)"; fi; \
	fi

bench: $(STAMP) bench-deps
	$(BIN)/python bench/run.py

DATA ?= ./mailkeep-data

serve: $(STAMP)
	$(BIN)/mailkeep --data $(DATA) serve

clean:
	rm -rf $(VENV) build src/*.egg-info
