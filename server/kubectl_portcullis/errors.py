"""The plugin's errors: each carries a message fit to show a person on stderr.

kubectl shows an exec plugin's stderr to the user verbatim, so messages name the flag, the
endpoint or the OAuth error code, and never contain a token or a secret.
"""

from __future__ import annotations


class PluginError(Exception):
    """A failure explained to the user; the CLI prints it and exits non-zero."""


class OAuthError(PluginError):
    """The issuer answered with an OAuth 2.0 error (RFC 6749 §5.2 / RFC 8628 §3.5)."""

    def __init__(self, endpoint: str, error: str, description: str = "") -> None:
        self.endpoint = endpoint
        self.error = error
        self.description = description
        detail = f": {description}" if description else ""
        super().__init__(f"{endpoint} answered {error}{detail}")
