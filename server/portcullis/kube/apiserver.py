"""What a kube-apiserver needs to trust this issuer directly: the legacy ``--oidc-*`` flags and
the structured ``AuthenticationConfiguration`` (``apiserver.config.k8s.io/v1`` or ``v1beta1``,
passed with ``--authentication-config``). Plain data, no I/O except reading the CA file.

The claim mapping is the TokenReview webhook's (``kubernetes.tokenReview.usernameClaim`` and
friends, :mod:`portcullis.kube.usermap`), so a user and their groups get the same names, and the
same RBAC bindings apply, whether a cluster trusts the issuer directly or through the webhook.
One difference cannot be expressed with flags: for ``usernameClaim: email`` the webhook falls
back to ``sub`` when the email is not verified, while ``--oidc-username-claim=email`` refuses such
a token outright. The ``AuthenticationConfiguration`` reproduces the webhook exactly with a CEL
expression (kube-apiserver requires ``claims.email_verified`` to be consulted whenever
``claims.email`` is used, which the expression does).

The audience is the client kubectl signs in with for that cluster (its ``clientID`` in
``kubernetes.kubeconfigPage.clusters``, else ``kubernetes.kubeconfigPage.clientID``): the ID
token's ``aud`` (any other client's token must not authenticate to the cluster). The CA is, in
order, what the caller passes, the page's ``issuerCertificateAuthorityData``, or (in the
command) the root of ``web.tlsCert``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from portcullis.config.load import Config
from portcullis.config.model import TokenReviewSection

AuthConfigVersion = Literal["v1", "v1beta1"]
API_GROUP = "apiserver.config.k8s.io"
#: Where the flags expect the issuer CA on the API server hosts unless told otherwise
#: (kubeadm keeps the cluster's PKI there).
DEFAULT_CA_PATH = "/etc/kubernetes/pki/portcullis-ca.crt"


class ApiserverConfigError(ValueError):
    """The config cannot produce a usable API server configuration; the message names why."""


@dataclass(frozen=True)
class ApiserverSettings:
    """Everything both output formats are generated from, so they cannot disagree."""

    issuer: str
    audiences: tuple[str, ...]
    username_claim: str
    username_prefix: str
    groups_claim: str
    groups_prefix: str
    signing_algorithm: str
    #: PEM of the CA(s) that verify the issuer's TLS certificate; "" means the system trust store.
    certificate_authority: str = ""


def settings_for(
    config: Config,
    cluster: str,
    certificate_authority: str = "",
    *,
    require_https: bool = True,
    signing_algorithm: str = "",
) -> ApiserverSettings:
    """The settings for one cluster of ``kubernetes.kubeconfigPage.clusters`` (named so that
    what an operator configures here and what the kubeconfig page hands users are the same).
    ``require_https=False`` is for the page, which shows what the settings would be even on a
    plain-HTTP test issuer (the command refuses to print a configuration that cannot work).

    A cluster with its own ``issuer`` trusts that issuer, not this one: its URL, its
    ``issuerCertificateAuthorityData`` and the algorithm it signs with. That algorithm is not in
    our config: the page passes the one of the ID token it has just verified
    (``signing_algorithm``); without it, RS256 (kube-apiserver's default, and what OpenID
    Connect Discovery requires every provider to support)."""
    page = config.raw.kubernetes.kubeconfig_page
    names = [c.name for c in page.clusters]
    if cluster not in names:
        known = ", ".join(names) or "none configured"
        raise ApiserverConfigError(
            f"--cluster {cluster!r}: not in kubernetes.kubeconfigPage.clusters ({known})"
        )
    entry = next(c for c in page.clusters if c.name == cluster)
    issuer = entry.issuer or config.issuer_id
    if require_https and not issuer.startswith("https://"):
        where = f"clusters {cluster!r} issuer" if entry.issuer else "issuer"
        raise ApiserverConfigError(f"{where} {issuer!r}: kube-apiserver only trusts https issuers")
    review: TokenReviewSection = config.raw.kubernetes.token_review
    ca_data = (
        entry.issuer_certificate_authority_data
        if entry.issuer
        else page.issuer_certificate_authority_data
    )
    if not certificate_authority and ca_data:
        certificate_authority = base64.b64decode(ca_data).decode("ascii", "replace")
    if not signing_algorithm:
        signing_algorithm = "RS256" if entry.issuer else config.raw.signer.config.algorithm
    return ApiserverSettings(
        issuer=issuer,
        audiences=(entry.client_id or page.client_id,),
        username_claim=review.username_claim,
        username_prefix=review.username_prefix,
        groups_claim=review.groups_claim,
        groups_prefix=review.groups_prefix,
        signing_algorithm=signing_algorithm,
        certificate_authority=certificate_authority,
    )


def issuer_ca_from_tls_cert(pem: bytes) -> str:
    """The CA to trust for a certificate chain file such as ``web.tlsCert``: its last
    certificate when that one is a CA or self-signed (a private CA or a self-signed issuer),
    else "" (a leaf alone was issued by a public CA, which the system trust store covers)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return ""
    last = certificates[-1]
    try:
        is_ca = last.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca or last.issuer == last.subject:
        return last.public_bytes(Encoding.PEM).decode("ascii")
    return ""


def _cel_string(value: str) -> str:
    # A JSON string literal is a valid CEL string literal (same escapes, \\uXXXX included).
    return json.dumps(value)


def _username_mapping(s: ApiserverSettings) -> dict[str, Any]:
    if s.username_claim == "email":
        # usermap.ClaimMapping._username: a verified email, else the subject.
        return {
            "expression": (
                f"{_cel_string(s.username_prefix)} + "
                "(has(claims.email_verified) && claims.email_verified == true "
                "&& has(claims.email) ? claims.email : claims.sub)"
            )
        }
    return {"claim": s.username_claim, "prefix": s.username_prefix}


def authentication_config(
    s: ApiserverSettings, version: AuthConfigVersion = "v1"
) -> dict[str, Any]:
    """An ``AuthenticationConfiguration`` with one JWT authenticator for this issuer."""
    issuer: dict[str, Any] = {"url": s.issuer, "audiences": list(s.audiences)}
    if s.certificate_authority:
        issuer["certificateAuthority"] = s.certificate_authority
    if len(s.audiences) > 1:
        issuer["audienceMatchPolicy"] = "MatchAny"
    jwt: dict[str, Any] = {
        "issuer": issuer,
        "claimValidationRules": [
            {
                # The webhook refuses a token without a subject (UnmappableTokenError).
                "expression": "has(claims.sub) && claims.sub != ''",
                "message": "the token has no subject",
            }
        ],
        "claimMappings": {
            "username": _username_mapping(s),
            "groups": {"claim": s.groups_claim, "prefix": s.groups_prefix},
            "uid": {"claim": "sub"},
        },
        "userValidationRules": [
            {
                # Only bites with an empty prefix: a token must never claim a system identity.
                "expression": "!user.username.startsWith('system:')",
                "message": "usernames starting with system: are reserved for Kubernetes",
            },
            {
                "expression": "user.groups.all(group, !group.startsWith('system:'))",
                "message": "groups starting with system: are reserved for Kubernetes",
            },
        ],
    }
    return {
        "apiVersion": f"{API_GROUP}/{version}",
        "kind": "AuthenticationConfiguration",
        "jwt": [jwt],
    }


def apiserver_flags(s: ApiserverSettings, ca_path: str = DEFAULT_CA_PATH) -> list[str]:
    """The legacy ``--oidc-*`` flags, one ``--name=value`` each (no shell quoting: they are
    written as they go into a static pod manifest's ``command`` list)."""
    flags = [
        f"--oidc-issuer-url={s.issuer}",
        f"--oidc-client-id={s.audiences[0]}",
        f"--oidc-username-claim={s.username_claim}",
        # An empty flag prefix means "issuer URL#" to kube-apiserver; "-" means none.
        f"--oidc-username-prefix={s.username_prefix or '-'}",
        f"--oidc-groups-claim={s.groups_claim}",
        f"--oidc-groups-prefix={s.groups_prefix}",
        f"--oidc-signing-algs={s.signing_algorithm}",
    ]
    if s.certificate_authority:
        flags.append(f"--oidc-ca-file={ca_path}")
    return flags


def render(
    s: ApiserverSettings,
    output: Literal["flags", "authentication-config"],
    version: AuthConfigVersion = "v1",
    ca_path: str = DEFAULT_CA_PATH,
) -> str:
    """The text ``portcullis kube apiserver-config`` prints."""
    if output == "authentication-config":
        return yaml.safe_dump(authentication_config(s, version), sort_keys=False)
    return "\n".join(apiserver_flags(s, ca_path)) + "\n"
