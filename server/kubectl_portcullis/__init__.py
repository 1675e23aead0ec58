"""kubectl-portcullis: the kubectl plugin and exec credential plugin for Portcullis.

It runs on people's laptops and CI machines, so it is deliberately small: the standard library
only (no HTTP or JOSE library), and it never imports the server package ``portcullis``. It talks
to any OpenID Connect issuer through discovery, the authorization code flow with PKCE on a
loopback port, the device authorization grant (RFC 8628) or the password grant, caches the tokens
per issuer/client/scopes and prints a Kubernetes ``ExecCredential``.

The ID token is never *verified* here: the plugin is not the relying party, the Kubernetes API
server is, and it checks the signature against the issuer's JWKS. The plugin only decodes the
claims to learn the expiry and to show them to a person (``setup``).
"""

from __future__ import annotations

__version__ = "0.1.0"
