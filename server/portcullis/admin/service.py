"""The Dex-compatible admin API (gRPC service ``api.Dex``) over the issuer's storage.

Behaviour follows Dex's API server so existing clients work: "not found" and "already exists"
are answered with the response flags (``not_found``, ``already_exists``), not with gRPC errors;
Create* fills in a generated id/secret when left empty. Where Portcullis differs it answers with
a gRPC status whose message says why:

* clients and passwords from the config file are read-only here (FAILED_PRECONDITION): the
  config is the source of truth for them and a restart would undo any change;
* connectors are configured in the config file only (UNIMPLEMENTED);
* client secrets are stored as digests, so GetClient cannot return one (the secret is shown once,
  in the CreateClient response);
* RevokeRefresh ends every refresh-token family the user holds for the client (Portcullis keeps
  one per device, Dex one per user and client), together with the JWTs minted for them.

Storage calls block, so the service runs in the gRPC server's thread pool (admin.server).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
from collections.abc import Iterable
from typing import NoReturn

import grpc
from pydantic import TypeAdapter, ValidationError

from portcullis import __version__, passwords
from portcullis.admin import api_pb2 as pb
from portcullis.admin import api_pb2_grpc as pb_grpc
from portcullis.config.model import RedirectURI
from portcullis.oidc.claims import decode_subject
from portcullis.oidc.clients import hash_client_secret
from portcullis.oidc.provider import Provider
from portcullis.oidc.refresh import end_family, session_id
from portcullis.storage.base import AlreadyExistsError, NotFoundError
from portcullis.storage.models import Client, Password

log = logging.getLogger("portcullis.admin")

# Dex 2.45 reports API level 3 (GetClient, ListClients and GetDiscovery included); this service
# offers the same method set, so clients that gate features on the level behave the same.
API_VERSION = 3
# Dex refuses bcrypt costs above 16: verifying such a hash costs seconds of CPU per login.
BCRYPT_MAX_COST = 16
_BCRYPT_COST = re.compile(r"^\$2[aby]\$(\d\d)\$")
_REDIRECT_URI: TypeAdapter[str] = TypeAdapter(RedirectURI)

Context = grpc.ServicerContext


class DexAdminService(pb_grpc.DexServicer):
    def __init__(self, provider: Provider, *, fips_mode: bool) -> None:
        self._provider = provider
        self._storage = provider.storage
        self._fips_mode = fips_mode
        config = provider.config
        self._static_clients = {spec.id for spec in config.clients}
        self._static_passwords: dict[str, Password] = {
            p.email.lower(): Password(
                email=p.email,
                hash=p.hash,
                username=p.username,
                user_id=p.user_id,
            )
            for p in config.passwords
        }

    # -- clients -----------------------------------------------------------------------------
    def GetClient(self, request: pb.GetClientReq, context: Context) -> pb.GetClientResp:
        client = self._provider.clients.get(request.id) if request.id else None
        if client is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"client {request.id!r} not found")
        return pb.GetClientResp(client=_client_message(client, secret=""))

    def CreateClient(self, request: pb.CreateClientReq, context: Context) -> pb.CreateClientResp:
        if not request.HasField("client"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no client supplied")
        given = request.client
        _check_redirect_uris(given.redirect_uris, context)
        client_id = given.id or secrets.token_hex(16)
        secret = given.secret
        if not secret and not given.public:
            secret = secrets.token_urlsafe(32)
        if client_id in self._static_clients:
            return pb.CreateClientResp(already_exists=True)
        record = Client(
            id=client_id,
            secret_hash=hash_client_secret(secret) if secret else "",
            redirect_uris=tuple(given.redirect_uris),
            trusted_peers=tuple(given.trusted_peers),
            public=given.public,
            name=given.name,
            logo_url=given.logo_url,
        )
        try:
            self._storage.create_client(record)
        except AlreadyExistsError:
            return pb.CreateClientResp(already_exists=True)
        log.info("admin API: created client %r", client_id)
        return pb.CreateClientResp(client=_client_message(record, secret=secret))

    def UpdateClient(self, request: pb.UpdateClientReq, context: Context) -> pb.UpdateClientResp:
        if not request.id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "update client: no client id supplied")
        self._refuse_static_client(request.id, "updated", context)
        _check_redirect_uris(request.redirect_uris, context)

        def change(old: Client) -> Client:
            # Dex's rule: an empty field leaves the stored value unchanged.
            return dataclasses.replace(
                old,
                redirect_uris=tuple(request.redirect_uris) or old.redirect_uris,
                trusted_peers=tuple(request.trusted_peers) or old.trusted_peers,
                name=request.name or old.name,
                logo_url=request.logo_url or old.logo_url,
            )

        try:
            self._storage.update_client(request.id, change)
        except NotFoundError:
            return pb.UpdateClientResp(not_found=True)
        log.info("admin API: updated client %r", request.id)
        return pb.UpdateClientResp()

    def DeleteClient(self, request: pb.DeleteClientReq, context: Context) -> pb.DeleteClientResp:
        self._refuse_static_client(request.id, "deleted", context)
        try:
            self._storage.delete_client(request.id)
        except NotFoundError:
            return pb.DeleteClientResp(not_found=True)
        log.info("admin API: deleted client %r", request.id)
        return pb.DeleteClientResp()

    def ListClients(self, request: pb.ListClientReq, context: Context) -> pb.ListClientResp:
        return pb.ListClientResp(
            clients=[
                pb.ClientInfo(
                    id=c.id,
                    redirect_uris=c.redirect_uris,
                    trusted_peers=c.trusted_peers,
                    public=c.public,
                    name=c.name,
                    logo_url=c.logo_url,
                )
                for c in self._provider.clients.all()
            ]
        )

    def _refuse_static_client(self, client_id: str, verb: str, context: Context) -> None:
        if client_id in self._static_clients:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"client {client_id!r} comes from the config file (staticClients) and cannot be "
                f"{verb} through the API; edit the config instead",
            )

    # -- passwords ---------------------------------------------------------------------------
    def CreatePassword(
        self, request: pb.CreatePasswordReq, context: Context
    ) -> pb.CreatePasswordResp:
        if not request.HasField("password"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no password supplied")
        given = request.password
        if not given.email:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "password.email: no email supplied")
        if not given.user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "password.user_id: no user id supplied")
        hashed = self._checked_hash(given.hash, "password.hash", context)
        if given.email.lower() in self._static_passwords:
            return pb.CreatePasswordResp(already_exists=True)
        record = Password(
            email=given.email, hash=hashed, username=given.username, user_id=given.user_id
        )
        try:
            self._storage.create_password(record)
        except AlreadyExistsError:
            return pb.CreatePasswordResp(already_exists=True)
        log.info("admin API: created password entry for user id %r", given.user_id)
        return pb.CreatePasswordResp()

    def UpdatePassword(
        self, request: pb.UpdatePasswordReq, context: Context
    ) -> pb.UpdatePasswordResp:
        if not request.email:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "email: no email supplied")
        if not request.new_hash and not request.new_username:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nothing to update")
        self._refuse_static_password(request.email, "updated", context)
        new_hash = (
            self._checked_hash(request.new_hash, "new_hash", context) if request.new_hash else ""
        )

        def change(old: Password) -> Password:
            return dataclasses.replace(
                old,
                hash=new_hash or old.hash,
                username=request.new_username or old.username,
            )

        try:
            self._storage.update_password(request.email, change)
        except NotFoundError:
            return pb.UpdatePasswordResp(not_found=True)
        log.info("admin API: updated a password entry")
        return pb.UpdatePasswordResp()

    def DeletePassword(
        self, request: pb.DeletePasswordReq, context: Context
    ) -> pb.DeletePasswordResp:
        if not request.email:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "email: no email supplied")
        self._refuse_static_password(request.email, "deleted", context)
        try:
            self._storage.delete_password(request.email)
        except NotFoundError:
            return pb.DeletePasswordResp(not_found=True)
        log.info("admin API: deleted a password entry")
        return pb.DeletePasswordResp()

    def ListPasswords(self, request: pb.ListPasswordReq, context: Context) -> pb.ListPasswordResp:
        entries = {p.email.lower(): p for p in self._storage.list_passwords()}
        entries.update(self._static_passwords)
        # Like Dex, the list never carries hashes.
        return pb.ListPasswordResp(
            passwords=[
                pb.Password(email=p.email, username=p.username, user_id=p.user_id)
                for _, p in sorted(entries.items())
            ]
        )

    def VerifyPassword(
        self, request: pb.VerifyPasswordReq, context: Context
    ) -> pb.VerifyPasswordResp:
        if not request.email:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "email: no email supplied")
        if not request.password:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "password: no password supplied")
        entry = self._static_passwords.get(request.email.lower())
        if entry is None:
            try:
                entry = self._storage.get_password(request.email)
            except NotFoundError:
                return pb.VerifyPasswordResp(not_found=True)
        try:
            ok = passwords.verify_password(request.password, entry.hash, fips_mode=self._fips_mode)
        except passwords.PasswordHashError:
            # A stored hash the policy refuses never verifies (fail closed).
            ok = False
        return pb.VerifyPasswordResp(verified=ok)

    def _refuse_static_password(self, email: str, verb: str, context: Context) -> None:
        if email.lower() in self._static_passwords:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this password entry comes from the config file (staticPasswords) and cannot be "
                f"{verb} through the API; edit the config instead",
            )

    def _checked_hash(self, raw: bytes, field: str, context: Context) -> str:
        if not raw:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: no password hash supplied")
        try:
            hashed = raw.decode("ascii")
        except UnicodeDecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: not a password hash")
        problem = passwords.check_hash_format(hashed, fips_mode=self._fips_mode)
        cost = _BCRYPT_COST.match(hashed)
        if problem is None and cost and int(cost.group(1)) > BCRYPT_MAX_COST:
            problem = f"bcrypt cost {cost.group(1)} is above the maximum {BCRYPT_MAX_COST}"
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")
        return hashed

    # -- connectors --------------------------------------------------------------------------
    def CreateConnector(
        self, request: pb.CreateConnectorReq, context: Context
    ) -> pb.CreateConnectorResp:
        _connectors_unimplemented(context)

    def UpdateConnector(
        self, request: pb.UpdateConnectorReq, context: Context
    ) -> pb.UpdateConnectorResp:
        _connectors_unimplemented(context)

    def DeleteConnector(
        self, request: pb.DeleteConnectorReq, context: Context
    ) -> pb.DeleteConnectorResp:
        _connectors_unimplemented(context)

    def ListConnectors(
        self, request: pb.ListConnectorReq, context: Context
    ) -> pb.ListConnectorResp:
        _connectors_unimplemented(context)

    # -- server information ------------------------------------------------------------------
    def GetVersion(self, request: pb.VersionReq, context: Context) -> pb.VersionResp:
        return pb.VersionResp(server=__version__, api=API_VERSION)

    def GetDiscovery(self, request: pb.DiscoveryReq, context: Context) -> pb.DiscoveryResp:
        document = json.loads(self._provider.discovery)
        known = set(pb.DiscoveryResp.DESCRIPTOR.fields_by_name)
        return pb.DiscoveryResp(**{k: v for k, v in document.items() if k in known})

    # -- refresh tokens ----------------------------------------------------------------------
    def ListRefresh(self, request: pb.ListRefreshReq, context: Context) -> pb.ListRefreshResp:
        user_id, connector_id = _subject(request.user_id, context)
        families = self._storage.list_refresh_tokens(user_id=user_id, connector_id=connector_id)
        return pb.ListRefreshResp(
            refresh_tokens=[
                # The id is the family's `sid` (as in its JWTs), never the token's own id.
                pb.RefreshTokenRef(
                    id=session_id(f.id),
                    client_id=f.client_id,
                    created_at=int(f.created_at),
                    last_used=int(f.last_used),
                )
                for f in sorted(families, key=lambda f: (f.client_id, f.created_at))
            ]
        )

    def RevokeRefresh(self, request: pb.RevokeRefreshReq, context: Context) -> pb.RevokeRefreshResp:
        user_id, connector_id = _subject(request.user_id, context)
        if not request.client_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client_id: no client id supplied")
        families = [
            f
            for f in self._storage.list_refresh_tokens(user_id=user_id, connector_id=connector_id)
            if f.client_id == request.client_id
        ]
        if not families:
            return pb.RevokeRefreshResp(not_found=True)
        provider = self._provider
        horizon = provider.clock.now() + provider.settings.max_token_lifetime(
            provider.clients.all()
        )
        for family in families:
            end_family(self._storage, family.id, horizon)
        log.info(
            "admin API: revoked %d refresh token famil%s for client %r",
            len(families),
            "y" if len(families) == 1 else "ies",
            request.client_id,
        )
        return pb.RevokeRefreshResp()


def _client_message(client: Client, *, secret: str) -> pb.Client:
    return pb.Client(
        id=client.id,
        secret=secret,
        redirect_uris=client.redirect_uris,
        trusted_peers=client.trusted_peers,
        public=client.public,
        name=client.name,
        logo_url=client.logo_url,
    )


def _check_redirect_uris(uris: Iterable[str], context: Context) -> None:
    for index, uri in enumerate(uris):
        try:
            _REDIRECT_URI.validate_python(uri)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"redirect_uris[{index}]: {reason}: {uri!r}"
            )


def _subject(sub: str, context: Context) -> tuple[str, str]:
    """Dex's user_id here is the ID token's `sub` (user id and connector id, encoded)."""
    try:
        user_id, connector_id = decode_subject(sub) if sub else ("", "")
    except (ValueError, UnicodeDecodeError):
        user_id = connector_id = ""
    if not user_id or not connector_id:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "user_id: not an ID token subject (the `sub` claim Portcullis issued)",
        )
    return user_id, connector_id


def _connectors_unimplemented(context: Context) -> NoReturn:
    context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        "connectors are configured in the config file only; the API cannot list or change them",
    )
