"""Run the built OCI image for real under runc, the way a hardened Kubernetes pod would.

The layout in dist/image is unpacked once per test worker into a rootfs; each container gets
its own bundle (config.json) pointing at that rootfs, mounted read-only, running as 65532 with
no capabilities, noNewPrivileges, a tmpfs /tmp and /var/lib/portcullis, and host networking so
the issuer listens on a free 127.0.0.1 port. Containers are stopped by name (SIGTERM through
``runc kill``) and always deleted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
LAYOUT = REPO / "dist" / "image"
NONROOT = 65532

# The standard masked/read-only /proc paths of a container runtime's default spec.
_MASKED = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pbkdf2_hash(password: str, iterations: int = 100_000) -> str:
    """``$pbkdf2-sha256$<iterations>$<salt>$<hash>`` in passlib's adapted base64."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)

    def ab64(data: bytes) -> str:
        return base64.b64encode(data).decode().rstrip("=").replace("+", ".")

    return f"$pbkdf2-sha256${iterations}${ab64(salt)}${ab64(digest)}"


CLIENT_ID = "example-app"
CLIENT_SECRET = "ZXhhbXBsZS1hcHAtc2VjcmV0"
REDIRECT_URI = "http://127.0.0.1:5555/callback"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "password"
TLS_CERT = "/etc/portcullis/tls/tls.crt"
TLS_KEY = "/etc/portcullis/tls/tls.key"


def demo_config(
    web_port: int, telemetry_port: int, password_hash: str, *, tls: bool = False
) -> str:
    """A demo-like config: local passwords, sqlite in the container's writable volume.

    With ``tls`` the issuer listens for HTTPS with the certificate mounted at TLS_CERT/TLS_KEY.
    """
    scheme = "https" if tls else "http"
    listener = (
        f"https: 127.0.0.1:{web_port}\n  tlsCert: {TLS_CERT}\n  tlsKey: {TLS_KEY}"
        if tls
        else f"http: 127.0.0.1:{web_port}"
    )
    return f"""\
issuer: {scheme}://127.0.0.1:{web_port}/dex
storage:
  type: sqlite3
  config:
    file: /var/lib/portcullis/portcullis.db
web:
  {listener}
telemetry:
  http: 127.0.0.1:{telemetry_port}
logger:
  level: info
  format: json
oauth2:
  skipApprovalScreen: true
  passwordConnector: local
  grantTypes: [authorization_code, refresh_token, password]
signer:
  type: local
  config:
    algorithm: RS256
staticClients:
  - id: {CLIENT_ID}
    name: Example App
    secret: {CLIENT_SECRET}
    redirectURIs: ["{REDIRECT_URI}"]
enablePasswordDB: true
staticPasswords:
  - email: {ADMIN_EMAIL}
    hash: "{password_hash}"
    username: admin
    userID: 08a8684b-db88-4b73-90a9-3cd1661f5466
"""


@dataclass
class ImageConfig:
    user: str
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    workdir: str

    @classmethod
    def from_layout_config(cls, config: Mapping[str, Any]) -> ImageConfig:
        inner = config["config"]
        return cls(
            user=inner["User"],
            entrypoint=list(inner["Entrypoint"]),
            cmd=list(inner.get("Cmd") or []),
            env=list(inner.get("Env") or []),
            workdir=inner.get("WorkingDir") or "/",
        )


@dataclass
class Container:
    """One container run under runc (foreground runc process, so its exit code is ours)."""

    name: str
    state_root: Path
    bundle: Path
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    def runc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runc", "--root", str(self.state_root), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def pid(self) -> int:
        """Host PID of the container's init process (the frozen server)."""
        state = json.loads(self.runc("state", self.name).stdout)
        return int(state["pid"])

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait for exit, delete; returns the container's exit code."""
        if self.process.poll() is None:
            self.runc("kill", self.name, "TERM", check=False)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.runc("kill", self.name, "KILL", check=False)
                self.process.wait(timeout=10)
        self.runc("delete", "--force", self.name, check=False)
        return int(self.process.returncode)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self.runc("delete", "--force", self.name, check=False)
        return int(code)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")


StartFn = Callable[..., Container]
"""What the ``run_container`` fixture gives: start a container from keyword spec arguments."""


def runtime_spec(
    rootfs: Path,
    image: ImageConfig,
    *,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    extra_binds: Mapping[str, Path] | None = None,
    state_dir: Path | None = None,
) -> dict[str, Any]:
    """An OCI runtime config: read-only root, 65532, no capabilities, host network."""
    uid, gid = (int(part) for part in image.user.split(":"))
    merged = dict(item.split("=", 1) for item in image.env)
    merged.update(env or {})
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=16m"],
        },
        # The data volume: a host directory (owned by the image user) or a fresh tmpfs.
        {
            "destination": "/var/lib/portcullis",
            "type": "bind",
            "source": str(state_dir),
            "options": ["rbind", "rw", "nosuid", "nodev", "noexec"],
        }
        if state_dir is not None
        else {
            "destination": "/var/lib/portcullis",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "noexec", "mode=0700", f"uid={uid}", f"gid={gid}"],
        },
    ]
    if config_file is not None:
        mounts.append(
            {
                "destination": "/etc/portcullis/config.yaml",
                "type": "bind",
                "source": str(config_file),
                "options": ["bind", "ro"],
            }
        )
    for destination, source in (extra_binds or {}).items():
        mounts.append(
            {
                "destination": destination,
                "type": "bind",
                "source": str(source),
                "options": ["bind", "ro"],
            }
        )
    no_caps: dict[str, list[str]] = {
        "bounding": [],
        "effective": [],
        "inheritable": [],
        "permitted": [],
        "ambient": [],
    }
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(args) if args is not None else [*image.entrypoint, *image.cmd],
            "env": [f"{k}={v}" for k, v in sorted(merged.items())],
            "cwd": image.workdir,
            "capabilities": no_caps,
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "portcullis",
        "mounts": mounts,
        "linux": {
            # No network namespace: the issuer shares the host's loopback.
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": _MASKED,
            "readonlyPaths": _READONLY,
        },
    }


def start_container(
    workdir: Path,
    rootfs: Path,
    image: ImageConfig,
    **spec_args: Any,
) -> Container:
    name = f"portcullis-test-{uuid.uuid4().hex[:12]}"
    bundle = workdir / name
    bundle.mkdir(parents=True)
    state_root = workdir / "runc-state"
    state_root.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(runtime_spec(rootfs, image, **spec_args)))
    stdout_path, stderr_path = bundle / "stdout.log", bundle / "stderr.log"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            ["runc", "--root", str(state_root), "run", "--bundle", str(bundle), name],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    return Container(name, state_root, bundle, process, stdout_path, stderr_path)


def wait_ready(container: Container, url: str, timeout: float = 20.0) -> float:
    """Poll ``url`` until it answers 200; returns seconds waited. Fails fast if runc exits."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if container.process.poll() is not None:
            raise AssertionError(
                f"container exited {container.process.returncode} before ready:\n"
                f"{container.stderr()[-2000:]}"
            )
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{url} not ready after {timeout} s:\n{container.stderr()[-2000:]}")


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def environment_without_fips() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PORTCULLIS_FIPS"}


def openssl_files(rootfs: Path) -> tuple[list[str], dict[str, str]]:
    """The OpenSSL library files of an unpacked image: (regular files, symlink -> resolved
    path), both relative to the rootfs. The image ships one OpenSSL (the rootfs's Debian
    libssl3); the app's bundled copies are symlinks to it (images/portcullis/portcullis.spec)."""
    files: list[str] = []
    links: dict[str, str] = {}
    for path in sorted(rootfs.rglob("lib*.so*")):
        if not path.name.startswith(("libssl", "libcrypto")):
            continue
        relative = str(path.relative_to(rootfs))
        if path.is_symlink():
            target = (path.parent / os.readlink(path)).resolve()
            links[relative] = str(target.relative_to(rootfs.resolve()))
        elif path.is_file():
            files.append(relative)
    return files, links
