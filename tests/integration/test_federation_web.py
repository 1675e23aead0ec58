"""The federated connectors through the web layer of a real `portcullis serve`: the authproxy
connector behind a trusted proxy (and refused from anywhere else), the SAML callback's
same-origin hop and its limits, the callback body cap, the picker for a client allowed one
connector, and each connector's upstream failure as a page for people with a retry link.

The proxy is played by an HTTP client whose socket is bound to 127.0.0.2 (the trusted address);
the same requests from 127.0.0.1 are an attacker who can reach the issuer directly.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pytest

from tests.support.federation import (
    LDAP_ONLY_CLIENT_ID,
    PROXY_ADDRESS,
    Federation,
    id_token_claims,
    running_federation,
)
from tests.support.issuer import APP_REDIRECT, StartIssuer, free_port, hidden_fields
from tests.support.saml_idp import SamlIdpHarness, form_fields, saml_idp  # noqa: F401
from tests.support.slapd import PASSWORDS, SlapdServer, slapd_server  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory,
    slapd_server: SlapdServer,  # noqa: F811
    saml_idp: SamlIdpHarness,  # noqa: F811
) -> Iterator[Federation]:
    with running_federation(
        tmp_path_factory.mktemp("federation-web"), slapd_server, saml_idp, {}
    ) as running:
        yield running


def _client(source: str = "127.0.0.1") -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(transport=transport, follow_redirects=False, timeout=15)


def _start(client: httpx.Client, federation: Federation, connector: str) -> httpx.Response:
    """GET /auth for example-app straight at ``connector``; follow our own redirects up to the
    first response that leaves /auth."""
    params = {
        "client_id": "example-app",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid email groups",
        "state": secrets.token_urlsafe(6),
        "connector_id": connector,
    }
    response = client.get(federation.issuer.url("/auth") + "?" + urlencode(params))
    while response.is_redirect and "/auth" in response.headers["location"]:
        response = client.get(urljoin(str(response.url), response.headers["location"]))
    return response


def _state_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["state"][0]


# -- authproxy ------------------------------------------------------------------------------


def test_authproxy_logs_in_with_the_proxys_headers(federation: Federation) -> None:
    with _client(PROXY_ADDRESS) as proxy:
        response = _start(proxy, federation, "proxy")
        assert response.status_code == 303
        callback = urljoin(str(response.url), response.headers["location"])
        # As in Dex: the login goes to /callback/{id}, the path the proxy authenticates.
        assert urlsplit(callback).path == "/dex/callback/proxy"
        response = proxy.get(
            callback, headers={"X-Remote-User": "pat@example.org", "X-Remote-Group": "a, b"}
        )
        assert response.status_code == 303, response.text
        approval = proxy.get(urljoin(callback, response.headers["location"]))
        assert approval.status_code == 200
        fields = hidden_fields(approval.text)
        done = proxy.post(
            urljoin(str(approval.url), f"/dex/approval?req={fields['req']}"),
            data={**fields, "approval": "approve"},
        )
    assert done.status_code == 303
    code = parse_qs(urlsplit(done.headers["location"]).query)["code"][0]
    tokens = federation.issuer.token(
        {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT},
        auth=federation.issuer.app_auth(),
    )
    assert tokens.status_code == 200, tokens.text
    claims = id_token_claims(tokens.json()["id_token"])
    assert claims["email"] == "pat@example.org"
    assert claims["email_verified"] is True
    assert claims["groups"] == ["a", "b", "proxied"]


def test_authproxy_headers_from_anyone_else_are_refused(federation: Federation) -> None:
    with _client("127.0.0.1") as direct:
        response = _start(direct, federation, "proxy")
        callback = urljoin(str(response.url), response.headers["location"])
        refused = direct.get(callback, headers={"X-Remote-User": "admin@example.org"})
    assert refused.status_code == 502
    assert "only works through the login proxy" in refused.text
    assert 'class="pc-retry"' in refused.text
    assert "127.0.0.1, which is not a trusted proxy" in federation.issuer.logs()


def test_authproxy_refuses_a_repeated_user_header_and_other_paths(federation: Federation) -> None:
    with _client(PROXY_ADDRESS) as proxy:
        response = _start(proxy, federation, "proxy")
        callback = urljoin(str(response.url), response.headers["location"])
        twice = proxy.get(
            callback,
            headers=[("X-Remote-User", "attacker@example.org"), ("X-Remote-User", "pat@x.org")],
        )
        assert twice.status_code == 502
        assert "did not identify you" in twice.text
        # The headers count only on /callback/{id}, the path the proxy authenticates.
        plain = proxy.get(
            federation.issuer.url("/callback") + "?state=" + _state_of(callback),
            headers={"X-Remote-User": "pat@example.org"},
        )
        assert plain.status_code == 400
        assert "No login is waiting" in plain.text


# -- SAML: the same-origin hop ----------------------------------------------------------------


def _saml_login(client: httpx.Client, federation: Federation) -> tuple[str, dict[str, str]]:
    """Start a SAML login and let the IdP answer: (our ACS URL, the fields it POSTs back)."""
    page = _start(client, federation, "saml")
    assert page.status_code == 200
    action, fields = form_fields(page.text)
    idp_page = httpx.post(action, data=fields, timeout=15)
    assert idp_page.status_code == 200
    return form_fields(idp_page.text)


def test_cross_site_saml_post_is_re_posted_once_from_our_origin(
    federation: Federation,
) -> None:
    with _client() as browser:
        acs, fields = _saml_login(browser, federation)
        cookies = dict(browser.cookies)
        browser.cookies.clear()  # the cross-site POST: SameSite=Lax withholds the cookie
        hop = browser.post(acs, data=fields)
        assert hop.status_code == 200
        assert "Finishing your login." in hop.text
        assert "script-src 'sha256-" in hop.headers["content-security-policy"]
        action, hop_fields = form_fields(hop.text)
        assert urlsplit(action).path == "/dex/callback"
        assert hop_fields == {**fields, "pc_hop": "1"}
        # The re-post without the cookie (a hop from another browser) stops, no second hop.
        again = browser.post(urljoin(acs, action), data=hop_fields)
        assert again.status_code == 403
        assert "not started in this browser" in again.text
        # The re-post with the cookie (what the browser sends from our origin) logs in.
        for name, value in cookies.items():
            browser.cookies.set(name, value)
        done = browser.post(urljoin(acs, action), data=hop_fields)
    assert done.status_code == 303, done.text
    assert "/dex/approval" in done.headers["location"]


def test_no_hop_for_logins_that_do_not_post_back(federation: Federation) -> None:
    """A POST naming an LDAP login (or no login) is checked for ownership at once."""
    with _client() as browser:
        form = _start(browser, federation, "ldap")
        state = _state_of(str(form.headers.get("location", "")) or str(form.url))
    with _client() as stranger:
        response = stranger.post(
            federation.issuer.url("/callback"), data={"RelayState": state, "SAMLResponse": "x"}
        )
        unknown = stranger.post(
            federation.issuer.url("/callback"), data={"RelayState": "nope", "SAMLResponse": "x"}
        )
    assert response.status_code == 403
    assert unknown.status_code == 400


def test_callback_body_is_capped(federation: Federation) -> None:
    with _client() as browser:
        big = browser.post(
            federation.issuer.url("/callback"),
            content=b"SAMLResponse=" + b"A" * (600 * 1024),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert big.status_code == 413
    assert "too large" in big.text


def test_a_broken_saml_response_is_a_page_with_a_retry_link(federation: Federation) -> None:
    with _client() as browser:
        acs, fields = _saml_login(browser, federation)
        response = browser.post(acs, data={**fields, "SAMLResponse": "bm90IHhtbA=="})
        assert response.status_code == 502
        assert "Traceback" not in response.text
        retry = re.search(r'class="pc-retry" href="([^"]+)"', response.text)
        assert retry, response.text
        picker = browser.get(urljoin(acs, html.unescape(retry.group(1))))
    assert picker.status_code == 200
    assert 'id="connector-saml"' in picker.text
    assert 'id="connector-proxy"' in picker.text


# -- the picker -------------------------------------------------------------------------------


def test_a_client_allowed_one_connector_skips_the_picker(federation: Federation) -> None:
    params = {
        "client_id": LDAP_ONLY_CLIENT_ID,
        "redirect_uri": federation.app.redirect_uri,
        "response_type": "code",
        "scope": "openid",
    }
    with _client() as browser:
        response = browser.get(federation.issuer.url("/auth") + "?" + urlencode(params))
        assert response.status_code == 303
        assert urlsplit(response.headers["location"]).path == "/dex/auth/ldap"
        # And it cannot name another one: the error goes back to the client.
        other = browser.get(
            federation.issuer.url("/auth") + "?" + urlencode({**params, "connector_id": "saml"})
        )
    assert other.status_code == 303
    error = parse_qs(urlsplit(other.headers["location"]).query)
    assert error["error"] == ["invalid_request"]
    assert "not allowed" in error["error_description"][0]


# -- upstream failures: pages for people ------------------------------------------------------


def test_dead_upstreams_give_error_pages_not_500s(
    start_issuer: StartIssuer,
    slapd_server: SlapdServer,  # noqa: F811
) -> None:
    dead = free_port()

    def edit(config: dict[str, Any]) -> None:
        callback = config["issuer"] + "/callback"
        config["connectors"] = [
            {
                "type": "ldap",
                "id": "ldap",
                "name": "Directory",
                "config": slapd_server.config(host=f"127.0.0.1:{dead}"),
            },
            {
                "type": "oidc",
                "id": "upstream",
                "name": "Upstream",
                "config": {
                    "issuer": f"http://127.0.0.1:{dead}",
                    "clientID": "c",
                    "clientSecret": "s",
                    "redirectURI": callback,
                },
            },
            {
                "type": "oauth",
                "id": "oauth",
                "name": "OAuth",
                "config": {
                    "clientID": "c",
                    "clientSecret": "s",
                    "redirectURI": callback,
                    "authorizationURL": f"http://127.0.0.1:{dead}/authorize",
                    "tokenURL": f"http://127.0.0.1:{dead}/token",
                    "userInfoURL": f"http://127.0.0.1:{dead}/userinfo",
                },
            },
        ]

    issuer = start_issuer(edit=edit)
    params = {
        "client_id": "example-app",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid",
    }
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        form = browser.get(
            issuer.url("/auth") + "?" + urlencode({**params, "connector_id": "ldap"})
        )
        assert form.status_code == 200
        assert 'name="password"' in form.text
        failed = browser.post(
            str(form.url),
            data={**hidden_fields(form.text), "login": "jane", "password": PASSWORDS["jane"]},
        )
        assert failed.status_code == 502
        assert 'name="password"' in failed.text  # the form again: the retry
        upstream = browser.get(
            issuer.url("/auth") + "?" + urlencode({**params, "connector_id": "upstream"})
        )
        assert upstream.status_code == 502
        assert 'class="pc-retry"' in upstream.text
        # The token exchange of the oauth connector fails at the callback.
        oauth = browser.get(
            issuer.url("/auth") + "?" + urlencode({**params, "connector_id": "oauth"}),
            follow_redirects=False,
        )
        while oauth.is_redirect and oauth.headers["location"].startswith(("/", issuer.issuer)):
            oauth = browser.get(
                urljoin(str(oauth.url), oauth.headers["location"]), follow_redirects=False
            )
        assert oauth.is_redirect, (oauth.status_code, oauth.text[:3000])
        upstream_url = oauth.headers["location"]
        state = parse_qs(urlsplit(upstream_url).query)["state"][0]
        callback = browser.get(
            issuer.url("/callback") + "?" + urlencode({"state": state, "code": "x"})
        )
        assert callback.status_code == 502
        assert 'class="pc-retry"' in callback.text
    for page in (failed, upstream, callback):
        assert "Traceback" not in page.text
    assert "Traceback" not in issuer.logs()


# -- connectors that cannot open: config errors ---------------------------------------------


def _run(*args: str) -> tuple[int, str]:
    import subprocess

    from tests.support.issuer import PORTCULLIS

    result = subprocess.run(
        [str(PORTCULLIS), *args], capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode, result.stdout + result.stderr


def test_connector_open_errors_are_config_errors(tmp_path: Path, start_issuer: StartIssuer) -> None:
    import yaml

    issuer = start_issuer(
        {
            "web": {"clientRemoteIP": {"trustedProxies": []}},
            "connectors": [
                {
                    "type": "saml",
                    "id": "saml",
                    "name": "SAML",
                    "config": {
                        "ssoURL": "https://idp.example/sso",
                        "ca": str(tmp_path / "missing-ca.pem"),
                        "redirectURI": "https://issuer.example/dex/callback",
                        "usernameAttr": "name",
                        "emailAttr": "email",
                    },
                },
                {"type": "authproxy", "id": "proxy", "name": "Proxy"},
            ],
        },
        run=False,
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(issuer.config, sort_keys=False))
    for command in ("check-config", "serve"):
        code, output = _run(command, str(path))
        assert code == 2, output
        assert "connectors[0].config:" in output, output
        assert "missing-ca.pem" in output, output
        assert "connectors[1].config: trustedProxies: required" in output, output
        assert "Traceback" not in output
