"""The token endpoint's grant table (oidc.grants): grants are looked up by grant_type among the
enabled ones, the shared client checks run before any grant, and a grant sees only the
parameters it declares — which is what lets device_code or token exchange slot in as a file."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from portcullis.oidc.errors import OAuthError
from portcullis.oidc.grants import Grant, TokenEndpoint, TokenRequest

from tests.support.oidc_provider import World, make_world

pytestmark = pytest.mark.anyio


class RecordingGrant:
    """A grant as a future module would write one: it records what it was handed."""

    grant_type = "urn:example:params:oauth:grant-type:recording"
    parameters = ("subject",)
    allow_public = False

    def __init__(self) -> None:
        self.requests: list[TokenRequest] = []

    async def handle(self, request: TokenRequest) -> dict[str, Any]:
        self.requests.append(request)
        return {"ok": True}


def _endpoint(world: World, grant: Grant) -> TokenEndpoint:
    settings = world.provider.settings
    enabled = dataclasses.replace(settings, grant_types=(*settings.grant_types, grant.grant_type))
    return TokenEndpoint(enabled, world.provider.clients, [grant])


async def test_a_new_grant_slots_in_and_sees_only_its_parameters(world: World) -> None:
    grant = RecordingGrant()
    endpoint = _endpoint(world, grant)

    result = await endpoint.handle(
        {"grant_type": grant.grant_type, "subject": "s", "password": "not for you"},
        world.basic,
        "192.0.2.9",
    )

    assert result == {"ok": True}
    (request,) = grant.requests
    assert request.client.id == "app"
    assert dict(request.form) == {"subject": "s"}
    assert request.client_ip == "192.0.2.9"


async def test_a_grant_the_server_does_not_enable_is_unsupported(world: World) -> None:
    grant = RecordingGrant()
    endpoint = TokenEndpoint(world.provider.settings, world.provider.clients, [grant])
    with pytest.raises(OAuthError) as refused:
        await endpoint.handle({"grant_type": grant.grant_type}, world.basic, "192.0.2.9")
    assert refused.value.error == "unsupported_grant_type"
    assert grant.requests == []


async def test_a_public_client_cannot_use_a_confidential_grant(world: World) -> None:
    grant = RecordingGrant()
    endpoint = _endpoint(world, grant)
    with pytest.raises(OAuthError) as refused:
        await endpoint.handle(
            {"grant_type": grant.grant_type, "client_id": "kubectl"}, None, "192.0.2.9"
        )
    assert refused.value.error == "unauthorized_client"
    assert grant.requests == []


async def test_missing_unknown_and_disabled_grant_types(world: World) -> None:
    missing = await world.refuse()
    assert missing.error == "invalid_request"
    unknown = await world.refuse(grant_type="implicit")
    assert unknown.error == "unsupported_grant_type"

    narrow = make_world(grants="authorization_code, refresh_token")
    disabled = await narrow.refuse(grant_type="password", username="a", password="b")
    assert disabled.error == "unsupported_grant_type"


async def test_bad_client_credentials_stop_before_the_grant(world: World) -> None:
    world.basic = "Basic " + "YXBwOndyb25n"  # app:wrong
    refused = await world.refuse(grant_type="client_credentials")
    assert (refused.error, refused.status) == ("invalid_client", 401)


async def test_client_credentials_checks_audience_trust(world: World) -> None:
    refused = await world.refuse(
        grant_type="client_credentials", scope="audience:server:client_id:kubectl"
    )
    assert refused.error == "invalid_scope"
    assert "does not trust" in refused.description
    unknown = await world.refuse(
        grant_type="client_credentials", scope="audience:server:client_id:ghost"
    )
    assert "not a known client" in unknown.description
    assert "access_token" in await world.token(grant_type="client_credentials")
