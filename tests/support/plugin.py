"""Run ``kubectl-portcullis`` as a separate process, as kubectl does, and drive its login.

The plugin runs as ``python -m kubectl_portcullis`` from this repository's ``server/`` (or as
the frozen binary when a test passes one), with its own HOME so nothing touches the real
``~/.kube``. Its stderr is read line by line on a thread: the login URL it prints is what the
test's "browser" (the issuer harness's :class:`Browser`, walking the real HTML forms) opens,
and the final redirect is delivered to the plugin's loopback listener like a browser would.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.issuer import Browser, Issuer

REPO_ROOT = Path(__file__).resolve().parents[2]
# What the krew manifest tests pass explicitly: this checkout may have no source repository.
KREW_URI_TEMPLATE = "https://portcullis.example/releases/download/v{version}/{file}"
KREW_HOMEPAGE = "https://portcullis.example"

URL_LINE = re.compile(r"^(https?://\S+)$")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class PluginProcess:
    """A running plugin: its stderr lines arrive on ``lines`` as they are written."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    stderr_lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    stdout: str = ""

    def start_reader(self) -> None:
        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr_lines.append(line.rstrip("\n"))
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern.pattern}: {self.stderr_lines}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"plugin ended without {pattern.pattern}: {self.stderr_lines}")
            match = pattern.search(line)
            if match:
                return match

    def login_url(self, timeout: float = 30.0) -> str:
        return self.wait_for_line(URL_LINE, timeout).group(1)

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        try:
            self.stdout = self.proc.stdout.read()
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        stderr = "\n".join(self.stderr_lines)
        assert TRACEBACK not in stderr, stderr
        return code, self.stdout, stderr


@dataclass
class Plugin:
    """How to start the plugin: the command and a private HOME (its default cache lives there)."""

    home: Path
    command: Sequence[str] = (sys.executable, "-m", "kubectl_portcullis")

    @property
    def cache_dir(self) -> Path:
        return self.home / ".kube" / "cache" / "portcullis"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KUBERNETES_", "PORTCULLIS_")) and k not in ("BROWSER",)
        }
        env["HOME"] = str(self.home)
        env["PYTHONPATH"] = str(REPO_ROOT / "server")
        env.update(extra or {})
        return env

    def start(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> PluginProcess:
        proc = subprocess.Popen(
            [*self.command, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(env),
        )
        running = PluginProcess(proc)
        running.start_reader()
        return running

    def run(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> tuple[int, str, str]:
        return self.start(args, env).finish(timeout)


def complete_login(issuer: Issuer, url: str, **login: Any) -> httpx.Response:
    """The person in the browser: issuer's forms, then the redirect to the plugin's listener."""
    with Browser(issuer) as browser:
        location = browser.authorize_code(url, **login)
    assert location.startswith("http://127.0.0.1:"), location
    return httpx.get(location, timeout=15.0)


def exec_credential(stdout: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(stdout)
    return document


def token_requests(issuer: Issuer) -> float:
    """How many requests the issuer has answered on /token (its Prometheus counter)."""
    return _requests(issuer, lambda route, method: route.endswith("/token") and method == "POST")


def all_requests(issuer: Issuer) -> float:
    return _requests(issuer, lambda route, method: True)


def _requests(issuer: Issuer, wanted: Any) -> float:
    text = httpx.get(issuer.telemetry + "/metrics", timeout=10.0).text
    total = 0.0
    for match in re.finditer(
        r"^portcullis_http_requests_total\{([^}]*)\} ([0-9.e+]+)$", text, re.M
    ):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if wanted(labels.get("route", ""), labels.get("method", "")):
            total += float(match.group(2))
    return total
