"""The released kubectl-portcullis binaries: what the kubeconfig page shows beside its
download links.

Generated from release/manifest.yaml by `portcullis-release generate` (scripts/portcullis_release/
distribute/plugin_copies.py); do not edit. `generate --check` fails when it drifts.
"""

from __future__ import annotations

#: True until a release pins real digests: the page then shows no sha256.
DEVELOPMENT = True
VERSION = "0.1.0"
#: (os, arch) -> sha256 of the executable the release published for that platform.
SHA256: dict[tuple[str, str], str] = {}
