"""The login state machine in oidc.authorize, driven without HTTP: connector choice, the choice
and the connector's per-login state written to the auth request, the callback finishing with
that state, and the throttled password login shared with the password grant."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from portcullis.connectors.base import CallbackConnector, ConnectorError, LoginRedirect, Scopes
from portcullis.connectors.mock import MOCK_IDENTITY
from portcullis.oidc.authorize import (
    InvalidCredentialsError,
    NoLoginWaitingError,
    PasswordForm,
    UnknownConnectorError,
    UpstreamLogin,
    UpstreamRefusedError,
)
from portcullis.oidc.throttle import ThrottledError
from portcullis.storage.models import AuthRequest, Identity

from tests.support.oidc_provider import APP_REDIRECT, PASSWORD, USERNAME, World, make_world

pytestmark = pytest.mark.anyio

CALLBACK = "http://127.0.0.1:5556/dex/callback"


class StatefulUpstream(CallbackConnector):
    """A callback connector that keeps a per-login secret in ``connector_state``, as the OIDC and
    SAML connectors do (their upstream is not what is under test here)."""

    def __init__(self) -> None:
        super().__init__("upstream", "Upstream", "oidc")
        self.logins = 0
        self.seen_state: bytes | None = None

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        self.logins += 1
        return LoginRedirect(
            f"https://idp.example/auth?state={state}",
            connector_state=f"verifier-{self.logins}".encode(),
        )

    async def handle_callback(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        self.seen_state = connector_state
        if params.get("code") != "good":
            raise ConnectorError("upstream said no")
        return MOCK_IDENTITY


def _request(world: World, **extra: str) -> AuthRequest:
    return world.provider.authorization.parse(
        {
            "client_id": "app",
            "redirect_uri": APP_REDIRECT,
            "response_type": "code",
            "scope": "openid groups",
            **extra,
        },
        browser_binding="binding-digest",
    )


@pytest.fixture
def upstream() -> StatefulUpstream:
    return StatefulUpstream()


@pytest.fixture
def two_way(upstream: StatefulUpstream) -> World:
    return make_world(extra_connectors=[upstream])


def test_a_single_connector_is_chosen_without_asking(world: World) -> None:
    choice = world.provider.authorization.choose_connector(_request(world))
    assert choice.connector_id == "mock"


def test_several_connectors_are_offered(two_way: World) -> None:
    choice = two_way.provider.authorization.choose_connector(_request(two_way))
    assert choice.connector_id == ""
    assert [c.id for c in choice.options] == ["mock", "upstream"]


def test_a_connector_named_by_the_client_is_chosen(two_way: World) -> None:
    request = _request(two_way, connector_id="upstream")
    assert two_way.provider.authorization.choose_connector(request).connector_id == "upstream"


async def test_starting_a_password_login_records_the_choice(world: World) -> None:
    request = _request(world)
    start = await world.provider.authorization.start_login(request, "mock", CALLBACK)

    assert isinstance(start, PasswordForm)
    assert start.connector.id == "mock"
    stored = world.storage.get_auth_request(request.id)
    assert (stored.connector_id, stored.connector_state) == ("mock", b"")


async def test_an_upstream_login_keeps_its_state_with_the_request_and_gets_it_back(
    two_way: World, upstream: StatefulUpstream
) -> None:
    flow = two_way.provider.authorization
    request = _request(two_way)
    start = await flow.start_login(request, "upstream", CALLBACK)

    assert isinstance(start, UpstreamLogin)
    assert start.redirect.url.startswith("https://idp.example/auth")
    stored = two_way.storage.get_auth_request(request.id)
    assert (stored.connector_id, stored.connector_state) == ("upstream", b"verifier-1")

    # The callback may land on another replica: only what storage holds is used.
    logged_in = await flow.finish_callback(stored, {"code": "good", "state": request.id})

    assert upstream.seen_state == b"verifier-1"
    assert logged_in.logged_in
    assert logged_in.identity == MOCK_IDENTITY
    assert two_way.storage.get_auth_request(request.id).logged_in


async def test_callback_errors_are_typed(two_way: World) -> None:
    flow = two_way.provider.authorization
    request = _request(two_way)

    with pytest.raises(NoLoginWaitingError):  # no upstream login was started
        await flow.finish_callback(request, {"code": "good"})

    await flow.start_login(request, "upstream", CALLBACK)
    stored = two_way.storage.get_auth_request(request.id)
    with pytest.raises(UpstreamRefusedError):
        await flow.finish_callback(stored, {"error": "access_denied"})
    with pytest.raises(ConnectorError):
        await flow.finish_callback(stored, {"code": "bad"})
    assert not two_way.storage.get_auth_request(request.id).logged_in


async def test_a_finished_login_is_not_repointed(two_way: World) -> None:
    flow = two_way.provider.authorization
    request = _request(two_way)
    await flow.start_login(request, "upstream", CALLBACK)
    stored = two_way.storage.get_auth_request(request.id)
    await flow.finish_callback(stored, {"code": "good"})

    await flow.start_login(request, "mock", CALLBACK)  # a stale tab

    after = two_way.storage.get_auth_request(request.id)
    assert (after.connector_id, after.connector_state) == ("upstream", b"verifier-1")


async def test_unknown_connectors_are_refused(world: World) -> None:
    request = _request(world)
    with pytest.raises(UnknownConnectorError):
        await world.provider.authorization.start_login(request, "nope", CALLBACK)
    with pytest.raises(UnknownConnectorError):
        await world.provider.authorization.password_connector(request, "nope")


async def test_password_login_records_the_identity(world: World) -> None:
    flow = world.provider.authorization
    request = _request(world)
    connector = await flow.password_connector(request, "mock")

    logged_in = await flow.password_login(request, connector, USERNAME, PASSWORD, "192.0.2.1")

    assert logged_in.logged_in
    assert logged_in.connector_id == "mock"
    assert logged_in.auth_time == world.clock.now()


async def test_password_failures_are_throttled_for_the_form_and_the_grant_alike(
    world: World,
) -> None:
    flow = world.provider.authorization
    request = _request(world)
    connector = await flow.password_connector(request, "mock")
    for _ in range(5):  # web.passwordThrottle.maxFailuresPerUser defaults to 5
        with pytest.raises(InvalidCredentialsError):
            await flow.password_login(request, connector, USERNAME, "wrong", world.client_ip)

    # The form's failures count at the grant, from the same address: refused for the window.
    refused = await world.refuse(
        grant_type="password", username=USERNAME, password=PASSWORD, scope="openid"
    )
    assert refused.error == "invalid_grant"
    assert refused.headers["Retry-After"] == "900"
    # From another address the user is only slowed down (web.passwordThrottle.userDelay).
    with pytest.raises(ThrottledError) as delayed:
        await flow.password_login(request, connector, USERNAME, PASSWORD, "192.0.2.2")
    assert delayed.value.retry_after == 1

    world.clock.advance(901)
    assert (await world.login())["access_token"]


async def test_a_good_password_clears_the_users_failures(world: World) -> None:
    for _ in range(4):
        refused = await world.refuse(
            grant_type="password", username=USERNAME, password="wrong", scope="openid"
        )
        assert refused.description == "invalid username or password"
    await world.login()
    for _ in range(4):
        await world.refuse(
            grant_type="password", username=USERNAME, password="wrong", scope="openid"
        )
    assert (await world.login())["access_token"]
