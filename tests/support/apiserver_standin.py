"""A loopback HTTPS stand-in for kube-apiserver's OIDC authenticator (no apiserver binary here).

It does what kube-apiserver's ``--oidc-*`` authenticator does with a bearer token: verifies the
JWS signature against the issuer's JWKS (``/keys``, re-fetched on an unknown key id), requires
``iss`` to be the issuer, ``aud`` to hold the client id and ``exp`` in the future, and maps
``email`` / ``groups`` to the user name and groups with an ``oidc:`` prefix. It answers
``kubectl auth whoami`` (a SelfSubjectReview) with that user, or 401 like the real API.
Verification uses joserfc, an implementation independent of the plugin (which only decodes).
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tests.support.kube import ServingCert

PREFIX = "oidc:"


@dataclass
class Seen:
    token: str
    username: str
    groups: list[str]


@dataclass
class ApiServerStandIn:
    cert: ServingCert
    issuer: str
    client_id: str
    #: The CA of the issuer's HTTPS certificate when it is a private one (None: system roots).
    issuer_ca: Path | None = None
    seen: list[Seen] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._keys = self._fetch_keys()
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                # kubectl may send the review as protobuf; its content is empty anyway.
                self.rfile.read(int(self.headers.get("content-length", "0")))
                user = standin.authenticate(self.headers.get("authorization", ""))
                if user is None:
                    self._send(
                        401,
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "reason": "Unauthorized",
                            "code": 401,
                        },
                    )
                    return
                if self.path != "/apis/authentication.k8s.io/v1/selfsubjectreviews":
                    self._send(404, {"kind": "Status", "apiVersion": "v1", "code": 404})
                    return
                review = {
                    "kind": "SelfSubjectReview",
                    "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": None},
                    "status": {"userInfo": {"username": user.username, "groups": user.groups}},
                }
                self._send(201, review)

            def _send(self, code: int, document: object) -> None:
                data = json.dumps(document).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert.cert, self.cert.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _fetch_keys(self) -> KeySet:
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(self.issuer_ca)) if self.issuer_ca else True
        )
        discovery = httpx.get(
            self.issuer + "/.well-known/openid-configuration", verify=verify
        ).json()
        return KeySet.import_key_set(httpx.get(discovery["jwks_uri"], verify=verify).json())

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def authenticate(self, authorization: str) -> Seen | None:
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            self.rejected.append("no bearer token")
            return None
        try:
            claims = self._verify(token)
        except JoseError as exc:
            self._keys = self._fetch_keys()  # key rotation: one re-fetch, as the apiserver does
            try:
                claims = self._verify(token)
            except JoseError:
                self.rejected.append(f"{type(exc).__name__}: {exc}")
                return None
        groups = claims.get("groups") or []
        seen = Seen(
            token,
            PREFIX + str(claims["email"]),
            [PREFIX + g for g in groups] + ["system:authenticated"],
        )
        self.seen.append(seen)
        return seen

    def _verify(self, token: str) -> dict[str, Any]:
        decoded = jwt.decode(token, self._keys, algorithms=["RS256", "ES256"])
        registry = jwt.JWTClaimsRegistry(
            now=int(time.time()),
            leeway=0,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.client_id},
            exp={"essential": True},
            email={"essential": True},
        )
        registry.validate(decoded.claims)
        return dict(decoded.claims)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
