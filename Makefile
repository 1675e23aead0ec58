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
# SAML connector tests: the pysaml2 IdP signs with Debian's xmlsec1 (tests/support/saml_idp.py).
TEST_APT_PACKAGES += xmlsec1
# Browser suite (tests/browser): Debian's Chromium, driven by Playwright for Python.
TEST_APT_PACKAGES += chromium

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
	mkdir -p var
	exec $(VENV)/bin/portcullis serve $(CONFIG)

test: test-venv test-system-deps lint typecheck
	$(VENV)/bin/pytest -p no:cacheprovider -n 2 --timeout=300 tests

# lint-imports checks the layer contracts ([tool.importlinter] in pyproject.toml) on this
# checkout's sources.
lint: test-venv
	$(VENV)/bin/ruff check server scripts tests bench
	$(VENV)/bin/ruff format --check server scripts tests bench
	# The layer contracts in pyproject.toml ([tool.importlinter]), on this checkout's sources.
	PYTHONPATH=server:scripts $(VENV)/bin/lint-imports

typecheck: test-venv
	$(VENV)/bin/mypy

## ---- chart ---------------------------------------------------------------------------------
# The OCI Helm chart, its Flux install path, and the test set-up they need: a real registry
# (Debian docker-registry + htpasswd for bcrypt users) and npm peers for Flux CRD validation.
TEST_APT_PACKAGES += docker-registry apache2-utils nodejs curl

CHART_DIR := chart/portcullis

.PHONY: chart-node-deps

# Packages the chart from the release manifest's version; byte-reproducible (fixed mtimes).
chart: test-venv
	$(VENV)/bin/portcullis-release chart --chart-dir $(CHART_DIR) --output dist/chart

# npm test peers (Flux CRD validators; node-oidc-provider, the upstream of the oidc/oauth
# connector tests, run by tests/node/oidc-peer.mjs; the MCP SDK and jose, the MCP interop peer
# tests/node/mcp-peer.mjs); `npm ci` keeps them at the locked versions.
# npm comes with NodeSource's nodejs but is a separate package in Debian's.
tests/node/node_modules/.stamp: tests/node/package.json tests/node/package-lock.json | test-system-deps
	@command -v npm >/dev/null || { echo "installing Debian package: npm"; \
	  $(APT_GET) update >/dev/null && $(APT_GET) install --no-install-recommends npm >/dev/null; }
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

chart-node-deps: tests/node/node_modules/.stamp

test: chart-node-deps

## ---- image ---------------------------------------------------------------------------------
# The hardened image (issue 3): PyInstaller-frozen server on a distroless rootfs from pinned
# Debian packages, with an OpenSSL FIPS provider built from Debian's source, written as a
# reproducible OCI image layout in dist/image/ tagged with the project version.
# Recipe: images/portcullis/; code: scripts/portcullis_release/build/ ({debs,rootfs,fips_provider,
# freeze,oci_layout,image}.py). Downloads and the built provider are cached under .cache/image.
IMAGE_DIR        := dist/image
IMAGE_CACHE      := $(CACHE)/image
IMAGE_DEB_SRC    := /etc/apt/sources.list.d/portcullis-deb-src.sources
# Build the FIPS provider (compiler, dpkg-source) and sanity-check the layout (skopeo).
IMAGE_BUILD_APT_PACKAGES := dpkg-dev build-essential perl openssl skopeo ca-certificates
# runc runs the image for real in tests/image; skopeo reads the layout back; dpkg-dev for
# the FIPS provider's source package.
TEST_APT_PACKAGES += runc skopeo dpkg-dev

.PHONY: image-build-deps image-check bench-image

# deb-src lines for bookworm (+ security) so `apt-get source openssl` can fetch the signed
# source package; apt lists are refreshed only when this file is new or the source is unknown.
image-build-deps:
	@if [ ! -f $(IMAGE_DEB_SRC) ]; then \
	  printf '%s\n' '# Added by the Portcullis Makefile (make image): source packages for the FIPS provider.' \
	    'Types: deb-src' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm bookworm-updates' \
	    'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' '' \
	    'Types: deb-src' 'URIs: http://deb.debian.org/debian-security' 'Suites: bookworm-security' \
	    'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > $(IMAGE_DEB_SRC); \
	  echo "wrote $(IMAGE_DEB_SRC)"; rm -f $(IMAGE_CACHE)/.apt-updated; fi
	@mkdir -p $(IMAGE_CACHE)
	@if [ ! -f $(IMAGE_CACHE)/.apt-updated ] || ! apt-cache showsrc openssl 2>/dev/null | grep -q '^Package: openssl'; then \
	  echo "apt-get update (deb-src for the FIPS provider)"; $(APT_GET) update >/dev/null; touch $(IMAGE_CACHE)/.apt-updated; fi
	@missing=$$(for p in $(IMAGE_BUILD_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing Debian packages: $$missing"; \
	  $(APT_GET) install --no-install-recommends $$missing >/dev/null; fi

# Writes dist/image/ (OCI layout, tag = project version); same commit => same manifest digest.
image: test-venv image-build-deps
	$(VENV)/bin/portcullis-release image build --output $(IMAGE_DIR) --cache $(IMAGE_CACHE)

# Reads the layout back with an independent tool.
image-check: image
	skopeo inspect --raw oci:$(IMAGE_DIR):$$($(PY) -c 'import portcullis; print(portcullis.__version__)') >/dev/null
	@echo "skopeo reads oci:$(IMAGE_DIR)"

# The container tests (tests/image) run the built layout under runc.
test: image

# Multi-architecture (issue 14 item 7): dist/image-multiarch/ is an OCI layout whose version tag
# names an image index over linux/amd64 and linux/arm64. The arm64 image is built on this amd64
# machine: provider cross-compiled (gcc-aarch64-linux-gnu), server frozen by an arm64 Python from
# the pinned build root (images/portcullis/packages-arm64.lock) under qemu-user-static through
# binfmt_misc (root). The amd64 image inside is dist/image's, reused from the cache.
IMAGE_MULTIARCH_DIR := dist/image-multiarch
IMAGE_MULTIARCH_APT_PACKAGES := qemu-user-static binfmt-support gcc-aarch64-linux-gnu libc6-dev-arm64-cross
TEST_APT_PACKAGES += qemu-user-static binfmt-support gcc-aarch64-linux-gnu libc6-dev-arm64-cross

.PHONY: image-multiarch
image-multiarch: image
	@missing=$$(for p in $(IMAGE_MULTIARCH_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing Debian packages: $$missing"; \
	  $(APT_GET) install --no-install-recommends $$missing >/dev/null; fi
	$(VENV)/bin/portcullis-release image index --output $(IMAGE_MULTIARCH_DIR) --cache $(IMAGE_CACHE)

# tests/image/test_image_multiarch.py runs the arm64 image under qemu.
test: image-multiarch

# Size, start-to-ready and idle RSS of the image under runc vs the venv server (bench/README.md).
bench-image: image test-system-deps
	$(PY) -m bench.image_bench --runs 5

## ---- release ---------------------------------------------------------------------------
# Supply chain (issue 5): SBOM, SLSA provenance, cosign-format signatures, authenticated publish
# and verification. `make release` reads REGISTRY, AUTH_FILE, COSIGN_KEY and COSIGN_PASSWORD like
# cosign does; without REGISTRY it starts a local authenticated registry, without COSIGN_KEY it
# makes a throwaway key (and says so). Docs: docs/verify.md; code: scripts/portcullis_release/.
# It also freezes kubectl-portcullis (as `make login-binary`, into dist/login) and releases it as
# an OCI artifact with its own SBOM, provenance and signatures (docs/releasing.md).
# The tests cross-check with the real cosign (Debian trixie build, fetched into .cache/cosign
# without touching the system apt configuration) against a real docker-registry.
TEST_APT_PACKAGES += docker-registry apache2-utils dpkg debian-archive-keyring skopeo
# tests/image/test_image_vex.py reads the image's ELF imports with readelf.
TEST_APT_PACKAGES += binutils
COSIGN := $(CACHE)/cosign/usr/bin/cosign

.PHONY: release-test-deps

$(COSIGN): scripts/fetch-cosign.sh
	scripts/fetch-cosign.sh $(CACHE)/cosign
	touch $@

release-test-deps: $(COSIGN)

test: release-test-deps

# Publishes the image index of dist/image-multiarch (each platform image signed, attested and
# SBOM'd under its own digest, the index under the version tag); the arm64 .debs the SBOM reads
# are in $(IMAGE_CACHE)/debs, where image-multiarch put them.
release: test-venv image-multiarch
	$(VENV)/bin/portcullis-release release --image $(IMAGE_MULTIARCH_DIR) --deb-dir $(IMAGE_CACHE)/debs

# pip-compile (pip-tools, in its own venv: it is a locking tool, not a dependency of anything
# shipped) for `make lock` and `track-upstream --apply`; the --apply test runs it against a
# loopback index serving two real h11 wheels, fetched here with their PyPI sha256 pinned.
PIP_TOOLS_VERSION := 7.6.2
PIP_COMPILE := $(CACHE)/lockenv/bin/pip-compile
TEST_WHEELS := $(CACHE)/test-wheels
$(PIP_COMPILE):
	$(PYTHON) -m venv $(CACHE)/lockenv
	$(CACHE)/lockenv/bin/pip install -q pip-tools==$(PIP_TOOLS_VERSION)

$(TEST_WHEELS)/.stamp: scripts/fetch-test-wheels.sh | test-venv
	scripts/fetch-test-wheels.sh $(PY) $(TEST_WHEELS)
	touch $@

release-test-deps: $(PIP_COMPILE) $(TEST_WHEELS)/.stamp

# Bump plan from upstream (PyPI, OSV, the Debian archive and security tracker, Dex releases):
# dist/upstream/plan.{json,txt}. `make track-upstream APPLY=1` applies it (docs/releasing.md).
.PHONY: track-upstream
track-upstream: test-venv $(PIP_COMPILE)
	$(VENV)/bin/portcullis-release track-upstream --pip-compile $(PIP_COMPILE) $(if $(APPLY),--apply)

## ---- postgres --------------------------------------------------------------------------

# The storage tests run a real PostgreSQL 15 server of their own (tests/support/postgres.py:
# initdb in a temp dir, loopback, free port, stopped by PID). The package's default "main"
# cluster would never be used, so it is not created when the package is installed here.
TEST_APT_PACKAGES += postgresql
.PHONY: postgres-no-main-cluster
test-system-deps: postgres-no-main-cluster
postgres-no-main-cluster:
	@if ! dpkg-query -W -f='$${Status}' postgresql-15 2>/dev/null | grep -q 'install ok installed'; then \
	  mkdir -p /etc/postgresql-common/createcluster.d; \
	  echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/portcullis-tests.conf; fi

## ---- ldap ------------------------------------------------------------------------------

# The LDAP connector tests run a real OpenLDAP of their own (tests/support/slapd.py: slapd.conf
# and database in a temp dir, loopback, free ports, stopped by PID) and change it with
# ldap-utils. The package's own instance is never used, so debconf is told not to configure one
# (no prompt for an admin password, no database in /var/lib/ldap).
TEST_APT_PACKAGES += slapd ldap-utils
.PHONY: slapd-no-system-instance
test-system-deps: slapd-no-system-instance
slapd-no-system-instance:
	@if ! dpkg-query -W -f='$${Status}' slapd 2>/dev/null | grep -q 'install ok installed'; then \
	  echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections; fi

## ---- release artefacts ------------------------------------------------------------------

# Portcullis and node-oidc-provider side by side (wrk on loopback, rounds interleaved); not a
# timed test. Figures go to bench/results/ and bench/README.md. Quick run, e.g.:
#   make bench BENCH_ARGS="--duration 3 --rounds 1 --backends sqlite --endpoints refresh-rotate"
BENCH_ARGS ?=
bench/node/node_modules/.stamp: bench/node/package.json bench/node/package-lock.json | test-system-deps
	@command -v npm >/dev/null || { echo "installing Debian package: npm"; \
	  $(APT_GET) update >/dev/null && $(APT_GET) install --no-install-recommends npm >/dev/null; }
	cd bench/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

bench: test-venv test-system-deps bench/node/node_modules/.stamp
	@command -v wrk >/dev/null || { $(APT_GET) update >/dev/null; $(APT_GET) install --no-install-recommends wrk >/dev/null; }
	$(PY) -m bench.run $(BENCH_ARGS)

## ---- maintenance ------------------------------------------------------------------------

# Re-lock every requirements file with hashes (needs network to PyPI).
lock: $(PIP_COMPILE)
	cd requirements && for f in build runtime test release freeze; do \
	  $(PIP_COMPILE) -q --generate-hashes --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links -o $$f.txt $$f.in; done

clean:
	rm -rf dist build .cache .pytest_cache .mypy_cache .ruff_cache

## ---- admin API -----------------------------------------------------------------------
# Dex-compatible gRPC admin API (server/portcullis/admin/), and Portcullis's own services beside
# it (revocation.proto). The Python modules generated from the .proto files are committed;
# regenerate them after editing a .proto with `make admin-proto`
# (tests/admin/test_proto_generated.py fails when they are stale). ADMIN_PROTO_OUT lets that
# test generate into a temporary directory.
ADMIN_PROTO_OUT ?= server

admin-proto: test-venv
	mkdir -p $(ADMIN_PROTO_OUT)
	cd server && ../$(PY) -m grpc_tools.protoc -I . \
	  --plugin=protoc-gen-mypy=../$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=../$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=$(abspath $(ADMIN_PROTO_OUT)) --grpc_python_out=$(abspath $(ADMIN_PROTO_OUT)) \
	  --mypy_out=$(abspath $(ADMIN_PROTO_OUT)) --mypy_grpc_out=$(abspath $(ADMIN_PROTO_OUT)) \
	  portcullis/admin/api.proto portcullis/admin/revocation.proto

.PHONY: admin-proto

## ---- kubectl plugin ----------------------------------------------------------------------
# `kubectl-portcullis` (server/kubectl_portcullis/, docs/kubectl-plugin.md): the exec credential
# plugin. Its device-flow tests run node-oidc-provider from tests/node (tests/node/device-peer.mjs).
# `make login-binary` freezes it into one reproducible file with a sha256 and a krew manifest:
#   dist/login/kubectl-portcullis-linux-amd64{,.sha256} and dist/login/portcullis.yaml
# built in a venv holding only PyInstaller (the plugin uses the standard library only).
LOGIN_DIR           := dist/login

.PHONY: login-binary

login-binary: test-venv
	$(PY) -m portcullis_release.build.login_binary --output $(LOGIN_DIR) --cache $(CACHE)/login
