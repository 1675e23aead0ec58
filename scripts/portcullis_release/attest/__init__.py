"""Attest: say what a release is and sign it, in formats cosign, Flux and SLSA verifiers read.

Owns the CycloneDX SBOMs (``sbom``), the SLSA provenance (``provenance``), DSSE envelopes
(``dsse``), cosign key files (``cosign_keys``), cosign's wire format (``cosign_format``: tag
rules, media types, annotations, the .sig/.att manifest), the staged attachments (``attachments``)
and signing itself (``sign``).
May import the OCI model, the plan and ``build.packages_lock`` (the pins the SBOM and provenance
name). Must not import ``distribute``, ``verify``, ``release`` or ``cli``. Inside: ``sign`` is
the only module that signs images, and nothing outside ``attest`` but ``release`` and ``cli``
imports it; ``cosign_format`` imports nothing from ``attest``.
"""
