"""From flags to tokens: reuse the cache, refresh before expiry, log in only when needed.

The decision is made while holding the cache entry's lock (see :mod:`cache`), so concurrent
kubectl processes end up with one login or one refresh between them. A cache hit makes no
network request at all (not even discovery): kubectl runs the plugin for every invocation, and
a laptop on a train should still get its cached credential.
"""

from __future__ import annotations

import getpass
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from kubectl_portcullis.cache import DEFAULT_DIR, CachedTokens, TokenCache, cache_key
from kubectl_portcullis.errors import OAuthError, PluginError
from kubectl_portcullis.execcred import rfc3339
from kubectl_portcullis.http import Http
from kubectl_portcullis.jwt import decode_claims, expiry
from kubectl_portcullis.loopback import DEFAULT_LISTEN_ADDRESSES
from kubectl_portcullis.oauth import Client, Provider, Session, Tokens

# Requested when no --scope is given: who the user is (email, profile) and what they belong to
# (groups), which is what kube-apiserver's username/groups claims read.
DEFAULT_SCOPES = ("email", "profile", "groups")
# A refresh token is the point of a cached login; Dex, Portcullis and node-oidc-provider all
# issue one only for this scope.
ALWAYS_SCOPES = ("openid", "offline_access")
MAX_REFRESH_MARGIN = 30  # seconds before ``exp`` at which a cached ID token counts as expired
GRANT_TYPES = ("auto", "authcode", "device", "device-code", "password")


@dataclass
class Options:
    """Everything ``get-token`` (and ``setup``/``logout``) need, already validated by the CLI."""

    issuer: str
    client_id: str
    client_secret: str | None = None
    scopes: Sequence[str] = ()
    grant_type: str = "auto"
    listen_addresses: Sequence[str] = DEFAULT_LISTEN_ADDRESSES
    redirect_host: str = "127.0.0.1"
    open_browser: bool = True
    authentication_timeout: float = 180.0
    pkce: bool = True
    ca_files: Sequence[str] = ()
    ca_data: Sequence[str] = ()
    insecure: bool = False
    token_cache_dir: str = DEFAULT_DIR
    username: str | None = None
    password: str | None = None
    force_refresh: bool = False
    auth_request_params: dict[str, str] = field(default_factory=dict)
    interactive: bool = True
    verbosity: int = 0

    @property
    def requested_scopes(self) -> list[str]:
        wanted = [*ALWAYS_SCOPES, *(self.scopes or DEFAULT_SCOPES)]
        return list(dict.fromkeys(s for s in wanted if s))

    def cache(self) -> TokenCache:
        key = cache_key(self.issuer, self.client_id, self.requested_scopes)
        return TokenCache(self.token_cache_dir, key)

    def http(self) -> Http:
        return Http(self.ca_files, self.ca_data, insecure=self.insecure)


@dataclass(frozen=True)
class Credential:
    id_token: str
    expires_at: int
    source: str  # "cache", "refresh" or "login": for messages and tests, never the token


def refresh_margin(claims: dict[str, object]) -> int:
    """Seconds before expiry to refresh: 30s, or a tenth of a short token's lifetime."""
    exp, iat = claims.get("exp"), claims.get("iat")
    if isinstance(exp, int | float) and isinstance(iat, int | float) and exp > iat:
        return min(MAX_REFRESH_MARGIN, int(exp - iat) // 10)
    return MAX_REFRESH_MARGIN


def _still_valid(id_token: str, now: float) -> int | None:
    """The token's ``exp`` when it is not near expiry, else None (junk counts as expired)."""
    try:
        claims = decode_claims(id_token)
        exp = expiry(claims)
    except PluginError:
        return None
    return exp if exp - refresh_margin(claims) > now else None


class Login:
    """One ``get-token`` run: the cache, then refresh, then a new login."""

    def __init__(
        self,
        options: Options,
        *,
        stderr: TextIO | None = None,
        clock: Callable[[], float] = time.time,
        prompt: Callable[[str], str] | None = None,
        prompt_secret: Callable[[str], str] | None = None,
    ) -> None:
        self.options = options
        self.stderr = stderr or sys.stderr
        self.clock = clock
        self._prompt = prompt or self._ask
        self._prompt_secret = prompt_secret or (
            lambda text: getpass.getpass(text, stream=self.stderr)
        )
        self._session: Session | None = None

    def _ask(self, text: str) -> str:
        # The prompt goes to stderr: stdout carries the ExecCredential.
        print(text, end="", file=self.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            raise PluginError("no input on stdin for the prompt")
        return line.rstrip("\n")

    def _say(self, message: str) -> None:
        print(message, file=self.stderr, flush=True)

    def _debug(self, message: str) -> None:
        """``-v1`` and up: what the plugin decided and why (never a token's value)."""
        if self.options.verbosity > 0:
            self._say(f"kubectl-portcullis: {message}")

    def session(self) -> Session:
        if self._session is None:
            options = self.options
            http = options.http()
            provider = Provider.discover(http, options.issuer)
            client = Client(options.client_id, options.client_secret)
            self._session = Session(
                http, provider, client, options.requested_scopes, stderr=self.stderr
            )
        return self._session

    def credential(self) -> Credential:
        cache = self.options.cache()
        with cache.locked():
            cached = cache.load()
            self._debug(f"token cache {cache.path}: {'hit' if cached else 'empty'}")
            if cached is not None and not self.options.force_refresh:
                exp = _still_valid(cached.id_token, self.clock())
                if exp is not None:
                    self._debug(f"cached ID token valid until {rfc3339(exp)}")
                    return Credential(cached.id_token, exp, "cache")
            if cached is not None and cached.refresh_token:
                self._debug("refreshing the ID token with the cached refresh token")
                try:
                    tokens = self.session().refresh(cached.refresh_token)
                except OAuthError as exc:
                    # Expired, revoked or rotated away: a new login is the only way forward.
                    self._say(f"The cached login could not be refreshed ({exc.error}); logging in.")
                    cache.clear()
                else:
                    return self._keep(cache, tokens, "refresh")
            return self._keep(cache, self.login(), "login")

    def _keep(self, cache: TokenCache, tokens: Tokens, source: str) -> Credential:
        exp = expiry(decode_claims(tokens.id_token))
        cache.store(CachedTokens(tokens.id_token, tokens.refresh_token))
        return Credential(tokens.id_token, exp, source)

    def login(self) -> Tokens:
        options = self.options
        grant = options.grant_type
        if grant == "auto":
            grant = "password" if options.username else "authcode"
        self._debug(f"logging in with the {grant} grant")
        session = self.session()
        if grant in ("device", "device-code"):
            return session.device(open_browser=options.open_browser)
        if grant == "password":
            username = options.username
            password = options.password
            if (username is None or password is None) and not options.interactive:
                raise PluginError(
                    "--grant-type password needs --username and --password when kubectl "
                    "runs the plugin non-interactively"
                )
            if username is None:
                username = self._prompt("Username: ")
            if password is None:
                password = self._prompt_secret("Password: ")
            return session.password(username, password)
        if grant == "authcode":
            return session.authorization_code(
                options.listen_addresses,
                options.redirect_host,
                open_browser=options.open_browser,
                timeout=options.authentication_timeout,
                pkce=options.pkce,
                extra_params=options.auth_request_params,
            )
        raise PluginError(f"--grant-type {grant!r} is not one of {', '.join(GRANT_TYPES)}")

    def logout(self) -> tuple[bool, bool]:
        """Clear the cache entry and revoke its refresh token: (had an entry, revoked)."""
        cache = self.options.cache()
        with cache.locked():
            cached = cache.load()
            had_entry = cache.clear()
            if cached is None or not cached.refresh_token:
                return had_entry, False
            # The entry is gone before the network call, so a failed revocation still logs out
            # locally; the error is reported and the exit code says it.
            return had_entry, self.session().revoke(cached.refresh_token)
