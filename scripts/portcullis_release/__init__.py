"""Release tooling for Portcullis (the ``portcullis-release`` CLI), kept apart from the server so
the image never carries build tools.

The folder is the pipeline, one sub-package per stage, each importing only from the stages
before it (checked by the ``release:`` import-linter contracts in ``pyproject.toml``)::

    cli.py          the command line, and nothing else: parses arguments, calls functions
    release.py      `make release`: every stage in order, by function call
    verify/         prove a published artefact is the one built (digests, signature, attestations)
    distribute/     registry client, publish, Helm chart, Flux files, the throwaway local registry
    attest/         SBOMs, provenance, DSSE, cosign keys, signing, cosign's wire format
    build/          the image: Debian packages, rootfs, FIPS provider, PyInstaller, OCI layout
    plan.py         ReleasePlan: which artefacts go to which repository and tag
    manifest.py     release/manifest.yaml: which image and chart a release is, by digest
    oci.py          the OCI content model: digests, descriptors, artifacts, references, layouts

Nothing here imports ``tests`` or the server package ``portcullis``.
"""

from pathlib import Path

__all__ = ["REPO_ROOT", "__version__"]

__version__ = "0.1.0"

# The checkout this tooling runs from (scripts/portcullis_release/ -> the repository root): where
# the release manifest, the chart sources and the lock files are found by default.
REPO_ROOT = Path(__file__).resolve().parents[2]
