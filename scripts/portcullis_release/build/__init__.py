"""Build: the hardened server image, written as a reproducible OCI image layout (``make image``).

Owns the pinned inputs (``packages_lock``: Debian packages and the FIPS provider source), fetching
them (``debs``), the OpenSSL FIPS provider (``fips_provider``), the PyInstaller freeze
(``freeze``), the distroless root filesystem (``rootfs``), reproducible layers and image config
(``oci_layout``) and the recipe that puts them together (``image``), for every architecture:
another one than the machine's (arm64) is frozen and self-tested under qemu in a pinned build
root (``emulation``), and ``image`` writes the OCI image index over the platforms.
Imports only the OCI model (``portcullis_release.oci``); must not import ``attest``,
``distribute``, ``verify``, ``release`` or ``cli`` (the image is built before anything is signed
or pushed), nor the server package: the server is frozen from its sources, never imported.
"""
