"""node-oidc-provider as the device-flow issuer (``tests/node/device-peer.mjs``) and a person who
completes (or aborts) the device login through its real HTML pages."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from tests.support.issuer import free_port

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "device-peer.mjs"

_FORM = re.compile(r"<form([^>]*)>(.*?)</form>", re.S | re.I)
_ATTR = re.compile(r'(\w[\w.-]*)="([^"]*)"')
_INPUT = re.compile(r"<input([^>]*)>", re.I)


@dataclass
class DevicePeer:
    proc: subprocess.Popen[str]
    issuer: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def polls(self, client: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["event"] == "poll" and e["client"] == client]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, self.events
            assert self.proc.poll() is None, "node-oidc-provider exited"
            time.sleep(0.05)


@contextmanager
def device_peer() -> Iterator[DevicePeer]:
    node = shutil.which("node")
    assert node, "node is missing: `make test` installs nodejs"
    assert (NODE_DIR / "node_modules" / "oidc-provider").is_dir(), (
        "oidc-provider is missing: run `make test` (npm ci in tests/node)"
    )
    port = free_port()
    proc = subprocess.Popen(
        [node, str(SCRIPT), str(port)],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("NODE_")},
    )
    peer = DevicePeer(proc, f"http://127.0.0.1:{port}")

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                peer.events.append(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    try:
        peer.wait_for(lambda: any(e["event"] == "ready" for e in peer.events), timeout=30)
        yield peer
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _forms(page: str, base: str) -> list[tuple[dict[str, str], dict[str, str]]]:
    """(form attributes with an absolute action, its named input values) for each form."""
    out = []
    for attrs, body in _FORM.findall(page):
        form = {k.lower(): html.unescape(v) for k, v in _ATTR.findall(attrs)}
        form["action"] = urljoin(base, form.get("action", ""))
        fields = {}
        for raw in _INPUT.findall(body):
            attributes = {k.lower(): html.unescape(v) for k, v in _ATTR.findall(raw)}
            if "name" in attributes:
                fields[attributes["name"]] = attributes.get("value", "")
        out.append((form, fields))
    return out


def complete_device_login(verification_uri_complete: str, *, abort: bool = False) -> str:
    """Confirm the user code, sign in and consent (or abort); the final page's text."""
    with httpx.Client(follow_redirects=True, timeout=15.0) as browser:
        page = browser.get(verification_uri_complete)
        for _ in range(10):
            assert page.status_code == 200, (page.status_code, page.text[:1500])
            forms = _forms(page.text, str(page.url))
            if not forms:
                return page.text
            form, fields = forms[0]
            if form.get("id") == "op.deviceInputForm":
                pass  # user_code is pre-filled from verification_uri_complete
            elif form.get("id") == "op.deviceConfirmForm":
                if abort:
                    fields["abort"] = "yes"
                    return browser.post(form["action"], data=fields).text
            elif fields.get("prompt") == "login":
                fields.update(login="device-user", password="any")
            elif "xsrf" in fields and "Submitting Callback" in page.text:
                pass  # the page a browser's script submits at once
            elif fields.get("prompt") != "consent":
                raise AssertionError(f"unexpected form {form}: {page.text[:1500]}")
            page = browser.post(form["action"], data=fields)
        raise AssertionError(f"device login did not finish: {page.text[:1500]}")
