"""Which clients may use the password grant (issue 9, finding 4; RFC 9700 §2.4: the resource
owner password credentials grant MUST NOT be used). Portcullis keeps it for confidential clients
that Dex would allow (their ``grantTypes`` list it, or they have no list), and never for public
clients, even with ``oauth2.passwordConnector`` set and ``password`` in their own list."""

from __future__ import annotations

import textwrap

import pytest
from portcullis.config.load import ConfigError
from portcullis.issuer import parse_config
from portcullis.oidc.errors import OAuthError
from portcullis.storage.models import Client

from tests.support.oidc_provider import PASSWORD, USERNAME, World

pytestmark = pytest.mark.anyio


async def test_the_public_kubectl_client_gets_no_tokens_for_a_password(world: World) -> None:
    with pytest.raises(OAuthError) as refused:
        await world.provider.tokens.handle(
            {
                "grant_type": "password",
                "client_id": "kubectl",
                "username": USERNAME,
                "password": PASSWORD,
                "scope": "openid",
            },
            None,
            world.client_ip,
        )
    assert refused.value.error == "unauthorized_client"
    assert "public" in refused.value.description


def test_a_public_client_listing_the_password_grant_still_may_not_use_it(world: World) -> None:
    settings = world.provider.settings
    public = Client(id="cli", public=True, grant_types=("authorization_code", "password"))
    assert "password" not in settings.client_grants(public)
    assert "password" not in settings.client_grants(Client(id="cli2", public=True))


def test_confidential_clients_follow_their_grant_types_list(world: World) -> None:
    settings = world.provider.settings
    assert "password" in settings.client_grants(Client(id="app", secret_hash="00"))
    listed = Client(id="app", secret_hash="00", grant_types=("password",))
    assert settings.client_grants(listed) == ("password",)
    unlisted = Client(id="app", secret_hash="00", grant_types=("authorization_code",))
    assert "password" not in settings.client_grants(unlisted)


async def test_the_confidential_client_still_gets_tokens(world: World) -> None:
    assert (await world.login())["access_token"]


def test_check_config_refuses_a_public_client_listing_the_password_grant() -> None:
    text = textwrap.dedent(
        """
        issuer: http://127.0.0.1:5556/dex
        storage: {type: memory}
        web: {http: 127.0.0.1:5556}
        oauth2: {passwordConnector: local}
        enablePasswordDB: true
        staticClients:
          - id: cli
            public: true
            redirectURIs: ["http://127.0.0.1:8000/"]
            grantTypes: [authorization_code, password]
        """
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "test.yaml", {})
    assert "staticClients[0].grantTypes[1]: public clients may not use the password grant" in str(
        refused.value
    )
