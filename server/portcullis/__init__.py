"""Portcullis: a hardened, Dex-compatible OpenID Connect issuer for Kubernetes."""

__all__ = ["__version__"]

__version__ = "0.1.0"
