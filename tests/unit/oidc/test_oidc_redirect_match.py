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


# Issue 9, finding 6: the loopback matcher compared a normalised parse but the raw string was
# stored and redirected to. Every one of these was accepted for a public client.
@pytest.mark.parametrize("registered", [NATIVE, ()], ids=["registered", "unregistered"])
@pytest.mark.parametrize(
    "requested",
    [
        "http://evil.com\\@127.0.0.1:8000/",
        "http://evil.com@127.0.0.1:9999/",
        "http://user:pw@127.0.0.1:8000/",
        "http://127.0.0.1:8000/\r\nSet-Cookie: x=1",
        "http://127.0.0.1:8000/\n",
        "http://127.0.0.1:8000/\t",
        "http://127.0.0.1:8000/ cb",
        "http://127.0.0.1:8000/\x00",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:-1/",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:08000/",
        "http://127.0.0.1:/",
        "http://127.0.0.1:80a/",
        "http://127.0.0.1\\.evil.com:8000/",
        "http://127.0.0.1.evil.com:8000/",
        "http://127.0.0.1:8000\\@evil.com/",
        "http://[::1]:8000\\@evil.com/cb",
        "HTTP://127.0.0.1:8000/",
    ],
)
def test_loopback_redirect_with_userinfo_backslash_controls_or_bad_port_is_refused(
    requested: str, registered: tuple[str, ...]
) -> None:
    assert not redirect_uri_allowed(requested, registered, public=True)


def test_loopback_match_is_on_the_exact_string_redirected_to() -> None:
    # The accepted URI is exactly the registered one with only the port changed.
    assert redirect_uri_allowed("http://127.0.0.1:65535/", NATIVE, public=True)
    assert redirect_uri_allowed("http://[::1]:1/cb", NATIVE, public=True)
    assert not redirect_uri_allowed("http://127.0.0.1:9000/?x=1", NATIVE, public=True)
    assert not redirect_uri_allowed("http://127.0.0.1:9000//", NATIVE, public=True)
