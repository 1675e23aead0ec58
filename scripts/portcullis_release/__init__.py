"""Release tooling for Portcullis: image build, chart packaging, SBOM, provenance, signing,
publishing and verification. Kept apart from the server so the image never carries build tools."""

__all__ = ["__version__"]

__version__ = "0.1.0"
