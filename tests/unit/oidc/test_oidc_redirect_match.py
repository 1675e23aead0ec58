"""Redirect-URI matching: exact, with RFC 8252 loopback port flexibility for public clients."""

from __future__ import annotations

import pytest
from portcullis.oidc.redirect import redirect_uri_allowed

APP = ("https://app.example/callback",)
NATIVE = ("http://127.0.0.1:8000/", "http://[::1]:8000/cb")


@pytest.mark.parametrize(
    ("requested", "registered", "public", "allowed"),
    [
        ("https://app.example/callback", APP, False, True),
        ("https://app.example/callback/", APP, False, False),
        ("https://app.example/callback?x=1", APP, False, False),
        ("https://APP.example/callback", APP, False, False),
        ("https://app.example:443/callback", APP, False, False),
        ("http://app.example/callback", APP, False, False),
        # Confidential clients get no loopback port flexibility.
        ("http://127.0.0.1:9000/", ("http://127.0.0.1:8000/",), False, False),
        # Public clients: any port on the registered loopback URI, same path.
        ("http://127.0.0.1:9000/", NATIVE, True, True),
        ("http://127.0.0.1/", NATIVE, True, True),
        ("http://127.0.0.1:9000/other", NATIVE, True, False),
        ("http://[::1]:4242/cb", NATIVE, True, True),
        ("https://127.0.0.1:9000/", NATIVE, True, False),
        ("http://localhost:9000/", NATIVE, True, False),
        ("http://127.0.0.1:9000/#frag", NATIVE, True, False),
        ("http://evil.example:8000/", NATIVE, True, False),
        # A public client with no registered URIs: loopback or out-of-band only.
        ("http://127.0.0.1:5000/anything", (), True, True),
        ("urn:ietf:wg:oauth:2.0:oob", (), True, True),
        ("https://evil.example/", (), True, False),
        ("urn:ietf:wg:oauth:2.0:oob", APP, False, False),
    ],
)
def test_redirect_uri_allowed(
    requested: str, registered: tuple[str, ...], public: bool, allowed: bool
) -> None:
    assert redirect_uri_allowed(requested, registered, public=public) is allowed
