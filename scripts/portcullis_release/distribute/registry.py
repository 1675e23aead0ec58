"""OCI distribution client: just what publishing and verification need, over httpx.

Credentials come from a docker config JSON (the document an imagePullSecret holds), so the same
file works for `make release`, cosign, skopeo and Kubernetes. Both challenge styles registries use
are answered: ``Basic`` (htpasswd-backed distribution) and ``Bearer`` token services.
Failures are turned into exceptions whose message says what to fix (credentials, permission,
network) without ever printing a secret.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from portcullis_release.oci import MANIFEST_TYPES, Reference, sha256_digest

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class RegistryError(Exception):
    """Any registry failure; the message is safe to print (no secrets)."""


class AuthenticationError(RegistryError):
    """401: missing or wrong credentials."""


class AuthorizationError(RegistryError):
    """403: the credentials are valid but lack permission."""


class RegistryUnreachableError(RegistryError):
    """The registry could not be reached at all (DNS, refused, TLS, timeout)."""


class NotFoundError(RegistryError):
    """The manifest, tag or blob does not exist."""


# ---- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = ""
    identity_token: str | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(username={self.username!r}, password=***)"


def _normalise_host(key: str) -> str:
    key = re.sub(r"^[a-z]+://", "", key)
    return key.split("/", 1)[0]


class DockerAuth:
    """Credentials per registry host, read from a docker config JSON (``auths`` section)."""

    def __init__(self, entries: Mapping[str, Credentials] | None = None) -> None:
        self._entries = dict(entries or {})

    @classmethod
    def from_file(cls, path: Path) -> DockerAuth:
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise RegistryError(f"auth file {path} does not exist") from None
        except ValueError as exc:
            raise RegistryError(f"auth file {path} is not JSON: {exc}") from None
        return cls.from_config(doc, str(path))

    @classmethod
    def from_config(cls, doc: Any, where: str = "auth file") -> DockerAuth:
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            raise RegistryError(f"{where}: no 'auths' object (expected a docker config JSON)")
        entries: dict[str, Credentials] = {}
        for host, entry in auths.items():
            if not isinstance(entry, dict):
                raise RegistryError(f"{where}: auths.{host} is not an object")
            entries[_normalise_host(host)] = cls._entry(entry, f"{where}: auths.{host}")
        return cls(entries)

    @staticmethod
    def _entry(entry: Mapping[str, Any], where: str) -> Credentials:
        token = entry.get("identitytoken")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise RegistryError(f"{where}.auth is not base64 of 'user:password'") from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise RegistryError(f"{where}.auth does not decode to 'user:password'")
            return Credentials(user, password, token)
        if "username" in entry:
            return Credentials(str(entry["username"]), str(entry.get("password", "")), token)
        if token:
            return Credentials("<token>", "", str(token))
        raise RegistryError(f"{where} has neither 'auth' nor 'username'/'password'")

    def for_host(self, host: str) -> Credentials | None:
        return self._entries.get(host)


# ---- the client -------------------------------------------------------------------------------

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class RegistryClient:
    """A session with one registry host.

    ``plain_http`` defaults to true only for loopback hosts (a local test or release registry);
    everything else is spoken over verified TLS unless the caller says otherwise.
    """

    def __init__(
        self,
        host: str,
        auth: DockerAuth | None = None,
        *,
        plain_http: bool | None = None,
        verify_tls: bool | str = True,
        timeout: float = 60.0,
    ) -> None:
        self.host = host
        if plain_http is None:
            plain_http = host.rsplit(":", 1)[0] in LOOPBACK_HOSTS
        self.base = f"{'http' if plain_http else 'https'}://{host}"
        self.credentials = (auth or DockerAuth()).for_host(host)
        self._http = httpx.Client(timeout=timeout, verify=verify_tls, follow_redirects=True)
        self._auth_header: dict[str, str] = {}  # scope -> Authorization value

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- auth --------------------------------------------------------------------------------

    def _who(self) -> str:
        return f"user {self.credentials.username!r}" if self.credentials else "anonymous access"

    def _answer_challenge(self, header: str, scope: str) -> str:
        scheme, params = _parse_challenge(header)
        creds = self.credentials
        if scheme == "basic":
            if creds is None:
                raise AuthenticationError(
                    f"registry {self.host} requires credentials and the auth file has none for "
                    f"{self.host}"
                )
            raw = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if scheme == "bearer":
            return "Bearer " + self._fetch_token(params, scope)
        raise RegistryError(f"registry {self.host} uses unsupported auth scheme {scheme!r}")

    def _fetch_token(self, params: Mapping[str, str], scope: str) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.host} sent a Bearer challenge without a realm")
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        auth: tuple[str, str] | None = None
        creds = self.credentials
        if creds is not None and creds.identity_token is None:
            auth = (creds.username, creds.password)
        try:
            if creds is not None and creds.identity_token:
                resp = self._http.post(
                    realm,
                    data={
                        "grant_type": "refresh_token",
                        "refresh_token": creds.identity_token,
                        "service": params.get("service", ""),
                        "scope": scope,
                    },
                )
            else:
                resp = self._http.get(realm, params=query, auth=auth)
        except httpx.TransportError as exc:
            raise RegistryUnreachableError(f"token service {realm} unreachable: {exc}") from None
        if resp.status_code == 401:
            raise AuthenticationError(
                f"token service {realm} rejected the credentials of {self._who()}"
            )
        if resp.status_code == 403:
            raise AuthorizationError(f"token service {realm} denied {scope} to {self._who()}")
        if resp.status_code != 200:
            raise RegistryError(f"token service {realm} answered HTTP {resp.status_code}")
        body = resp.json()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service {realm} returned no token")
        return token

    def _request(
        self,
        method: str,
        url: str,
        scope: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        missing_ok: bool = False,
    ) -> httpx.Response:
        if not url.startswith("http"):
            url = self.base + url
        for attempt in range(2):
            hdrs = dict(headers or {})
            if scope in self._auth_header:
                hdrs["Authorization"] = self._auth_header[scope]
            try:
                resp = self._http.request(method, url, headers=hdrs, content=content)
            except httpx.TransportError as exc:
                raise RegistryUnreachableError(
                    f"cannot reach registry {self.host} ({type(exc).__name__}: {exc}) while {what}"
                ) from None
            if resp.status_code == 401 and attempt == 0 and "www-authenticate" in resp.headers:
                self._auth_header[scope] = self._answer_challenge(
                    resp.headers["www-authenticate"], scope
                )
                continue
            break
        if resp.status_code == 401:
            raise AuthenticationError(
                f"registry {self.host} rejected {self._who()} (HTTP 401) while {what}: check the "
                "auth file"
            )
        if resp.status_code == 403:
            raise AuthorizationError(
                f"registry {self.host} denied {self._who()} (HTTP 403) while {what}: the account "
                "lacks permission"
            )
        if resp.status_code == 404 and missing_ok:
            return resp
        if resp.status_code == 404:
            raise NotFoundError(f"{what}: not found on {self.host}")
        if resp.status_code not in ok:
            detail = resp.text[:300].strip()
            raise RegistryError(
                f"registry {self.host} answered HTTP {resp.status_code} while {what}: {detail}"
            )
        return resp

    @staticmethod
    def _scope(repository: str, push: bool) -> str:
        return f"repository:{repository}:{'pull,push' if push else 'pull'}"

    # -- reads -------------------------------------------------------------------------------

    def check_access(self) -> None:
        """Fail early (and clearly) if the registry is unreachable or refuses the credentials."""
        self._request("GET", "/v2/", "registry:catalog:*", what="checking API access")

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """Digest a tag or digest resolves to, or None if it does not exist (HEAD only)."""
        resp = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            self._scope(repository, False),
            what=f"resolving {repository}:{reference}",
            headers={"Accept": ",".join(MANIFEST_TYPES)},
            missing_ok=True,
        )
        if resp.status_code == 404:
            return None
        served: str | None = resp.headers.get("docker-content-digest")
        return served

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """Raw manifest bytes (digest-exact) and media type."""
        resp = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            self._scope(repository, False),
            what=f"fetching manifest {repository}:{reference}",
            headers={"Accept": ",".join(MANIFEST_TYPES)},
        )
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        return resp.content, media_type

    def blob_exists(self, repository: str, digest: str) -> bool:
        resp = self._request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            self._scope(repository, False),
            what=f"checking blob {digest}",
            missing_ok=True,
        )
        return resp.status_code == 200

    def get_blob(self, repository: str, digest: str) -> bytes:
        """Blob bytes as served; the caller checks them against the digest (never trust)."""
        resp = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            self._scope(repository, False),
            what=f"fetching blob {digest} of {repository}",
        )
        return resp.content

    def list_tags(self, repository: str) -> list[str]:
        resp = self._request(
            "GET",
            f"/v2/{repository}/tags/list",
            self._scope(repository, False),
            what=f"listing tags of {repository}",
            missing_ok=True,
        )
        if resp.status_code == 404:
            return []
        tags = resp.json().get("tags") or []
        return [str(t) for t in tags]

    # -- writes ------------------------------------------------------------------------------

    def push_blob(self, repository: str, digest: str, data: bytes) -> None:
        """Monolithic upload (POST then PUT ?digest=); the registry checks the digest itself."""
        if sha256_digest(data) != digest:
            raise RegistryError(f"refusing to push blob {digest}: content does not match")
        scope = self._scope(repository, True)
        resp = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scope,
            what=f"starting upload of {digest}",
            ok=(202,),
        )
        location = resp.headers.get("location")
        if not location:
            raise RegistryError(f"registry {self.host} gave no upload location for {digest}")
        if location.startswith("/"):
            location = self.base + location
        sep = "&" if "?" in location else "?"
        self._request(
            "PUT",
            f"{location}{sep}digest={digest}",
            scope,
            what=f"uploading blob {digest}",
            headers={"Content-Type": "application/octet-stream"},
            content=data,
            ok=(201, 204),
        )

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Store a manifest under a digest or tag; returns its digest (checked against ours)."""
        digest = sha256_digest(data)
        resp = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            self._scope(repository, True),
            what=f"pushing manifest {repository}:{reference}",
            headers={"Content-Type": media_type},
            content=data,
            ok=(201, 200, 202),
        )
        served = resp.headers.get("docker-content-digest")
        if served and served != digest:
            raise RegistryError(
                f"registry stored {repository}:{reference} as {served}, not {digest}"
            )
        return digest

    def delete_manifest(self, repository: str, digest: str) -> None:
        self._request(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            self._scope(repository, True),
            what=f"deleting {repository}@{digest}",
            ok=(202, 200),
        )


def client_for(ref: Reference, auth_file: Path | None, **kwargs: Any) -> RegistryClient:
    """A client for the registry ``ref`` names, with credentials from ``auth_file`` if given."""
    auth = DockerAuth.from_file(auth_file) if auth_file else DockerAuth()
    return RegistryClient(ref.host, auth, **kwargs)
