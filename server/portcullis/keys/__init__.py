"""Signing keys: generation, rotation, JWKS."""
