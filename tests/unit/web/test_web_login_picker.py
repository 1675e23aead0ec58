"""The connector picker in-process: a client allowed one connector skips it unless
``oauth2.alwaysShowLoginScreen``; names and types are shown; the retry link of an error page
(``/auth?state=``) shows the methods again, only to the browser that started the login."""

from __future__ import annotations

import re
import textwrap
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from portcullis.clock import FrozenClock
from portcullis.issuer import create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage

ISSUER = "http://127.0.0.1:5556/dex"
REDIRECT = "http://127.0.0.1:5555/callback"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _client(always_show: bool) -> httpx.AsyncClient:
    text = textwrap.dedent(
        f"""
        issuer: {ISSUER}
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556}}
        oauth2: {{alwaysShowLoginScreen: {str(always_show).lower()}}}
        staticClients:
          - id: one
            secret: one-secret
            redirectURIs: [{REDIRECT}]
            allowedConnectors: [dir]
          - id: all
            secret: all-secret
            redirectURIs: [{REDIRECT}]
        connectors:
          - {{type: mockPassword, id: dir, name: Directory, config: {{username: u, password: p}}}}
          - {{type: mockCallback, id: cb, name: Callback}}
        """
    )
    issuer = create_issuer(parse_config(text), storage=MemoryStorage(), clock=FrozenClock())
    transport = httpx.ASGITransport(app=issuer.app)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556")


def _auth(client_id: str) -> str:
    query = {
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "openid",
    }
    return "/dex/auth?" + urlencode(query)


async def test_one_allowed_connector_skips_the_picker() -> None:
    async with _client(always_show=False) as http:
        response = await http.get(_auth("one"))
    assert response.status_code == 303
    assert urlsplit(response.headers["location"]).path == "/dex/auth/dir"


async def test_always_show_login_screen_keeps_the_picker() -> None:
    async with _client(always_show=True) as http:
        response = await http.get(_auth("one"))
    assert response.status_code == 200
    assert re.findall(r'id="connector-([^"]+)"', response.text) == ["dir"]


async def test_picker_shows_allowed_connectors_with_names_and_types() -> None:
    async with _client(always_show=False) as http:
        response = await http.get(_auth("all"))
    assert response.status_code == 200
    assert re.findall(r'id="connector-([^"]+)"', response.text) == ["dir", "cb"]
    assert "Log in with Directory" in response.text
    assert '<span class="pc-connector-type">mockPassword</span>' in response.text


async def test_the_retry_link_shows_the_methods_again_to_the_same_browser_only() -> None:
    async with _client(always_show=False) as http:
        first = await http.get(_auth("all"))
        state = re.search(r"state=([A-Za-z0-9_-]+)", first.text)
        assert state
        again = await http.get("/dex/auth?" + urlencode({"state": state.group(1)}))
        assert again.status_code == 200
        assert re.findall(r'id="connector-([^"]+)"', again.text) == ["dir", "cb"]
        http.cookies.clear()
        stranger = await http.get("/dex/auth?" + urlencode({"state": state.group(1)}))
    assert stranger.status_code == 403
