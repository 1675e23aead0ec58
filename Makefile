# Portcullis — every set-up step lives here so a fresh Debian 12 machine needs nothing by hand.
# Interfaces other tools rely on: run, test, image, chart, release, bench (see README.md).

SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
PYTHON       ?= python3
VENV         := .venv
PY           := $(VENV)/bin/python
PIP          := $(PY) -m pip --disable-pip-version-check
CONFIG       ?= examples/config-dev.yaml
APT_GET      := DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0
CACHE        ?= $(CURDIR)/.cache
export SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

# Debian packages the test suite drives for real (extended by each area that needs one).
TEST_APT_PACKAGES := ca-certificates

.PHONY: run test lint typecheck unit-test integration-test image chart release bench lock \
        venv test-venv system-python test-system-deps clean

## ---- environment -------------------------------------------------------------------------

system-python:
	@$(PYTHON) -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11), sys.version' 2>/dev/null \
	  || { echo "installing python3-venv"; $(APT_GET) update >/dev/null; $(APT_GET) install python3 python3-venv >/dev/null; }

$(VENV)/.stamp-runtime: requirements/runtime.txt requirements/build.txt pyproject.toml | system-python
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes -r requirements/build.txt
	$(PIP) install -q --require-hashes -r requirements/runtime.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.stamp-test: requirements/test.txt requirements/release.txt $(VENV)/.stamp-runtime
	$(PIP) install -q --require-hashes -r requirements/test.txt -r requirements/release.txt
	touch $@

venv: $(VENV)/.stamp-runtime
test-venv: $(VENV)/.stamp-test

test-system-deps:
	@missing=$$(for p in $(TEST_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing Debian packages: $$missing"; \
	  $(APT_GET) update >/dev/null && $(APT_GET) install --no-install-recommends $$missing >/dev/null; fi

## ---- the two commands ------------------------------------------------------------------

run: venv
	exec $(VENV)/bin/portcullis serve $(CONFIG)

test: test-venv test-system-deps lint typecheck
	$(VENV)/bin/pytest -p no:cacheprovider -n 2 --timeout=300 tests

lint: test-venv
	$(VENV)/bin/ruff check server scripts tests bench
	$(VENV)/bin/ruff format --check server scripts tests bench

typecheck: test-venv
	$(VENV)/bin/mypy

## ---- chart ---------------------------------------------------------------------------------
# The OCI Helm chart, its Flux install path, and the test set-up they need: a real registry
# (Debian docker-registry + htpasswd for bcrypt users) and npm peers for Flux CRD validation.
TEST_APT_PACKAGES += docker-registry apache2-utils

CHART_DIR := chart/portcullis

.PHONY: chart-node-deps

# Packages the chart from the release manifest's version; byte-reproducible (fixed mtimes).
chart: test-venv
	$(VENV)/bin/portcullis-release chart --output dist/chart

# npm test peers (Flux CRD validators); `npm ci` keeps them at the locked versions.
tests/node/node_modules/.stamp: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

chart-node-deps: tests/node/node_modules/.stamp

test: chart-node-deps

## ---- release artefacts ------------------------------------------------------------------

bench: test-venv
	$(PY) bench/run.py

## ---- maintenance ------------------------------------------------------------------------

# Re-lock every requirements file with hashes (needs network to PyPI).
lock:
	$(PYTHON) -m venv $(CACHE)/lockenv && $(CACHE)/lockenv/bin/pip install -q pip-tools
	cd requirements && for f in build runtime test release; do \
	  $(CACHE)/lockenv/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links -o $$f.txt $$f.in; done

clean:
	rm -rf dist build .cache .pytest_cache .mypy_cache .ruff_cache
