"""Tracking upstream: `portcullis-release track-upstream`.

For every pinned input it asks the upstream that publishes it whether something changed: PyPI's
JSON API for each distribution in the runtime lock (new version, the pin yanked or vanished),
the Debian archive's package indexes for each rootfs package and the OpenSSL source package
(security updates, pins that vanished from the mirror), Dex's releases feed (the compatibility
target), OSV for Python vulnerabilities and the Debian security tracker for Debian ones. The
result is a bump plan (``dist/upstream/plan.json`` and a table): what changes, why, the CVE ids
with severity, the SLA deadline from ``release/policy.yaml`` and what is past due. VEX statements
(``release/vex.json``) that say a CVE does not affect the image are honoured.

Modules: ``feeds`` (HTTP with clear errors, URLs configurable), ``policy`` (SLA and compatibility
target), ``track`` (the plan), ``apply`` (``--apply``: locks, version, CHANGELOG). This package
sits beside ``verify`` in the release layers: it reads the locks through ``build.packages_lock``
and never imports the pipeline stages that publish.
"""
