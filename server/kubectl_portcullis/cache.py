"""The token cache: one file per issuer + client + scopes, guarded by a file lock.

Layout: ``<dir>/<sha256>.json`` (mode 0600) in a directory of mode 0700 (default
``~/.kube/cache/portcullis``), and a ``<sha256>.lock`` beside it. The key hashes the issuer
URL, the client id and the sorted scopes, so two kubeconfig users that differ in any of them
never share tokens, and the file name reveals none of them.

kubectl runs the exec plugin once per process, and scripts often start several kubectl processes
at once; each would otherwise open its own browser or spend the same refresh token (which the
issuer's rotation would then treat as a replay and revoke the whole family). So a plugin holds
an exclusive ``flock`` on the entry's lock file from reading the cache until it has written the
new tokens: the others wait, then find fresh tokens and make no request at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubectl_portcullis.errors import PluginError

FORMAT = 1
DEFAULT_DIR = "~/.kube/cache/portcullis"


@dataclass(frozen=True)
class CachedTokens:
    id_token: str
    refresh_token: str | None


def cache_key(issuer: str, client_id: str, scopes: Sequence[str]) -> str:
    canonical = "\0".join([issuer, client_id, " ".join(sorted(set(scopes)))])
    return hashlib.sha256(canonical.encode()).hexdigest()


class TokenCache:
    """Reads and writes one cache entry; use :meth:`locked` around read-decide-write."""

    def __init__(self, directory: str | os.PathLike[str], key: str) -> None:
        self.directory = Path(directory).expanduser()
        self.key = key

    @property
    def path(self) -> Path:
        return self.directory / f"{self.key}.json"

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.key}.lock"

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.directory.stat()
            # Tighten a directory we own that someone created too open (e.g. with umask 022
            # before this plugin existed); refuse one we do not own rather than trust it.
            if info.st_uid != os.getuid():
                raise PluginError(f"token cache {self.directory} is owned by another user")
            if stat.S_IMODE(info.st_mode) & 0o077:
                self.directory.chmod(0o700)
        except OSError as exc:
            raise PluginError(f"token cache {self.directory}: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's exclusive lock (blocking until other plugin processes are done)."""
        self._ensure_directory()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise PluginError(f"token cache lock {self.lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def load(self) -> CachedTokens | None:
        """The cached tokens, or None when there are none (or the file is unreadable junk)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PluginError(f"token cache {self.path}: {exc.strerror}") from None
        try:
            document: Any = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            return None
        id_token = document.get("id_token")
        refresh_token = document.get("refresh_token")
        if not isinstance(id_token, str):
            return None
        return CachedTokens(id_token, refresh_token if isinstance(refresh_token, str) else None)

    def store(self, tokens: CachedTokens) -> None:
        """Atomically replace the entry with a 0600 file (never a partly written one)."""
        self._ensure_directory()
        document = {
            "format": FORMAT,
            "id_token": tokens.id_token,
            "refresh_token": tokens.refresh_token,
        }
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.key}.", dir=self.directory)
        except OSError as exc:
            raise PluginError(f"token cache {self.directory}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                os.fchmod(out.fileno(), 0o600)
                json.dump(document, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise PluginError(f"token cache {self.path}: {exc.strerror}") from None

    def clear(self) -> bool:
        """Remove the entry; True when there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise PluginError(f"token cache {self.path}: {exc.strerror}") from None
        return True
