"""The ``google`` connector against the Google stand-in (tests/support/google_api.py): OpenID
Connect login (the oidc connector's verification underneath), ``hd`` against ``hostedDomains``,
Workspace groups from the Admin SDK Directory API as a service account (JWT bearer assertions
checked by the stand-in, every page, transitive membership with cycles, per-domain admins,
workload identity through the metadata server and IAM signJwt), the ``groups`` restriction at
login and refresh, and Google's error, throttling and 5xx answers. The stand-in is reached
through the connector's test-only ``endpoints`` argument and the key file's ``token_uri``."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from portcullis.config.load import parse_config
from portcullis.connectors.base import ID_TOKEN_TYPE, ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.google import (
    CONNECTOR_TYPE,
    GoogleConfig,
    GoogleConnector,
    GoogleEndpoints,
)
from portcullis.connectors.google_directory import DIRECTORY_SCOPE, GoogleAPIs
from portcullis.connectors.oauth2_common import UpstreamError
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.connector_login import browser_login
from tests.support.google_api import (
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    GoogleAPI,
    GoogleUser,
    ServiceAccount,
    google_browser,
)

pytestmark = pytest.mark.anyio

OFFLINE = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


@pytest.fixture
def google(google_api: GoogleAPI) -> Any:
    """The session's stand-in with its per-test knobs back at Google's defaults."""
    yield google_api
    google_api.schemeless_issuer = False
    google_api.omit_name_on_refresh = False
    google_api.throttle_next = None
    google_api.fail_next = None
    google_api.metadata_account = ""


@pytest.fixture
def workspace(google: GoogleAPI, tmp_path: Path) -> tuple[ServiceAccount, Path, str]:
    """A delegated service account, its key file, and a super admin of example.com."""
    account = google.add_service_account(f"dex-groups-{secrets.token_hex(3)}")
    admin = google.add_user(f"admin{secrets.token_hex(3)}")
    google.super_admins.add(admin.email)
    key_file = account.key_file(tmp_path / "googleAuth.json", google.token_url)
    return account, key_file, admin.email


def make(
    api: GoogleAPI,
    env: ConnectorEnv,
    *,
    environ: dict[str, str] | None = None,
    metadata: str = "",
    **overrides: Any,
) -> GoogleConnector:
    raw: dict[str, Any] = {
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    assert isinstance(config, GoogleConfig)
    apis = GoogleAPIs(
        admin=api.base_url,
        iam_credentials=api.base_url,
        token=api.token_url,
        metadata=metadata or api.base_url,
    )
    endpoints = GoogleEndpoints(issuer=api.base_url, apis=apis)
    return GoogleConnector(
        "google", "Google", "google", config, env, endpoints, environ=environ or {}
    )


def with_groups(
    api: GoogleAPI, workspace: tuple[ServiceAccount, Path, str], env: ConnectorEnv, **more: Any
) -> GoogleConnector:
    _, key_file, admin = workspace
    return make(
        api,
        env,
        serviceAccountFilePath=str(key_file),
        domainToAdminEmail={"*": admin},
        **more,
    )


def new_user(api: GoogleAPI, domain: str = "example.com", name: str = "") -> GoogleUser:
    return api.add_user(f"user{secrets.token_hex(4)}", domain, name)


def new_group(api: GoogleAPI, label: str, domain: str = "example.com") -> str:
    return f"{label}-{secrets.token_hex(3)}@{domain}"


async def login(connector: GoogleConnector, email: str, scopes: Scopes = OFFLINE) -> Identity:
    return await browser_login(connector, lambda url: google_browser(url, email), scopes, CALLBACK)


# -- config ------------------------------------------------------------------------------------


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["google"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hostedDomain": ["example.com"]}, "hostedDomain"),
        ({"serviceAccountFilePath": "/sa.json"}, "serviceAccountFilePath needs domainToAdminEmail"),
        ({"groups": ["admins@example.com"]}, "groups needs domainToAdminEmail"),
        ({"domainToAdminEmail": {"example.com": "admin"}}, "domainToAdminEmail.example.com"),
        ({"domainToAdminEmail": {"a@example.com": "x@example.com"}}, "is not a domain"),
        ({"adminEmail": "root"}, "adminEmail must be an email address"),
        ({"promptType": "always"}, "promptType must be"),
        ({"hostedDomains": [""]}, "hostedDomains must not contain empty entries"),
        ({"redirectURI": "callback"}, "redirectURI"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK, **overrides}
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate(raw)


def test_admin_email_is_the_wildcard_entry() -> None:
    raw = {
        "clientID": "id",
        "redirectURI": CALLBACK,
        "serviceAccountFilePath": "/sa.json",
        "adminEmail": "root@example.com",
        "domainToAdminEmail": {"*": "other@example.com", "Example.ORG": "org@example.org"},
    }
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    assert isinstance(config, GoogleConfig)
    assert config.admins() == {"*": "root@example.com", "example.org": "org@example.org"}


def test_opening_touches_no_network_and_reads_no_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    text = (CORPUS / "google.yaml").read_text()
    config = parse_config(text, environ={}, connector_models=connector_models())
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args))
        raise OSError("network I/O while opening connectors")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    caplog.set_level(logging.WARNING)
    check_connectors(config, fips_mode=False)  # /etc/dex/googleAuth.json does not exist here
    assert attempts == []
    assert [c.type for c in config.connectors] == ["google", "google"]
    assert "adminEmail is deprecated" in caplog.text


# -- login -------------------------------------------------------------------------------------


async def test_login_url_carries_hd_prompt_and_offline_access(
    google: GoogleAPI, env: ConnectorEnv
) -> None:
    connector = make(google, env, hostedDomains=["example.com"])
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    assert start.url.startswith(f"{google.base_url}/o/oauth2/v2/auth?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(start.url).query).items()}
    assert query["scope"] == "openid profile email"
    assert (query["hd"], query["access_type"], query["prompt"]) == (
        "example.com",
        "offline",
        "consent",
    )
    assert query["code_challenge_method"] == "S256"
    assert query["nonce"]
    several = make(
        google, env, hostedDomains=["example.com", "example.org"], promptType="select_account"
    )
    second = parse_qs(urlsplit((await several.login_url(OFFLINE, CALLBACK, "st")).url).query)
    assert (second["hd"], second["prompt"]) == (["*"], ["select_account"])
    plain = parse_qs(
        urlsplit((await make(google, env).login_url(Scopes(), CALLBACK, "st")).url).query
    )
    assert "hd" not in plain
    assert "access_type" not in plain
    assert "prompt" not in plain
    with pytest.raises(ConnectorError, match="redirectURI"):
        await connector.login_url(OFFLINE, "http://elsewhere/cb", "st")


async def test_login_maps_the_id_token(google: GoogleAPI, env: ConnectorEnv) -> None:
    user = new_user(google, name="Grace Hopper")
    identity = await login(make(google, env), user.email)
    assert identity.user_id == user.sub
    assert (identity.username, identity.email, identity.email_verified) == (
        "Grace Hopper",
        user.email,
        True,
    )
    assert identity.groups == ()  # no directory configured: Google's token has no groups
    assert set(json.loads(identity.connector_data)) == {"rt", "sub"}
    plain = await login(make(google, env), user.email, Scopes())
    assert plain.connector_data == b""


async def test_scheme_less_google_issuer_is_accepted(google: GoogleAPI, env: ConnectorEnv) -> None:
    user = new_user(google)
    google.schemeless_issuer = True
    assert (await login(make(google, env), user.email)).user_id == user.sub


async def test_hosted_domains_refuse_other_accounts(google: GoogleAPI, env: ConnectorEnv) -> None:
    connector = make(google, env, hostedDomains=["example.com"])
    insider, other_domain = new_user(google), new_user(google, "example.org")
    consumer = new_user(google, "gmail.com")
    assert (await login(connector, insider.email)).user_id == insider.sub
    for outsider in (other_domain, consumer):  # consumer accounts carry no hd claim at all
        with pytest.raises(ConnectorError, match="not in a domain allowed"):
            await login(connector, outsider.email)


async def test_refused_code_client_and_denied_consent(google: GoogleAPI, env: ConnectorEnv) -> None:
    connector = make(google, env)
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    with pytest.raises(UpstreamError, match=r"invalid_grant"):
        await connector.handle_callback(OFFLINE, {"code": "4/0Aexpired"}, start.connector_state)
    with pytest.raises(UpstreamError, match="access_denied"):
        await login(connector, "nobody-signed-in@example.com")
    user = new_user(google)
    with pytest.raises(UpstreamError, match="invalid_client"):
        await login(make(google, env, clientSecret="wrong"), user.email)


# -- groups ------------------------------------------------------------------------------------


async def test_groups_every_page_with_a_signed_assertion(
    google: GoogleAPI, workspace: tuple[ServiceAccount, Path, str], env: ConnectorEnv
) -> None:
    account, _, admin = workspace
    user = new_user(google)
    groups = [new_group(google, f"team{i:03d}") for i in range(450)]
    for group in groups:
        google.add_member(group, user.email)
    connector = with_groups(google, workspace, env)
    google.directory_requests.clear()
    before = len(google.assertions)
    identity = await login(connector, user.email)
    assert identity.groups == tuple(groups)
    pages = [q for q in google.directory_requests if q["userKey"] == user.email]
    assert len(pages) == 3  # 200 + 200 + 50 through nextPageToken
    assert [("pageToken" in q) for q in pages] == [False, True, True]
    assertion = google.assertions[before]
    assert assertion["header"] == {"alg": "RS256", "typ": "JWT", "kid": account.key_id}
    claims = assertion["claims"]
    assert (claims["iss"], claims["sub"], claims["scope"], claims["aud"]) == (
        account.client_email,
        admin,
        DIRECTORY_SCOPE,
        google.token_url,
    )
    assert claims["exp"] - claims["iat"] == 3600
    # The admin's token is cached: a second login signs no new assertion.
    await login(connector, user.email)
    assert len(google.assertions) == before + 1
    # Groups are only read when asked for (or when they restrict logins), as in Dex.
    google.directory_requests.clear()
    assert (await login(connector, user.email, Scopes())).groups == ()
    assert google.directory_requests == []


async def test_transitive_groups_follow_nesting_and_end_cycles(
    google: GoogleAPI, workspace: tuple[ServiceAccount, Path, str], env: ConnectorEnv
) -> None:
    user = new_user(google)
    team, dept, org = (new_group(google, n) for n in ("team", "dept", "org"))
    google.add_member(team, user.email)
    google.add_member(dept, team)
    google.add_member(org, dept)
    google.add_member(team, org)  # a cycle: team -> dept -> org -> team
    direct = await login(with_groups(google, workspace, env), user.email)
    assert direct.groups == (team,)
    nested = with_groups(google, workspace, env, fetchTransitiveGroupMembership=True)
    google.directory_requests.clear()
    assert (await login(nested, user.email)).groups == (team, dept, org)
    assert [q["userKey"] for q in google.directory_requests] == [user.email, team, dept, org]


async def test_admin_per_domain_and_missing_domain(
    google: GoogleAPI, workspace: tuple[ServiceAccount, Path, str], env: ConnectorEnv
) -> None:
    _, key_file, admin = workspace
    org_admin = new_user(google, "example.org")
    google.super_admins.add(org_admin.email)
    user = new_user(google, "example.org")
    group = new_group(google, "org-team", "example.org")
    google.add_member(group, user.email)
    connector = make(
        google,
        env,
        serviceAccountFilePath=str(key_file),
        domainToAdminEmail={"example.com": admin, "example.org": org_admin.email},
    )
    before = len(google.assertions)
    assert (await login(connector, user.email)).groups == (group,)
    assert google.assertions[before]["claims"]["sub"] == org_admin.email
    stranger = new_user(google, "example.net")
    only_com = make(
        google, env, serviceAccountFilePath=str(key_file), domainToAdminEmail={"example.com": admin}
    )
    with pytest.raises(
        ConnectorError, match=r"domainToAdminEmail has no entry for the domain 'example\.net'"
    ):
        await login(only_com, stranger.email)


async def test_groups_restrict_logins_and_the_claim(
    google: GoogleAPI, workspace: tuple[ServiceAccount, Path, str], env: ConnectorEnv
) -> None:
    admins, others = new_group(google, "admins"), new_group(google, "others")
    member, outsider = new_user(google), new_user(google)
    google.add_member(admins, member.email)
    google.add_member(others, member.email)
    google.add_member(others, outsider.email)
    connector = with_groups(google, workspace, env, groups=[admins])
    # Enforced even when the client did not ask for groups (Dex only checks with the scope).
    assert (await login(connector, member.email, Scopes())).groups == (admins,)
    with pytest.raises(ConnectorError, match="not a member of the Google groups required"):
        await login(connector, outsider.email, Scopes())


async def test_service_account_refusals_are_clear(
    google: GoogleAPI,
    workspace: tuple[ServiceAccount, Path, str],
    env: ConnectorEnv,
    tmp_path: Path,
) -> None:
    _, _, admin = workspace
    user = new_user(google)

    def connector(key_file: Path) -> GoogleConnector:
        return make(
            google, env, serviceAccountFilePath=str(key_file), domainToAdminEmail={"*": admin}
        )

    undelegated = google.add_service_account("no-dwd", delegated=False)
    path = undelegated.key_file(tmp_path / "undelegated.json", google.token_url)
    with pytest.raises(UpstreamError, match="unauthorized_client"):
        await login(connector(path), user.email)
    # A key file whose private key is not the one Google holds for the account.
    forged = google.add_service_account("forged")
    path = forged.key_file(tmp_path / "forged.json", google.token_url)
    forged.key = google.add_service_account("other").key
    with pytest.raises(UpstreamError, match=r"invalid_grant: Invalid JWT Signature"):
        await login(connector(path), user.email)
    with pytest.raises(ConnectorError, match=r"key \(serviceAccountFilePath\) cannot be read"):
        await login(connector(tmp_path / "missing.json"), user.email)
    user_creds = tmp_path / "adc.json"
    user_creds.write_text(
        json.dumps({"type": "authorized_user", "client_id": "x", "refresh_token": "y"})
    )
    with pytest.raises(ConnectorError, match="'authorized_user', not 'service_account'"):
        await login(connector(user_creds), user.email)
    not_admin = make(
        google, env, serviceAccountFilePath=str(workspace[1]), domainToAdminEmail={"*": user.email}
    )
    with pytest.raises(ConnectorError, match=r"refused the group memberships request \(HTTP 403\)"):
        await login(not_admin, user.email)


async def test_application_default_credentials_file(
    google: GoogleAPI, workspace: tuple[ServiceAccount, Path, str], env: ConnectorEnv
) -> None:
    _, key_file, admin = workspace
    user = new_user(google)
    group = new_group(google, "adc")
    google.add_member(group, user.email)
    connector = make(
        google,
        env,
        environ={"GOOGLE_APPLICATION_CREDENTIALS": str(key_file)},
        domainToAdminEmail={"*": admin},
    )
    assert (await login(connector, user.email)).groups == (group,)


async def test_workload_identity_through_metadata_and_sign_jwt(
    google: GoogleAPI,
    workspace: tuple[ServiceAccount, Path, str],
    env: ConnectorEnv,
    tmp_path: Path,
) -> None:
    account, _, admin = workspace
    user = new_user(google)
    group = new_group(google, "wi")
    google.add_member(group, user.email)
    google.metadata_account = account.client_email
    connector = make(google, env, domainToAdminEmail={"*": admin})  # no key file, no ADC
    before = len(google.assertions)
    assert (await login(connector, user.email)).groups == (group,)
    claims = google.assertions[before]["claims"]
    assert (claims["iss"], claims["sub"], claims["aud"]) == (
        account.client_email,
        admin,
        google.token_url,
    )
    account.token_creator = False
    try:
        denied = make(google, env, domainToAdminEmail={"*": admin})
        with pytest.raises(ConnectorError, match=r"refused the IAM signJwt request \(HTTP 403\)"):
            await login(denied, user.email)
    finally:
        account.token_creator = True
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{closed.getsockname()[1]}"
    off_gcp = make(google, env, metadata=f"http://{nowhere}", domainToAdminEmail={"*": admin})
    with pytest.raises(
        ConnectorError, match="no Google service account: set serviceAccountFilePath"
    ):
        await login(off_gcp, user.email)


# -- refresh -----------------------------------------------------------------------------------


async def test_refresh_rechecks_groups_and_hosted_domain(
    google: GoogleAPI, workspace: tuple[ServiceAccount, Path, str], env: ConnectorEnv
) -> None:
    admins, ops = new_group(google, "admins"), new_group(google, "ops")
    user = new_user(google, name="Ada Lovelace")
    google.add_member(admins, user.email)
    google.add_member(ops, user.email)
    connector = with_groups(
        google, workspace, env, groups=[admins, ops], hostedDomains=["example.com"]
    )
    identity = await login(connector, user.email)
    assert identity.groups == (admins, ops)
    google.remove_member(admins, user.email)
    google.omit_name_on_refresh = True  # Google may leave the name out: the old one is kept
    refreshed = await connector.refresh(OFFLINE, identity)
    assert (refreshed.groups, refreshed.username) == ((ops,), "Ada Lovelace")
    google.remove_member(ops, user.email)
    with pytest.raises(ConnectorError, match="not a member of the Google groups required"):
        await with_groups(google, workspace, env, groups=[admins, ops]).refresh(OFFLINE, refreshed)
    google.add_member(ops, user.email)
    user.hd = "acquired.example"  # the account moved to another Workspace
    try:
        with pytest.raises(ConnectorError, match="not in a domain allowed"):
            await make(google, env, hostedDomains=["example.com"]).refresh(OFFLINE, refreshed)
    finally:
        user.hd = "example.com"


async def test_refresh_after_revocation_and_dex_session_data(
    google: GoogleAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(google)
    connector = make(google, env)
    identity = await login(connector, user.email)
    token = json.loads(identity.connector_data)["rt"]
    # Dex stores the bare refresh token: a session imported from Dex refreshes.
    dex_session = replace(identity, connector_data=token.encode())
    assert (await make(google, env).refresh(OFFLINE, dex_session)).user_id == user.sub
    forged = Identity(user_id="someone-else", username="x", connector_data=identity.connector_data)
    with pytest.raises(ConnectorError, match="different user"):
        await make(google, env).refresh(OFFLINE, forged)
    google.revoke(token)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UpstreamError, match=r"invalid_grant: Token has been expired or revoked"):
        await make(google, env).refresh(OFFLINE, identity)
    assert token not in caplog.text
    with pytest.raises(ConnectorError, match="no refresh token"):
        await connector.refresh(OFFLINE, Identity(user_id="x", username="x"))


# -- throttling, revoked API tokens, upstream failures -------------------------------------------


async def test_directory_rate_limits_and_5xx(
    google: GoogleAPI,
    workspace: tuple[ServiceAccount, Path, str],
    env: ConnectorEnv,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = new_user(google)
    google.add_member(new_group(google, "g"), user.email)
    connector = with_groups(google, workspace, env)
    caplog.set_level(logging.WARNING)
    google.throttle_next = (403, None)
    with pytest.raises(
        ConnectorError, match=r"rate limiting logins \(group memberships\); try again later"
    ):
        await login(connector, user.email)
    assert "rate limited: HTTP 403" in caplog.text
    assert "Rate Limit Exceeded" in caplog.text
    google.throttle_next = (429, 30)
    with pytest.raises(ConnectorError, match="try again in 30 seconds"):
        await login(connector, user.email)
    google.fail_next = ("directory", 503)
    with pytest.raises(ConnectorError, match=r"failed \(group memberships: HTTP 503\)"):
        await login(connector, user.email)
    assert "answered HTTP 503" in caplog.text


async def test_revoked_directory_token_is_replaced_once(
    google: GoogleAPI,
    workspace: tuple[ServiceAccount, Path, str],
    env: ConnectorEnv,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account, _, _ = workspace
    user = new_user(google)
    group = new_group(google, "g")
    google.add_member(group, user.email)
    connector = with_groups(google, workspace, env)
    await login(connector, user.email)
    caplog.set_level(logging.DEBUG)
    for token, grant in list(google.access_tokens.items()):
        if grant.service_account == account.client_email:
            google.revoke(token)
    assert (await login(connector, user.email)).groups == (group,)
    for token in google.revoked:
        assert token not in caplog.text


async def test_token_exchange_checks_domain_and_groups(
    google: GoogleAPI, workspace: tuple[ServiceAccount, Path, str], env: ConnectorEnv
) -> None:
    user = new_user(google)
    group = new_group(google, "ci")
    google.add_member(group, user.email)
    id_token = google._id_token(user, "unused", "", True)
    connector = with_groups(google, workspace, env, groups=[group], hostedDomains=["example.com"])
    assert (await connector.token_identity(ID_TOKEN_TYPE, id_token)).groups == (group,)
    google.remove_member(group, user.email)
    with pytest.raises(ConnectorError, match="not a member of the Google groups required"):
        await connector.token_identity(ID_TOKEN_TYPE, id_token)
