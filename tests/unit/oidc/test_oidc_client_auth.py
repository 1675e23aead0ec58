"""Client authentication at the token endpoint (RFC 6749 §2.3.1)."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus

import pytest
from portcullis.oidc.clients import ClientRegistry, hash_client_secret
from portcullis.oidc.errors import OAuthError
from portcullis.storage.memory import MemoryStorage
from portcullis.storage.models import Client

SECRET = "s3cr:et/with+special chars"


@pytest.fixture
def registry() -> ClientRegistry:
    static = [
        Client(id="app:one", secret_hash=hash_client_secret(SECRET)),
        Client(id="cli", public=True),
    ]
    return ClientRegistry(MemoryStorage(), static)


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1: form-urlencode each part, then base64 "id:secret".
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _error(registry: ClientRegistry, auth: str | None, form: dict[str, str]) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        registry.authenticate(auth, form, allow_public=True)
    return caught.value


def test_basic_credentials_are_url_decoded(registry: ClientRegistry) -> None:
    client = registry.authenticate(_basic("app:one", SECRET), {}, allow_public=False)
    assert client.id == "app:one"


def test_client_secret_post(registry: ClientRegistry) -> None:
    form = {"client_id": "app:one", "client_secret": SECRET}
    assert registry.authenticate(None, form, allow_public=False).id == "app:one"


def test_wrong_secret_and_unknown_client_look_the_same(registry: ClientRegistry) -> None:
    wrong = _error(registry, _basic("app:one", "nope"), {})
    unknown = _error(registry, _basic("ghost", "nope"), {})
    for error in (wrong, unknown):
        assert error.error == "invalid_client"
        assert error.status == 401
        assert "WWW-Authenticate" in error.headers
    assert wrong.description == unknown.description


def test_confidential_client_without_secret_is_refused(registry: ClientRegistry) -> None:
    error = _error(registry, None, {"client_id": "app:one"})
    assert error.error == "invalid_client"


def test_two_methods_at_once_are_refused(registry: ClientRegistry) -> None:
    error = _error(registry, _basic("app:one", SECRET), {"client_secret": SECRET})
    assert error.error == "invalid_request"


def test_client_id_must_match_the_basic_credentials(registry: ClientRegistry) -> None:
    error = _error(registry, _basic("app:one", SECRET), {"client_id": "cli"})
    assert error.error == "invalid_request"


@pytest.mark.parametrize(
    "header", ["Basic !!!notbase64", "Basic " + base64.b64encode(b"\xff\xfe").decode()]
)
def test_malformed_basic_header_is_invalid_client(registry: ClientRegistry, header: str) -> None:
    assert _error(registry, header, {}).error == "invalid_client"


def test_no_credentials_at_all(registry: ClientRegistry) -> None:
    assert _error(registry, None, {}).error == "invalid_client"


def test_public_client_only_where_the_endpoint_allows_it(registry: ClientRegistry) -> None:
    assert registry.authenticate(None, {"client_id": "cli"}, allow_public=True).id == "cli"
    with pytest.raises(OAuthError) as caught:
        registry.authenticate(None, {"client_id": "cli"}, allow_public=False)
    assert caught.value.error == "unauthorized_client"


def test_stored_clients_are_found_after_static_ones() -> None:
    storage = MemoryStorage()
    storage.create_client(Client(id="dyn", secret_hash=hash_client_secret("x" * 20)))
    registry = ClientRegistry(storage, [Client(id="static", public=True)])
    assert registry.authenticate(_basic("dyn", "x" * 20), {}, allow_public=False).id == "dyn"
    assert [c.id for c in registry.all()] == ["dyn", "static"]
