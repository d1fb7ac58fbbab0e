# gated — see README.md. Every target creates .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := mosquitto chromium socat faketime

.PHONY: install test check demo bench lint typecheck system-deps torture soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use as real peers: the MQTT broker, the browser, socat for
# RTU over a pty pair, libfaketime to step a daemon's wall clock. Installed only when missing.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v faketime >/dev/null || missing="$$missing faketime"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The quick loop while working: ruff, mypy and the unit tier (tests/conftest.py), in well
# under a minute, nothing to install but the venv.
check: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider -m unit

test: system-deps $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: $(STAMP)
	$(BIN)/python -m gated.demo

bench: system-deps $(STAMP)
	$(BIN)/python -m bench

torture: system-deps $(STAMP)
	GATED_TORTURE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m slow tests

# A day at two sites with chaos (docs/reliability.md, "A day at two sites"): about 15 min.
# The report is printed and kept in var/simday/seed-N/report.{txt,json}. SEED=random picks a
# day nobody ran (and prints its number, to run it again).
SEED ?= 1
soak: system-deps $(STAMP)
	$(BIN)/gated sim day --seed $(SEED)

clean:
	rm -rf $(VENV) build *.egg-info
