"""`portcullis.admin.v1.Revocation` on a running server's admin listener: the operations of
`portcullis revoke`, with the same effect (the user's still-valid token refused by userinfo,
its refresh token dead) and argument errors named."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from portcullis.admin import revocation_pb2 as pb
from portcullis.admin import revocation_pb2_grpc as pb_grpc

from tests.support.admin import jwt_claims
from tests.support.issuer import ADMIN_EMAIL, ADMIN_PASSWORD, DEV_EMAIL, DEV_PASSWORD, Issuer


@pytest.fixture
def revocation(admin_issuer: Issuer) -> pb_grpc.RevocationStub:
    return pb_grpc.RevocationStub(grpc.insecure_channel(admin_issuer.config["grpc"]["addr"]))


def _sign_in(issuer: Issuer, email: str, password: str) -> dict[str, Any]:
    response = issuer.token(
        {
            "grant_type": "password",
            "username": email,
            "password": password,
            "scope": "openid email groups offline_access",
        },
        auth=issuer.app_auth(),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _userinfo(issuer: Issuer, tokens: dict[str, Any]) -> int:
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    return httpx.get(issuer.url("/userinfo"), headers=headers).status_code


def test_revoke_user_over_the_admin_api(
    admin_issuer: Issuer, revocation: pb_grpc.RevocationStub
) -> None:
    dev = _sign_in(admin_issuer, DEV_EMAIL, DEV_PASSWORD)
    admin = _sign_in(admin_issuer, ADMIN_EMAIL, ADMIN_PASSWORD)
    sub = jwt_claims(dev["id_token"])["sub"]
    response = revocation.Revoke(pb.RevokeReq(user=sub))
    assert response.families >= 1
    assert response.denied_until > 0
    assert _userinfo(admin_issuer, dev) == 401
    refreshed = admin_issuer.token(
        {"grant_type": "refresh_token", "refresh_token": dev["refresh_token"]},
        auth=admin_issuer.app_auth(),
    )
    assert refreshed.status_code == 400
    assert _userinfo(admin_issuer, admin) == 200


def test_revoke_all_over_the_admin_api(
    admin_issuer: Issuer, revocation: pb_grpc.RevocationStub
) -> None:
    before = _sign_in(admin_issuer, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert revocation.Revoke(pb.RevokeReq(all=True)) == pb.RevokeResp()
    # The serving process rotated itself: /keys no longer verifies the earlier token at once.
    with pytest.raises((JoseError, ValueError)):
        jwt.decode(before["id_token"], KeySet.import_key_set(admin_issuer.jwks()))
    assert _userinfo(admin_issuer, before) == 401
    after = _sign_in(admin_issuer, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert _userinfo(admin_issuer, after) == 200


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.RevokeReq(), "target: set one of user, group, client or all"),
        (pb.RevokeReq(all=False), "target: set one of user, group, client or all"),
        (pb.RevokeReq(user="nope"), "user 'nope': not a subject this issuer issued"),
        (pb.RevokeReq(group=""), "group: empty group name"),
    ],
)
def test_bad_requests_are_invalid_arguments(
    revocation: pb_grpc.RevocationStub, request_: pb.RevokeReq, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        revocation.Revoke(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
