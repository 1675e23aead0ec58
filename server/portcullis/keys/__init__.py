"""Signing keys: generation (through the FIPS provider when FIPS mode is on), scheduled
rotation shared by every replica through storage, the cached signing key and the JWKS.

Must not: import connectors, oidc, the adapters or the assembly; it sits on storage and the
leaf modules (clock, fips).
"""
