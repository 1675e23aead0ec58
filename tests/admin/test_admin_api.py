"""The Dex-compatible admin API against a real `portcullis serve` process, through a real gRPC
client built from the generated stubs: every method, Dex's flag semantics, the read-only config
entries, and effects visible over HTTP (new clients get tokens, revoked sessions lose them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import bcrypt
import grpc
import httpx
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from portcullis import __version__
from portcullis.admin import api_pb2 as pb
from portcullis.admin import api_pb2_grpc
from portcullis.passwords import hash_password

from tests.support.admin import jwt_claims
from tests.support.issuer import ADMIN_EMAIL, DEV_EMAIL, Issuer

Stub = api_pb2_grpc.DexStub


def _status(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _bcrypt(password: str) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10))


def _password_login(issuer: Issuer, email: str, password: str) -> httpx.Response:
    return issuer.token(
        {
            "grant_type": "password",
            "username": email,
            "password": password,
            "scope": "openid email offline_access",
        },
        auth=issuer.app_auth(),
    )


# -- server information ------------------------------------------------------------------------


def test_version_and_discovery_describe_the_running_issuer(admin_issuer: Issuer, api: Stub) -> None:
    version = api.GetVersion(pb.VersionReq())
    assert version.server == __version__
    assert version.api == 3  # Dex 2.45's API level: GetClient/ListClients/GetDiscovery exist

    discovery = api.GetDiscovery(pb.DiscoveryReq())
    http = admin_issuer.discovery()
    assert discovery.issuer == admin_issuer.issuer
    for field in pb.DiscoveryResp.DESCRIPTOR.fields:
        value = getattr(discovery, field.name)
        expected = http.get(field.name, [] if field.is_repeated else "")
        assert (list(value) if field.is_repeated else value) == expected, field.name
    assert "client_credentials" in discovery.grant_types_supported


def test_reflection_lists_the_dex_service(api: Stub, admin_issuer: Issuer) -> None:
    channel = grpc.insecure_channel(admin_issuer.config["grpc"]["addr"])
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "api.Dex" in services


# -- clients -----------------------------------------------------------------------------------


def test_created_client_gets_generated_credentials_and_can_get_tokens(
    admin_issuer: Issuer, api: Stub
) -> None:
    created = api.CreateClient(
        pb.CreateClientReq(
            client=pb.Client(name="Robot", redirect_uris=["http://127.0.0.1:9999/cb"])
        )
    )
    assert not created.already_exists
    client_id, secret = created.client.id, created.client.secret
    assert len(client_id) >= 16
    assert len(secret) >= 32
    admin_issuer.remember(secret)

    token = admin_issuer.token({"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert token.status_code == 200, token.text
    assert token.json()["access_token"]
    wrong = admin_issuer.token({"grant_type": "client_credentials"}, auth=(client_id, "nope"))
    assert wrong.status_code == 401

    fetched = api.GetClient(pb.GetClientReq(id=client_id)).client
    assert (fetched.id, fetched.name, list(fetched.redirect_uris)) == (
        client_id,
        "Robot",
        ["http://127.0.0.1:9999/cb"],
    )
    assert fetched.secret == ""  # stored as a digest only: shown once, at creation

    listed = {c.id: c for c in api.ListClients(pb.ListClientReq()).clients}
    assert listed[client_id].name == "Robot"
    assert {"example-app", "kubectl", "service-bot"} <= set(listed)  # config clients too


def test_create_client_with_an_existing_id_reports_already_exists(
    admin_issuer: Issuer, api: Stub
) -> None:
    request = pb.CreateClientReq(client=pb.Client(id="dup-client", secret="s" * 32))
    first = api.CreateClient(request)
    assert not first.already_exists
    assert first.client.secret == "s" * 32
    assert api.CreateClient(request).already_exists
    static = api.CreateClient(pb.CreateClientReq(client=pb.Client(id="example-app")))
    assert static.already_exists


def test_public_client_gets_no_secret(api: Stub) -> None:
    created = api.CreateClient(pb.CreateClientReq(client=pb.Client(id="cli-tool", public=True)))
    assert created.client.secret == ""
    assert api.GetClient(pb.GetClientReq(id="cli-tool")).client.public


def test_update_and_delete_client_follow_dex_semantics(admin_issuer: Issuer, api: Stub) -> None:
    created = api.CreateClient(
        pb.CreateClientReq(
            client=pb.Client(
                id="to-change",
                name="Before",
                logo_url="https://logo.example/a.png",
                redirect_uris=["http://127.0.0.1:7000/cb"],
            )
        )
    )
    secret = created.client.secret
    admin_issuer.remember(secret)
    updated = api.UpdateClient(
        pb.UpdateClientReq(id="to-change", name="After", trusted_peers=["example-app"])
    )
    assert not updated.not_found
    client = api.GetClient(pb.GetClientReq(id="to-change")).client
    assert client.name == "After"
    assert list(client.trusted_peers) == ["example-app"]
    # Empty fields leave the stored values alone, like Dex.
    assert client.logo_url == "https://logo.example/a.png"
    assert list(client.redirect_uris) == ["http://127.0.0.1:7000/cb"]
    assert admin_issuer.token(
        {"grant_type": "client_credentials"}, auth=("to-change", secret)
    ).is_success

    assert api.UpdateClient(pb.UpdateClientReq(id="no-such-client", name="x")).not_found
    assert not api.DeleteClient(pb.DeleteClientReq(id="to-change")).not_found
    assert api.DeleteClient(pb.DeleteClientReq(id="to-change")).not_found
    error = _status(lambda: api.GetClient(pb.GetClientReq(id="to-change")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    gone = admin_issuer.token({"grant_type": "client_credentials"}, auth=("to-change", secret))
    assert gone.status_code == 401


def test_config_clients_are_read_only(api: Stub) -> None:
    for call in (
        lambda: api.UpdateClient(pb.UpdateClientReq(id="example-app", name="hijacked")),
        lambda: api.DeleteClient(pb.DeleteClientReq(id="example-app")),
    ):
        error = _status(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "config" in (error.details() or "")
    assert api.GetClient(pb.GetClientReq(id="example-app")).client.name == "Example App"


def test_invalid_client_requests_name_the_field(api: Stub) -> None:
    error = _status(
        lambda: api.CreateClient(
            pb.CreateClientReq(client=pb.Client(redirect_uris=["http://a.example/cb#frag"]))
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "redirect_uris[0]" in (error.details() or "")
    assert _status(lambda: api.CreateClient(pb.CreateClientReq())).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _status(lambda: api.UpdateClient(pb.UpdateClientReq(name="x"))).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


# -- passwords ---------------------------------------------------------------------------------


def test_password_lifecycle(admin_issuer: Issuer, api: Stub) -> None:
    email, first, second = "api-user@example.com", "first-" + "x" * 12, "second-" + "y" * 12
    admin_issuer.remember(first, second)
    entry = pb.Password(email=email, hash=_bcrypt(first), username="apiuser", user_id="api-0001")
    assert not api.CreatePassword(pb.CreatePasswordReq(password=entry)).already_exists
    assert api.CreatePassword(pb.CreatePasswordReq(password=entry)).already_exists

    listed = {p.email: p for p in api.ListPasswords(pb.ListPasswordReq()).passwords}
    assert listed[email].user_id == "api-0001"
    assert listed[email].username == "apiuser"
    assert {ADMIN_EMAIL, DEV_EMAIL} <= set(listed)  # config entries too
    assert all(p.hash == b"" for p in listed.values())  # never hashes

    def verify(password: str) -> pb.VerifyPasswordResp:
        return api.VerifyPassword(pb.VerifyPasswordReq(email=email, password=password))

    assert verify(first).verified
    assert not verify(second).verified
    missing = api.VerifyPassword(pb.VerifyPasswordReq(email="nobody@example.com", password="x"))
    assert missing.not_found
    assert not missing.verified
    # The user logs in over HTTP with the password set through the API.
    login = _password_login(admin_issuer, email, first)
    assert login.status_code == 200, login.text
    assert jwt_claims(login.json()["id_token"])["email"] == email

    changed = api.UpdatePassword(
        pb.UpdatePasswordReq(email=email, new_hash=_bcrypt(second), new_username="renamed")
    )
    assert not changed.not_found
    assert verify(second).verified
    assert not verify(first).verified
    assert _password_login(admin_issuer, email, first).status_code in (400, 401)
    listed = {p.email: p for p in api.ListPasswords(pb.ListPasswordReq()).passwords}
    assert listed[email].username == "renamed"
    assert api.UpdatePassword(
        pb.UpdatePasswordReq(email="nobody@example.com", new_username="x")
    ).not_found

    assert not api.DeletePassword(pb.DeletePasswordReq(email=email)).not_found
    assert api.DeletePassword(pb.DeletePasswordReq(email=email)).not_found
    assert verify(second).not_found


def test_verify_password_checks_config_users(api: Stub) -> None:
    from tests.support.issuer import ADMIN_PASSWORD

    request = pb.VerifyPasswordReq(email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
    assert api.VerifyPassword(request).verified
    request = pb.VerifyPasswordReq(email=ADMIN_EMAIL, password=ADMIN_PASSWORD + "!")
    assert not api.VerifyPassword(request).verified


def test_config_passwords_are_read_only(api: Stub) -> None:
    for call in (
        lambda: api.UpdatePassword(pb.UpdatePasswordReq(email=ADMIN_EMAIL, new_username="evil")),
        lambda: api.DeletePassword(pb.DeletePasswordReq(email=ADMIN_EMAIL.upper())),
    ):
        error = _status(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "config" in (error.details() or "")
    entry = pb.Password(email=ADMIN_EMAIL, hash=_bcrypt("whatever-123"), user_id="other")
    assert api.CreatePassword(pb.CreatePasswordReq(password=entry)).already_exists


@pytest.mark.parametrize(
    ("hashed", "problem"),
    [
        (b"plain-text-password", "not a bcrypt"),
        (bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)), "below the minimum"),
        (bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).replace(b"$04$", b"$17$"), "above"),
        (b"", "no password hash"),
    ],
    ids=["plain-text", "bcrypt-cost-4", "bcrypt-cost-17", "empty"],  # stable under xdist
)
def test_bad_password_hashes_are_refused(api: Stub, hashed: bytes, problem: str) -> None:
    entry = pb.Password(email="bad-hash@example.com", hash=hashed, user_id="bad-1")
    error = _status(lambda: api.CreatePassword(pb.CreatePasswordReq(password=entry)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (error.details() or "")
    assert "password.hash" in (error.details() or "")
    assert api.VerifyPassword(
        pb.VerifyPasswordReq(email="bad-hash@example.com", password="pw")
    ).not_found


def test_pbkdf2_hashes_are_accepted_outside_fips_mode(api: Stub) -> None:
    entry = pb.Password(
        email="pbkdf2@example.com",
        hash=hash_password("pbkdf2-secret-1", scheme="pbkdf2", cost=100_000).encode(),
        user_id="pbkdf2-1",
    )
    assert not api.CreatePassword(pb.CreatePasswordReq(password=entry)).already_exists
    request = pb.VerifyPasswordReq(email="pbkdf2@example.com", password="pbkdf2-secret-1")
    assert api.VerifyPassword(request).verified


def test_create_password_needs_a_user_id(api: Stub) -> None:
    entry = pb.Password(email="no-id@example.com", hash=_bcrypt("pw-123456"))
    error = _status(lambda: api.CreatePassword(pb.CreatePasswordReq(password=entry)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in (error.details() or "")


# -- refresh tokens ----------------------------------------------------------------------------


def test_list_and_revoke_refresh_tokens_end_the_sessions(admin_issuer: Issuer, api: Stub) -> None:
    email, password = "sessions@example.com", "sessions-" + "z" * 12
    admin_issuer.remember(password)
    entry = pb.Password(email=email, hash=_bcrypt(password), username="s", user_id="sess-1")
    api.CreatePassword(pb.CreatePasswordReq(password=entry))
    before = time.time()
    logins = [_password_login(admin_issuer, email, password) for _ in range(2)]  # two devices
    for login in logins:
        assert login.status_code == 200, login.text
        assert login.json()["refresh_token"]
    sub = jwt_claims(logins[0].json()["id_token"])["sub"]

    listed = api.ListRefresh(pb.ListRefreshReq(user_id=sub)).refresh_tokens
    assert [r.client_id for r in listed] == ["example-app", "example-app"]
    assert len({r.id for r in listed}) == 2
    for ref in listed:
        assert before - 2 <= ref.created_at <= time.time() + 2
        assert ref.created_at <= ref.last_used
    # Refs carry no usable token material.
    for login in logins:
        assert not any(r.id in login.json()["refresh_token"] for r in listed)

    userinfo = admin_issuer.url("/userinfo")
    bearer = {"Authorization": "Bearer " + logins[0].json()["access_token"]}
    assert httpx.get(userinfo, headers=bearer).status_code == 200

    assert api.RevokeRefresh(pb.RevokeRefreshReq(user_id=sub, client_id="kubectl")).not_found
    revoked = api.RevokeRefresh(pb.RevokeRefreshReq(user_id=sub, client_id="example-app"))
    assert not revoked.not_found
    assert list(api.ListRefresh(pb.ListRefreshReq(user_id=sub)).refresh_tokens) == []
    # The sessions' JWTs die with them, and their refresh tokens no longer work.
    assert httpx.get(userinfo, headers=bearer).status_code == 401
    for login in logins:
        refreshed = admin_issuer.token(
            {"grant_type": "refresh_token", "refresh_token": login.json()["refresh_token"]},
            auth=admin_issuer.app_auth(),
        )
        assert refreshed.status_code == 400
        assert refreshed.json()["error"] == "invalid_grant"
    again = api.RevokeRefresh(pb.RevokeRefreshReq(user_id=sub, client_id="example-app"))
    assert again.not_found


def test_refresh_calls_need_an_id_token_subject(api: Stub) -> None:
    for call in (
        lambda: api.ListRefresh(pb.ListRefreshReq(user_id="not-a-subject")),
        lambda: api.RevokeRefresh(pb.RevokeRefreshReq(user_id="", client_id="example-app")),
    ):
        error = _status(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "user_id" in (error.details() or "")


# -- connectors --------------------------------------------------------------------------------


def test_connector_methods_are_unimplemented(api: Stub) -> None:
    connector = pb.Connector(id="ldap", type="ldap", name="LDAP", config=b"{}")
    for call in (
        lambda: api.CreateConnector(pb.CreateConnectorReq(connector=connector)),
        lambda: api.UpdateConnector(pb.UpdateConnectorReq(id="ldap", new_name="x")),
        lambda: api.DeleteConnector(pb.DeleteConnectorReq(id="mock")),
        lambda: api.ListConnectors(pb.ListConnectorReq()),
    ):
        error = _status(call)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "config file" in (error.details() or "")
