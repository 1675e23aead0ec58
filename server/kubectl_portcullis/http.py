"""A minimal HTTPS client on the standard library (urllib + ssl).

Why not httpx or requests: the plugin runs on laptops and is frozen into one file; the handful
of requests it makes (discovery, token, device authorization, revocation) are plain GETs and
form POSTs, so the standard library keeps the binary small and the dependency list empty.

TLS always verifies the issuer's certificate: against the system roots plus any
``--certificate-authority`` files or ``--certificate-authority-data``, unless the user asked for
``--insecure-skip-tls-verify`` (kubelogin's flag, kept for compatibility).
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubectl_portcullis import __version__
from kubectl_portcullis.errors import OAuthError, PluginError

MAX_BODY = 1 << 20  # no issuer answer is anywhere near 1 MiB
USER_AGENT = f"kubectl-portcullis/{__version__}"


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # the decoded JSON document, or None when the body is not JSON


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Token and revocation POSTs must never be replayed to another URL with their secrets."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Http:
    """JSON-over-HTTPS calls to one issuer, with the TLS trust the user configured."""

    def __init__(
        self,
        ca_files: Sequence[str] = (),
        ca_data: Sequence[str] = (),
        *,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.timeout = timeout
        context = ssl.create_default_context()
        for path in ca_files:
            file = Path(path).expanduser()
            try:
                context.load_verify_locations(cafile=str(file))
            except (OSError, ssl.SSLError) as exc:
                raise PluginError(f"--certificate-authority {file}: {exc}") from None
        for data in ca_data:
            try:
                pem = base64.b64decode(data, validate=True).decode("ascii")
                context.load_verify_locations(cadata=pem)
            except (ValueError, ssl.SSLError) as exc:
                raise PluginError(
                    f"--certificate-authority-data is not base64 of PEM certificates ({exc})"
                ) from None
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        https = urllib.request.HTTPSHandler(context=context)
        self._get = urllib.request.build_opener(https)
        self._post = urllib.request.build_opener(https, _NoRedirect())

    def get_json(self, url: str) -> Any:
        _check_scheme(url)
        response = self._send(self._get, urllib.request.Request(url), url)  # noqa: S310
        if response.status != 200 or response.body is None:
            raise PluginError(f"GET {url} answered HTTP {response.status} (expected JSON)")
        return response.body

    def post_form(
        self,
        url: str,
        form: Mapping[str, str],
        *,
        basic_auth: tuple[str, str] | None = None,
    ) -> Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if basic_auth is not None:
            # RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
            user, password = (urllib.parse.quote(part, safe="") for part in basic_auth)
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{user}:{password}".encode()
            ).decode("ascii")
        data = urllib.parse.urlencode(dict(form)).encode()
        _check_scheme(url)
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310
        return self._send(self._post, request, url)

    def post_oauth(
        self, url: str, form: Mapping[str, str], *, basic_auth: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """POST to an OAuth endpoint: the JSON object on 200, :class:`OAuthError` otherwise."""
        response = self.post_form(url, form, basic_auth=basic_auth)
        body = response.body
        if response.status == 200 and isinstance(body, dict):
            return body
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            description = body.get("error_description")
            raise OAuthError(
                url, body["error"], description if isinstance(description, str) else ""
            )
        raise PluginError(f"POST {url} answered HTTP {response.status} without an OAuth error")

    def _send(
        self, opener: urllib.request.OpenerDirector, request: urllib.request.Request, url: str
    ) -> Response:
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", USER_AGENT)
        try:
            with opener.open(request, timeout=self.timeout) as answer:
                return Response(answer.status, _json(answer.read(MAX_BODY + 1)))
        except urllib.error.HTTPError as answer:
            with answer:
                return Response(answer.code, _json(answer.read(MAX_BODY + 1)))
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PluginError(f"cannot reach {_origin(url)}: {reason}") from None


def _check_scheme(url: str) -> None:
    """Only http(s): urllib would also open file: and ftp: URLs from a hostile discovery."""
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise PluginError(f"{url!r} is not an http(s) URL")


def _json(raw: bytes) -> Any:
    if len(raw) > MAX_BODY:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
