"""The token-exchange grant's refusals (RFC 8693 §2.2.2 / RFC 6749 §5.2) before any upstream
call: the exchange with a real upstream token is tested against node-oidc-provider in
tests/integration/test_issuer_token_exchange.py."""

from __future__ import annotations

import pytest
from portcullis.config.model import TOKEN_EXCHANGE_GRANT
from portcullis.connectors.base import ID_TOKEN_TYPE
from portcullis.oidc.errors import OAuthError

from tests.support.oidc_provider import World, make_world

pytestmark = pytest.mark.anyio

GRANTS = f"authorization_code, refresh_token, password, {TOKEN_EXCHANGE_GRANT}"


@pytest.fixture
def exchange_world() -> World:
    return make_world(grants=GRANTS)


def _form(**changes: str) -> dict[str, str]:
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        "subject_token_type": ID_TOKEN_TYPE,
        "connector_id": "mock",
        "scope": "openid",
    }
    form.update(changes)
    return {k: v for k, v in form.items() if v != "<absent>"}


async def _refused(world: World, **changes: str) -> OAuthError:
    with pytest.raises(OAuthError) as refused:
        await world.provider.tokens.handle(_form(**changes), world.basic, world.client_ip)
    return refused.value


async def test_a_connector_without_the_token_identity_role_is_refused(
    exchange_world: World,
) -> None:
    refused = await _refused(exchange_world)
    assert refused.error == "invalid_request"
    assert "cannot verify upstream tokens" in refused.description


async def test_an_unknown_connector_is_refused(exchange_world: World) -> None:
    refused = await _refused(exchange_world, connector_id="nope")
    assert refused.error == "invalid_request"
    assert "unknown" in refused.description
    missing = await _refused(exchange_world, connector_id="<absent>")
    assert missing.error == "invalid_request"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"subject_token": "<absent>"}, "subject_token"),
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, "subject_token_type"),
        ({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, "requested"),
    ],
)
async def test_malformed_requests_name_the_parameter(
    exchange_world: World, changes: dict[str, str], field: str
) -> None:
    refused = await _refused(exchange_world, **changes)
    assert refused.error == "invalid_request"
    assert field in refused.description


async def test_offline_access_is_refused(exchange_world: World) -> None:
    refused = await _refused(exchange_world, scope="openid offline_access")
    assert refused.error == "invalid_scope"


async def test_public_clients_may_not_exchange_tokens(exchange_world: World) -> None:
    with pytest.raises(OAuthError) as refused:
        await exchange_world.provider.tokens.handle(
            {**_form(), "client_id": "kubectl"}, None, exchange_world.client_ip
        )
    assert refused.value.error == "unauthorized_client"


async def test_the_grant_is_unsupported_unless_enabled(world: World) -> None:
    with pytest.raises(OAuthError) as refused:
        await world.provider.tokens.handle(_form(), world.basic, world.client_ip)
    assert refused.value.error == "unsupported_grant_type"
