"""The ``google`` and ``linkedin`` connectors inside the issuer (in-process, httpx over ASGI),
against their stand-ins: a whole login gives tokens with the Workspace groups; an upstream rate
limit or 5xx during the callback is a clear "Login failed" page (502, the upstream's reason,
a retry link), never a 500 or a stack trace; upstream tokens never reach the log.

Only the assembly's connector factory is pointed at the stand-ins (the connectors' test-only
``endpoints``), since no config key moves Google's or LinkedIn's addresses."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from portcullis import issuer as assembly
from portcullis.clock import SystemClock
from portcullis.connectors.base import Connector, ConnectorEnv
from portcullis.connectors.google import GoogleConfig, GoogleConnector, GoogleEndpoints
from portcullis.connectors.google_directory import GoogleAPIs
from portcullis.connectors.linkedin import LinkedInConfig, LinkedInConnector, LinkedInEndpoints
from portcullis.issuer import create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage
from pydantic import BaseModel

from tests.support import google_api as g
from tests.support import linkedin_api as li
from tests.support.asgi_login import pkce_pair
from tests.support.google_api import GoogleAPI, google_browser
from tests.support.linkedin_api import LinkedInAPI, linkedin_browser

pytestmark = pytest.mark.anyio

APP_REDIRECT = "http://127.0.0.1:8000/callback"


def _config(connector: str, key_file: Path, admin: str) -> str:
    if connector == "google":
        settings = f"""
              clientID: {g.CLIENT_ID}
              clientSecret: {g.CLIENT_SECRET}
              redirectURI: {g.CALLBACK}
              hostedDomains: [example.com]
              serviceAccountFilePath: {key_file}
              domainToAdminEmail: {{"*": {admin}}}
        """
    else:
        settings = f"""
              clientID: {li.CLIENT_ID}
              clientSecret: {li.CLIENT_SECRET}
              redirectURI: {li.CALLBACK}
        """
    return textwrap.dedent(
        f"""
        issuer: http://127.0.0.1:5556/dex
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556}}
        oauth2: {{skipApprovalScreen: true}}
        staticClients:
          - id: kubectl
            public: true
            redirectURIs: ["{APP_REDIRECT}"]
        connectors:
          - type: {connector}
            id: {connector}
            name: {connector.title()}
            config:
        """
    ) + textwrap.indent(textwrap.dedent(settings).strip() + "\n", " " * 6)


def _stand_in_factory(
    google: GoogleAPI, linkedin: LinkedInAPI
) -> Callable[[str, str, str, BaseModel, ConnectorEnv], Connector]:
    def build(
        connector_id: str, name: str, kind: str, config: BaseModel, env: ConnectorEnv
    ) -> Connector:
        if isinstance(config, GoogleConfig):
            apis = GoogleAPIs(admin=google.base_url, token=google.token_url)
            endpoints = GoogleEndpoints(issuer=google.base_url, apis=apis)
            return GoogleConnector(connector_id, name, kind, config, env, endpoints, environ={})
        assert isinstance(config, LinkedInConfig)
        web = LinkedInEndpoints(web=linkedin.base_url, api=f"{linkedin.base_url}/v2")
        return LinkedInConnector(connector_id, name, kind, config, env, web)

    return build


@pytest.fixture
def stand_ins(
    google_api: GoogleAPI, linkedin_api: LinkedInAPI, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[GoogleAPI, LinkedInAPI]]:
    monkeypatch.setattr(assembly, "build_connector", _stand_in_factory(google_api, linkedin_api))
    yield google_api, linkedin_api
    google_api.throttle_next = None
    google_api.fail_next = None
    linkedin_api.throttle_next = False
    linkedin_api.fail_next = None


async def _issuer(text: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_issuer(parse_config(text), storage=MemoryStorage(), clock=SystemClock()).app
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        yield c


async def _upstream_login(
    client: httpx.AsyncClient, browser: Callable[[str, str], dict[str, str]], login: str
) -> tuple[httpx.Response, str]:
    """/auth through to the callback's answer; returns it and the PKCE verifier."""
    verifier, challenge = pkce_pair()
    params = {
        "client_id": "kubectl",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid email profile groups offline_access",
        "state": secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    response = await client.get("/dex/auth", params=params)
    while response.status_code in (302, 303) and response.headers["location"].startswith(
        ("/", str(client.base_url))
    ):
        response = await client.get(response.headers["location"])
    assert response.status_code in (302, 303), response.text
    upstream = response.headers["location"]
    callback = await asyncio.to_thread(browser, upstream, login)
    return await client.get("/dex/callback", params=callback), verifier


def _assert_clear_page(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 502, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "Login failed" in response.text
    assert reason in response.text
    assert "Traceback" not in response.text
    assert re.search(r'href="[^"]*/dex/auth[^"]*"', response.text), "no retry link"


async def test_google_login_gives_groups_and_failures_are_pages(
    stand_ins: tuple[GoogleAPI, LinkedInAPI], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    google, _ = stand_ins
    account = google.add_service_account(f"web-{secrets.token_hex(3)}")
    admin = google.add_user(f"admin{secrets.token_hex(3)}")
    google.super_admins.add(admin.email)
    key_file = account.key_file(tmp_path / "sa.json", google.token_url)
    user = google.add_user(f"user{secrets.token_hex(3)}")
    group = f"k8s-{secrets.token_hex(3)}@example.com"
    google.add_member(group, user.email)
    caplog.set_level(logging.DEBUG)
    async for client in _issuer(_config("google", key_file, admin.email)):
        answer, verifier = await _upstream_login(client, google_browser, user.email)
        assert answer.status_code == 303, answer.text
        location = answer.headers["location"]
        while location.startswith("/"):
            location = (await client.get(location)).headers["location"]
        code = parse_qs(urlsplit(location).query)["code"][0]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_REDIRECT,
            "client_id": "kubectl",
            "code_verifier": verifier,
        }
        tokens = (await client.post("/dex/token", data=form)).json()
        payload = tokens["id_token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert (claims["email"], claims["groups"]) == (user.email, [group])

        google.throttle_next = (429, 20)
        answer, _ = await _upstream_login(client, google_browser, user.email)
        _assert_clear_page(answer, "try again in 20 seconds")
        google.fail_next = ("directory", 500)
        answer, _ = await _upstream_login(client, google_browser, user.email)
        _assert_clear_page(answer, "group memberships: HTTP 500")
        outsider = google.add_user(f"user{secrets.token_hex(3)}", "example.org")
        answer, _ = await _upstream_login(client, google_browser, outsider.email)
        _assert_clear_page(answer, "not in a domain allowed")
    upstream_tokens = [*google.refresh_tokens, *google.access_tokens]
    assert not any(token in caplog.text for token in upstream_tokens)


async def test_linkedin_login_and_failures_are_pages(
    stand_ins: tuple[GoogleAPI, LinkedInAPI], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, linkedin = stand_ins
    member = f"member{secrets.token_hex(4)}"
    linkedin.add_member(member)
    caplog.set_level(logging.DEBUG)
    async for client in _issuer(_config("linkedin", tmp_path, "")):
        answer, _ = await _upstream_login(client, linkedin_browser, member)
        assert answer.status_code == 303, answer.text
        linkedin.throttle_next = True
        answer, _ = await _upstream_login(client, linkedin_browser, member)
        _assert_clear_page(answer, "try again later")
        linkedin.fail_next = ("/v2/me", 503)
        answer, _ = await _upstream_login(client, linkedin_browser, member)
        _assert_clear_page(answer, "profile: HTTP 503")
    assert not any(token in caplog.text for token in linkedin.access_tokens)
