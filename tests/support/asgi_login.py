"""Drive a browser login through an in-process issuer (httpx over ASGI): /auth, the password
form of the only connector, the approval page. For unit tests of what the authorization
endpoint decides and what the token endpoint then issues, without a server process."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

import httpx


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636 §4.1-4.2)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def login(
    c: httpx.AsyncClient,
    auth_path: str,
    params: dict[str, str] | list[tuple[str, str]],
    *,
    username: str,
    password: str,
) -> str:
    """Run the login and return the final redirect Location (to the client, code or error).
    ``params`` may be a list to repeat a parameter (RFC 8707 ``resource``)."""
    r = await c.get(auth_path, params=params)
    assert r.status_code == 303, r.text
    location = str(r.headers["location"])
    if not location.startswith(str(c.base_url).rstrip("/") + "/") and not location.startswith("/"):
        return location  # an error redirect straight back to the client
    r = await c.get(location)
    assert r.status_code == 303, r.text
    login_url = r.headers["location"]
    r = await c.get(login_url)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', r.text)
    assert csrf is not None, r.text
    r = await c.post(
        login_url, data={"login": username, "password": password, "csrf_token": csrf[1]}
    )
    assert r.status_code == 303, r.text
    approval_url = r.headers["location"]
    r = await c.get(approval_url)
    if r.status_code == 303:
        return str(r.headers["location"])
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', r.text)
    req = re.search(r'name="req" value="([^"]+)"', r.text)
    assert csrf is not None, r.text
    assert req is not None, r.text
    r = await c.post(
        approval_url, data={"csrf_token": csrf[1], "req": req[1], "approval": "approve"}
    )
    assert r.status_code == 303, r.text
    return str(r.headers["location"])
