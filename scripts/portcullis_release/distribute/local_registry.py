"""A throwaway local OCI registry: Debian's ``docker-registry`` 2.8 with htpasswd (bcrypt) auth.

Two users: ``make release`` without ``REGISTRY`` starts one for a self-contained rehearsal of the
whole release (push, pull by digest, verify) that stops when the command ends, and the chart,
image and signature tests start one to prove that artefacts survive a push and a pull-by-digest
through an authenticated registry and that anonymous access is refused (a fake would only prove
that we agree with ourselves). It lives in the release package because release code never imports
``tests/``; ``tests/support/registry.py`` reuses it.

Usage::

    from portcullis_release.distribute.local_registry import running_registry, start_registry

    reg = start_registry(workdir, {"alice": "s3cret"})
    try:
        reg.host        # "127.0.0.1:PORT"
        reg.url         # "http://127.0.0.1:PORT"
        reg.auth_file   # docker config JSON with alice's credentials (for Helm, skopeo, cosign)
        reg.username, reg.password
    finally:
        reg.stop()

    with running_registry(workdir, {"alice": "s3cret", "bob": "x"}) as reg:
        ...

Every instance keeps its state under ``workdir/registry/`` (storage, htpasswd, config, log),
listens on a free 127.0.0.1 port and is stopped by its own PID, so it is safe under pytest-xdist.
The registry binary is installed by ``make test-system-deps`` (TEST_APT_PACKAGES).
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

__all__ = [
    "REGISTRY_BINARY",
    "LocalRegistry",
    "LocalRegistryError",
    "running_registry",
    "start_registry",
]

REGISTRY_BINARY = "docker-registry"
# Low bcrypt cost on purpose: the registry checks the hash on every request, and cost 12 would add
# ~0.25 s to each blob upload. A loopback registry that lives for one command or one test guards
# nothing worth a real work factor.
_BCRYPT_ROUNDS = 5
_START_TIMEOUT_S = 15.0
_PORT_ATTEMPTS = 5


class LocalRegistryError(RuntimeError):
    """The local registry could not be started (message includes the tail of its log)."""


@dataclass
class LocalRegistry:
    """A running registry process and the credentials to reach it."""

    host: str
    username: str
    password: str
    auth_file: Path
    root: Path
    users: dict[str, str]
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        """Base URL (plain HTTP on loopback)."""
        return f"http://{self.host}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_file(self) -> Path:
        return self.root / "registry.log"

    def docker_config(self, username: str | None = None) -> dict[str, object]:
        """A docker config JSON document for ``username`` (default: the first user).

        This is the same document a Kubernetes ``kubernetes.io/dockerconfigjson`` Secret holds.
        """
        user = username or self.username
        token = base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()
        return {"auths": {self.host: {"auth": token}}}

    def stop(self) -> None:
        """Stop the registry by PID (SIGTERM, then SIGKILL after 10 s). Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_htpasswd(path: Path, users: Mapping[str, str]) -> None:
    lines = []
    for user, password in users.items():
        if ":" in user or not user:
            raise ValueError(f"registry user name {user!r} must be non-empty and contain no ':'")
        digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=_BCRYPT_ROUNDS))
        lines.append(f"{user}:{digest.decode()}\n")
    path.write_text("".join(lines))
    path.chmod(0o600)


def _write_config(path: Path, storage: Path, htpasswd: Path, port: int) -> None:
    # JSON is valid YAML, and avoids a YAML writer for a handful of keys.
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "auth": {"htpasswd": {"realm": "portcullis-test", "path": str(htpasswd)}},
    }
    path.write_text(json.dumps(config, indent=2))


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(process: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """True once /v2/ answers 401 (auth is on); False if the process died first."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return True
            raise LocalRegistryError(
                f"registry answered /v2/ with {exc.code}, expected 401"
            ) from exc
        except (urllib.error.URLError, OSError):
            pass
        else:
            raise LocalRegistryError(
                "registry allowed anonymous access to /v2/; auth is not active"
            )
        time.sleep(0.05)
    return False


def start_registry(workdir: Path, users: dict[str, str]) -> LocalRegistry:
    """Start a registry whose state lives in ``workdir/registry`` and return it once it serves.

    ``users`` maps user names to passwords (at least one); the first one is written to
    ``auth_file`` and exposed as ``username``/``password``. Raises ``LocalRegistryError`` if the
    binary is missing or the process does not come up.
    """
    if not users:
        raise ValueError("start_registry needs at least one user")
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise LocalRegistryError(
            f"{REGISTRY_BINARY} not found: run `make test-system-deps` (Debian docker-registry)"
        )
    root = Path(workdir) / "registry"
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    htpasswd = root / "htpasswd"
    _write_htpasswd(htpasswd, users)
    config = root / "config.yml"
    log = root / "registry.log"

    # The free port is only free when we look; another worker may grab it before the registry
    # binds, in which case the registry exits and we try a new port.
    for _ in range(_PORT_ATTEMPTS):
        port = _free_port()
        _write_config(config, storage, htpasswd, port)
        with log.open("ab") as log_fh:
            process = subprocess.Popen(
                [binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=root,
            )
        try:
            ready = _wait_ready(process, port, time.monotonic() + _START_TIMEOUT_S)
        except BaseException:
            process.kill()
            process.wait()
            raise
        if ready:
            username, password = next(iter(users.items()))
            registry = LocalRegistry(
                host=f"127.0.0.1:{port}",
                username=username,
                password=password,
                auth_file=root / "auth.json",
                root=root,
                users=dict(users),
                process=process,
            )
            registry.auth_file.write_text(json.dumps(registry.docker_config()))
            registry.auth_file.chmod(0o600)
            return registry
        if process.poll() is None:
            process.kill()
        process.wait()
    raise LocalRegistryError(f"docker-registry did not start; last log lines:\n{_log_tail(log)}")


@contextlib.contextmanager
def running_registry(workdir: Path, users: dict[str, str]) -> Iterator[LocalRegistry]:
    """Context manager form of :func:`start_registry`; stops the registry on exit."""
    registry = start_registry(workdir, users)
    try:
        yield registry
    finally:
        registry.stop()
