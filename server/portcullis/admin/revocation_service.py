"""``portcullis.admin.v1.Revocation``: ``portcullis revoke`` over the admin API, for operators
who cannot reach the storage directly (or run memory storage). A separate service beside Dex's,
so api.proto stays wire-compatible with Dex; it shares the listener and its TLS/mTLS."""

from __future__ import annotations

import logging

import grpc

from portcullis.admin import revocation_pb2 as pb
from portcullis.admin import revocation_pb2_grpc as pb_grpc
from portcullis.oidc.provider import Provider
from portcullis.oidc.revocation import RevocationError, RevocationResult, Revoker

log = logging.getLogger("portcullis.admin")


class RevocationService(pb_grpc.RevocationServicer):
    def __init__(self, provider: Provider) -> None:
        self._revoker = Revoker(
            provider.storage,
            provider.keys,
            provider.clock,
            provider.settings.max_token_lifetime(provider.clients.all()),
        )

    def Revoke(self, request: pb.RevokeReq, context: grpc.ServicerContext) -> pb.RevokeResp:
        target = request.WhichOneof("target")
        try:
            result: RevocationResult
            if target == "user":
                result = self._revoker.revoke_user(request.user)
            elif target == "group":
                result = self._revoker.revoke_group(request.group)
            elif target == "client":
                result = self._revoker.revoke_client(request.client)
            elif target == "all" and request.all:
                result = self._revoker.revoke_all()
            else:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "target: set one of user, group, client or all (true)",
                )
        except RevocationError as exc:
            # The CLI's wording names its flags; here the field is the same word.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc).removeprefix("--"))
        # The subject is an identifier the operator chose to act on, not a secret.
        log.info("admin API: revoked %s (%d refresh token families)", target, result.families)
        return pb.RevokeResp(families=result.families, denied_until=int(result.until))
