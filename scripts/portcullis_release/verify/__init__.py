"""Verify: prove a published image or chart is the one this project built.

Owns the verification policy (``policy``) and the checks (``verifier``): digests of the manifest
and every blob, the cosign signature, the SLSA provenance and the CycloneDX SBOM attestations.
May import the OCI model, ``attest``'s format, DSSE and key modules, and ``distribute.registry``
to read the registry. Must not import ``attest.sign``: the format both sides agree on lives in
``attest.cosign_format``, so a bug in signing cannot hide itself by being shared with the check.
Must not import ``release`` or ``cli``.
"""
