"""Helpers for fault tests with real processes (tests/faults): the worker processes of a
`portcullis serve --workers N`, their memory, and a refresh-token client that retries the way a
careful client does (same token again after a dropped connection, inside ``reuseInterval``).

Why a retrying client: when a worker dies mid-request the rotation may have committed while the
answer was lost. The issuer's contract (oidc/refresh.py) is that presenting the previous secret
again inside ``reuseInterval`` returns the same successor, so a client that retries loses
nothing; the tests hold the issuer to that contract.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.issuer import ADMIN_EMAIL, ADMIN_PASSWORD, Issuer


def children_of(pid: int) -> list[int]:
    """Direct child PIDs (the workers of a supervisor), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return sorted(found)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def password_grant(
    http: httpx.Client, issuer: Issuer, scope: str = "openid offline_access"
) -> dict[str, str]:
    response = http.post(
        issuer.url("/token"),
        data={
            "grant_type": "password",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": scope,
        },
        auth=issuer.app_auth(),
    )
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    issuer.remember(body.get("refresh_token"), body.get("id_token"), body.get("access_token"))
    return body


@dataclass
class Family:
    """One refresh-token session as a client holds it."""

    latest: str
    issued: list[str] = field(default_factory=list)
    transport_errors: int = 0
    failures: list[str] = field(default_factory=list)

    def refresh(self, http: httpx.Client, issuer: Issuer, retry_for: float = 2.5) -> bool:
        """One rotation; on a dropped connection retry the same secret until ``retry_for``
        seconds have passed (inside the server's reuseInterval). False when it never got an
        answer (the caller still holds ``latest``)."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                response = http.post(
                    issuer.url("/token"),
                    data={"grant_type": "refresh_token", "refresh_token": self.latest},
                    auth=issuer.app_auth(),
                )
            except httpx.TransportError:
                self.transport_errors += 1
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
                continue
            if response.status_code != 200:
                self.failures.append(f"{response.status_code} {response.text[:200]}")
                return False
            token = response.json()["refresh_token"]
            issuer.remember(token)
            self.issued.append(token)
            self.latest = token
            return True
