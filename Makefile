# gated — see README.md. Every target creates .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := mosquitto chromium socat faketime fuse3
# Debian packaging (make deb), and what the package tests run (lintian)
DEB_PACKAGES := debhelper dh-virtualenv dpkg-dev lintian python3-venv python3-dev git
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null)
# The package's version: the project's, and which build of it (commits since the first, the
# head: 0.1.0+git762.g7b6b86c). Every build is newer than those before it, so `apt install
# ./gated_NEW.deb` upgrades: with one version for every build, apt took a newer build for the
# one installed and did nothing (no stop, no store upgrade, the old code left running).
DEB_VERSION := $(shell n=$$(git rev-list --count HEAD 2>/dev/null) && h=$$(git rev-parse --short=7 HEAD) && \
	echo "$(VERSION)+git$$n.g$$h" || echo "$(VERSION)")
DEB := dist/gated_$(DEB_VERSION)_$(DEB_ARCH).deb
# make test runs the test files on this many workers (pytest-xdist, a file per worker at a
# time: its fixtures and its daemons stay together); the suite is mostly waiting on real
# peers, so two workers on two cores take about half the time. TEST_JOBS=0 runs it in one.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; [ $$n -lt 2 ] && n=2; echo $$n)

.PHONY: install test check demo bench lint typecheck system-deps deb-deps deb torture soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use as real peers: the MQTT broker, the browser, socat for
# RTU over a pty pair, libfaketime to step a daemon's wall clock, FUSE for a disk that loses
# unsynced writes in a power cut (simulator/power_cut.py). Installed only when missing.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v faketime >/dev/null || missing="$$missing faketime"; \
	command -v fusermount3 >/dev/null || missing="$$missing fuse3"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The Debian packaging tools, installed only when missing (make deb, and make test's package tests)
deb-deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# gated_<version>_<arch>.deb in dist/: the daemon and its dependencies in /opt/venvs/gated
# (dh-virtualenv; compiled wheels make it per architecture), built in a copy of the tree
# under build/deb so nothing is written beside the repository.
deb: deb-deps
	@test "$$(dpkg-parsechangelog -S Version)" = "$(VERSION)" || \
	  { echo "debian/changelog ($$(dpkg-parsechangelog -S Version)) and pyproject.toml ($(VERSION)) differ"; exit 1; }
	rm -rf build/deb && mkdir -p build/deb/gated-$(VERSION) dist
	git ls-files -z --cached --others --exclude-standard | grep -zv '^\.ci/' | \
	  tar --null -T - -cf - | tar -xf - -C build/deb/gated-$(VERSION)
	# the build's version in the copy: the package's (changelog) and the program's own
	# (`gated --version`, the status the central system sees: a PEP 440 local version)
	cd build/deb/gated-$(VERSION) && sed -i '1s/([^)]*)/($(DEB_VERSION))/' debian/changelog && \
	  sed -i 's/^version = ".*"/version = "$(DEB_VERSION)"/' pyproject.toml
	# a wheel cache of its own: a wheel pip built earlier for another Python (the dev
	# venv's) would carry that Python's library path into the package
	cd build/deb/gated-$(VERSION) && PIP_CACHE_DIR=$(CURDIR)/build/pip-cache \
	  dpkg-buildpackage -b -us -uc --no-sign > ../build.log 2>&1 || \
	  { tail -40 ../build.log; exit 1; }
	cp build/deb/gated_$(DEB_VERSION)_$(DEB_ARCH).deb $(DEB)
	@echo "built $(DEB)"

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The quick loop while working: ruff, mypy and the unit tier (tests/conftest.py), in well
# under a minute, nothing to install but the venv.
check: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider -m unit

test: system-deps deb-deps $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The demo starts afresh; KEEP=1 keeps the last run's store. A flag after `make demo` is
# make's own (`--keep` is its --keep-going, and the demo never saw it): so that mistake stops
# here rather than wiping the store it meant to keep. ARGS goes to the demo as it is
# (python -m gated.demo --help).
KEEP ?=
ARGS ?=
demo: $(STAMP)
	@if [ -z "$(KEEP)" ] && [ -n "$(findstring k,$(firstword -$(MAKEFLAGS)))" ]; then \
	  echo "make took --keep (or -k) as its own --keep-going, so the demo never saw it: make demo KEEP=1" \
	    "keeps its store, make demo KEEP=0 starts afresh" >&2; exit 2; \
	fi
	$(BIN)/python -m gated.demo $(if $(filter-out 0 no false,$(KEEP)),--keep) $(ARGS)

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
	rm -rf $(VENV) build dist *.egg-info
