"""Who may ask the webhook: with ``authenticateCallers``, each caller's bearer token (the webhook
kubeconfig's ``tokenFile``) is checked with the cluster's own TokenReview API, and the caller
must be allowed to ``create tokenreviews.authentication.k8s.io`` by a SubjectAccessReview.
kube-apiserver's identity and any service account bound to ``system:auth-delegator`` pass;
anything else gets 401/403, so the webhook is not an oracle for stolen tokens.

Both Kubernetes calls use this pod's service account (the chart binds it to
``system:auth-delegator``). Positive and negative answers are cached briefly under a hash of
the caller's token, so kube-apiserver's steady stream of reviews costs no extra API round trips.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portcullis.config.model import KubeAPIAccess

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CACHE_SECONDS = 10.0
CACHE_MAX = 256
API_TIMEOUT = 5.0


class CallerCheckError(Exception):
    """The Kubernetes API could not be asked (the caller is refused, with 503)."""


@dataclass(frozen=True)
class CallerDecision:
    status: int  # 200 allowed, 401 unauthenticated, 403 forbidden
    reason: str


@dataclass(frozen=True)
class KubeAPI:
    server: str
    token_file: Path
    context: ssl.SSLContext

    @classmethod
    def from_config(cls, access: KubeAPIAccess) -> KubeAPI:
        server = access.server
        if not server:
            host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise CallerCheckError(
                    "kubernetes.tokenReview.kubeAPI.server is not set and this is not a pod "
                    "(KUBERNETES_SERVICE_HOST is empty)"
                )
            server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        token_file = Path(access.token_file or SERVICE_ACCOUNT_DIR / "token")
        ca_file = access.ca_file or str(SERVICE_ACCOUNT_DIR / "ca.crt")
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CallerCheckError(
                f"kubernetes.tokenReview.kubeAPI.caFile: cannot load {ca_file}: {exc}"
            ) from None
        return cls(server.rstrip("/"), token_file, context)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        # Re-read every call: kubelet rotates projected service-account tokens.
        token = self.token_file.read_text(encoding="utf-8").strip()
        request = urllib.request.Request(  # noqa: S310 - the URL is https from config
            self.server + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=API_TIMEOUT, context=self.context
            ) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise CallerCheckError(f"Kubernetes API answered {exc.code} on {path}") from None
        except (OSError, ValueError) as exc:
            raise CallerCheckError(f"Kubernetes API unreachable: {type(exc).__name__}") from None
        if not isinstance(answer, dict):
            raise CallerCheckError(f"Kubernetes API sent no object on {path}")
        return answer


class CallerAuthenticator:
    def __init__(self, api: KubeAPI) -> None:
        self._api = api
        self._cache: dict[str, tuple[float, CallerDecision]] = {}
        self._lock = threading.Lock()

    def check(self, bearer: str) -> CallerDecision:
        """Blocking (network): call from a worker thread."""
        if not bearer:
            return CallerDecision(401, "a bearer token is required")
        key = hashlib.sha256(bearer.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        decision = self._ask(bearer)
        with self._lock:
            if len(self._cache) >= CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
            self._cache[key] = (now + CACHE_SECONDS, decision)
        return decision

    def _ask(self, bearer: str) -> CallerDecision:
        review = self._api.post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": bearer},
            },
        )
        status = review.get("status") or {}
        if status.get("authenticated") is not True:
            return CallerDecision(401, "the caller's credentials are not valid")
        user = status.get("user") or {}
        sar = self._api.post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user.get("username", ""),
                    "uid": user.get("uid", ""),
                    "groups": user.get("groups") or [],
                    "extra": user.get("extra") or {},
                    "resourceAttributes": {
                        "group": "authentication.k8s.io",
                        "resource": "tokenreviews",
                        "verb": "create",
                    },
                },
            },
        )
        if (sar.get("status") or {}).get("allowed") is not True:
            return CallerDecision(403, "the caller may not create tokenreviews")
        return CallerDecision(200, "")
