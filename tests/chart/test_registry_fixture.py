"""The shared registry helper really enforces auth and really stops."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest

from tests.support.registry import Registry


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_registry_refuses_anonymous_and_wrong_password(registry: Registry) -> None:
    assert _get(f"{registry.url}/v2/") == 401
    assert _get(f"{registry.url}/v2/", (registry.username, "wrong")) == 401
    assert _get(f"{registry.url}/v2/", (registry.username, registry.password)) == 200
    assert _get(f"{registry.url}/v2/", ("reader", "read-only")) == 200


def test_registry_auth_file_holds_first_user(registry: Registry) -> None:
    doc = json.loads(registry.auth_file.read_text())
    token = doc["auths"][registry.host]["auth"]
    assert base64.b64decode(token).decode() == "portcullis:chart-test-password"
    assert registry.host.startswith("127.0.0.1:")


def test_registry_stop_ends_the_process(registry: Registry) -> None:
    registry.stop()
    assert registry.process.poll() is not None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{registry.url}/v2/", timeout=2)
