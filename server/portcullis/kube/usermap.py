"""Map the claims of a verified token to a Kubernetes user, the way kube-apiserver's
``--oidc-username-claim/--oidc-username-prefix/--oidc-groups-claim/--oidc-groups-prefix`` do, so
RBAC bindings are the same whether a cluster trusts the issuer directly or through the webhook.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from portcullis.config.model import TokenReviewSection

# kube-apiserver's audit convention for the credential behind a request (it writes JTI=<jti>
# for service-account tokens); lets an audit log line be tied to a revocable token.
CREDENTIAL_ID_EXTRA = "authentication.kubernetes.io/credential-id"
# Names Kubernetes keeps for itself (system:masters is cluster-admin, system:node:* a kubelet).
# A token must never carry one, whatever the prefixes: with an empty prefix an upstream group
# anyone can be put in would otherwise become one. The AuthenticationConfiguration generated
# beside the webhook (kube/apiserver.py) refuses the same tokens with userValidationRules.
RESERVED_PREFIX = "system:"


class UnmappableTokenError(ValueError):
    """The token is valid but carries no usable identity; the message is safe to return."""


@dataclass(frozen=True)
class KubeUser:
    username: str
    uid: str
    groups: tuple[str, ...]
    extra: dict[str, list[str]] = field(default_factory=dict)

    def as_status_user(self) -> dict[str, Any]:
        user: dict[str, Any] = {"username": self.username, "uid": self.uid}
        if self.groups:
            user["groups"] = list(self.groups)
        if self.extra:
            user["extra"] = self.extra
        return user


@dataclass(frozen=True)
class ClaimMapping:
    username_claim: str
    username_prefix: str
    groups_claim: str
    groups_prefix: str

    @classmethod
    def from_config(cls, section: TokenReviewSection) -> ClaimMapping:
        return cls(
            section.username_claim,
            section.username_prefix,
            section.groups_claim,
            section.groups_prefix,
        )

    def _username(self, claims: Mapping[str, Any]) -> str:
        if self.username_claim == "email":
            # An unverified email could name someone else: such users are known by their
            # subject instead (never collides with an email, which an attacker could pick).
            if claims.get("email_verified") is True and isinstance(claims.get("email"), str):
                value: Any = claims["email"]
            else:
                value = claims.get("sub")
        else:
            value = claims.get(self.username_claim)
        if not isinstance(value, str) or not value:
            raise UnmappableTokenError(
                f"the token has no usable {self.username_claim!r} claim for the username"
            )
        return self.username_prefix + value

    def _groups(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        value = claims.get(self.groups_claim)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
            raise UnmappableTokenError(
                f"the token's {self.groups_claim!r} claim is not a string or a list of strings"
            )
        return tuple(dict.fromkeys(self.groups_prefix + g for g in value if g))

    def user(self, claims: Mapping[str, Any]) -> KubeUser:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise UnmappableTokenError("the token has no subject")
        extra: dict[str, list[str]] = {}
        jti = claims.get("jti")
        if isinstance(jti, str) and jti:
            extra[CREDENTIAL_ID_EXTRA] = [f"JTI={jti}"]
        username, groups = self._username(claims), self._groups(claims)
        if username.startswith(RESERVED_PREFIX):
            raise UnmappableTokenError(
                f"the username {username!r} starts with {RESERVED_PREFIX!r}, which Kubernetes "
                "reserves for itself"
            )
        reserved = [g for g in groups if g.startswith(RESERVED_PREFIX)]
        if reserved:
            raise UnmappableTokenError(
                f"the groups {reserved!r} start with {RESERVED_PREFIX!r}, which Kubernetes "
                "reserves for itself"
            )
        return KubeUser(username, sub, groups, extra)
