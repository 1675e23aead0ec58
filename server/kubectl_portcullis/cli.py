"""``kubectl portcullis get-token | setup | logout`` (also ``kubectl-portcullis ...``).

kubelogin's ``get-token`` flags are accepted where they mean the same thing, so a kubeconfig
written for kubelogin moves over by renaming the command: ``kubectl oidc-login get-token
--oidc-issuer-url=... --oidc-client-id=...`` becomes ``kubectl portcullis get-token ...`` (a
leading ``oidc-login`` is skipped too). kubelogin flags with no meaning here (keyring storage,
access tokens, TLS renegotiation, keyboard code entry) are refused by name instead of ignored.

Output discipline: stdout carries only the ExecCredential (``get-token``) or the report
(``setup``); prompts, the login URL and errors go to stderr; no token, code or secret is ever
written to stderr. Errors exit 1 with one line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from kubectl_portcullis import __version__
from kubectl_portcullis.cache import DEFAULT_DIR
from kubectl_portcullis.errors import PluginError
from kubectl_portcullis.execcred import V1, exec_credential, exec_info
from kubectl_portcullis.jwt import decode_claims
from kubectl_portcullis.login import GRANT_TYPES, Login, Options
from kubectl_portcullis.loopback import DEFAULT_LISTEN_ADDRESSES, split_address
from kubectl_portcullis.oauth import Provider

PROG = "kubectl portcullis"
# kubelogin flags refused by name: they would change behaviour in ways this plugin does not offer.
UNSUPPORTED = {
    "--oidc-use-access-token": "the plugin sends the ID token, which kube-apiserver verifies",
    "--token-cache-storage": "the token cache is always the file cache (--token-cache-dir)",
    "--tls-renegotiation-once": "TLS renegotiation is not supported",
    "--tls-renegotiation-freely": "TLS renegotiation is not supported",
    "--local-server-cert": "the loopback listener is plain HTTP on 127.0.0.1 (RFC 8252 §7.3)",
    "--local-server-key": "the loopback listener is plain HTTP on 127.0.0.1 (RFC 8252 §7.3)",
    "--browser-command": "the browser is opened with the system default (or --skip-open-browser)",
    "--oidc-redirect-url": "the redirect URI is always the loopback listener's",
    "--oidc-redirect-url-authcode-keyboard": "use --grant-type device without a browser",
    "--open-url-after-authentication": "the listener shows its own page after the login",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("issuer and client")
    group.add_argument(
        "--issuer",
        "--oidc-issuer-url",
        dest="issuer",
        metavar="URL",
        help="the issuer URL (exactly as in its discovery document)",
    )
    group.add_argument(
        "--client-id",
        "--oidc-client-id",
        dest="client_id",
        metavar="ID",
        help="the OAuth client id (e.g. kubectl)",
    )
    group.add_argument(
        "--client-secret",
        "--oidc-client-secret",
        dest="client_secret",
        metavar="SECRET",
        help="the client secret, for confidential clients only",
    )
    group.add_argument(
        "--scope",
        "--oidc-extra-scope",
        dest="scopes",
        action="append",
        default=[],
        metavar="SCOPE",
        help="scope to request, repeatable or comma-separated (default: email profile groups; "
        "openid and offline_access are always requested)",
    )
    group.add_argument(
        "--certificate-authority",
        dest="ca_files",
        action="append",
        default=[],
        metavar="FILE",
        help="PEM file of CAs trusted for the issuer, in addition to the system's (repeatable)",
    )
    group.add_argument(
        "--certificate-authority-data",
        dest="ca_data",
        action="append",
        default=[],
        metavar="BASE64",
        help="base64 of PEM CAs trusted for the issuer (repeatable)",
    )
    group.add_argument(
        "--insecure-skip-tls-verify",
        action="store_true",
        help="[SECURITY RISK] do not check the issuer's TLS certificate",
    )
    group.add_argument(
        "--token-cache-dir",
        default=DEFAULT_DIR,
        metavar="DIR",
        help=f"directory of the token cache (default {DEFAULT_DIR})",
    )
    group.add_argument(
        "-v",
        "--v",
        dest="verbosity",
        type=int,
        default=0,
        metavar="N",
        help="log the plugin's decisions to stderr (cache, refresh, grant); never a token",
    )


def _login_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("login")
    group.add_argument(
        "--grant-type",
        default="auto",
        choices=GRANT_TYPES,
        help="auto (password when --username is given, else authcode), authcode (browser), "
        "device (RFC 8628, for machines without a browser) or password",
    )
    group.add_argument(
        "--listen-address",
        dest="listen_addresses",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="[authcode] loopback address for the redirect, tried in order "
        f"(default {', '.join(DEFAULT_LISTEN_ADDRESSES)})",
    )
    group.add_argument(
        "--oidc-redirect-url-hostname",
        dest="redirect_host",
        default="127.0.0.1",
        metavar="HOST",
        help="[authcode] host name in the redirect URI (default 127.0.0.1; use localhost if "
        "that is what the client has registered)",
    )
    group.add_argument(
        "--skip-open-browser",
        action="store_true",
        help="[authcode, device] print the URL instead of opening the browser",
    )
    group.add_argument(
        "--authentication-timeout-sec",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="[authcode] how long to wait for the browser login (default 180)",
    )
    group.add_argument(
        "--oidc-pkce-method",
        choices=("auto", "S256", "no"),
        default="auto",
        help="[authcode] PKCE: S256 unless 'no' (default auto = S256)",
    )
    group.add_argument(
        "--oidc-auth-request-extra-params",
        dest="extra_params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="[authcode] extra authorization request parameters",
    )
    group.add_argument("--username", help="[password] the user name (prompted if missing)")
    group.add_argument("--password", help="[password] the password (prompted if missing)")
    group.add_argument(
        "--force-refresh",
        action="store_true",
        help="refresh (or log in) even when the cached ID token is still valid",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Log in to a Portcullis (or any OpenID Connect) issuer for kubectl.",
        epilog="A kubelogin kubeconfig works after renaming `oidc-login` to `portcullis`.",
    )
    parser.add_argument("--version", action="version", version=f"kubectl-portcullis {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    get_token = commands.add_parser(
        "get-token",
        help="print an ExecCredential for kubectl (the exec credential plugin)",
        description="Print a client.authentication.k8s.io ExecCredential holding the ID token; "
        "logs in (browser, device or password grant) or refreshes only when needed.",
    )
    _connection_flags(get_token)
    _login_flags(get_token)
    setup = commands.add_parser(
        "setup",
        help="check the issuer, log in once and print the kubectl and RBAC commands",
        description="Check discovery, log in once, show the ID token's claims and print the "
        "`kubectl config set-credentials` and RBAC commands for this login.",
    )
    _connection_flags(setup)
    _login_flags(setup)
    setup.add_argument(
        "--user-name",
        default="oidc",
        metavar="NAME",
        help="kubeconfig user entry the printed command creates (default oidc)",
    )
    setup.add_argument(
        "--username-claim",
        default="email",
        metavar="CLAIM",
        help="kube-apiserver's --oidc-username-claim, for the RBAC commands (default email)",
    )
    setup.add_argument(
        "--username-prefix",
        default="oidc:",
        metavar="PREFIX",
        help="kube-apiserver's --oidc-username-prefix (default oidc:; '-' for none)",
    )
    setup.add_argument(
        "--groups-prefix",
        default="oidc:",
        metavar="PREFIX",
        help="kube-apiserver's --oidc-groups-prefix (default oidc:)",
    )
    logout = commands.add_parser(
        "logout",
        help="forget the cached tokens and revoke the refresh token at the issuer",
        description="Remove the cache entry for this issuer/client/scopes and revoke its "
        "refresh token at the issuer's revocation endpoint (RFC 7009).",
    )
    _connection_flags(logout)
    return parser


def _refuse_unsupported(argv: Sequence[str]) -> None:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in UNSUPPORTED:
            raise PluginError(f"{name} is not supported: {UNSUPPORTED[name]}")
        if name == "--grant-type" and arg.endswith("=authcode-keyboard"):
            raise PluginError(
                "--grant-type authcode-keyboard is not supported: use --grant-type device"
            )


def _split_scopes(values: Sequence[str]) -> list[str]:
    # kubelogin's `strings` flags accept comma-separated lists; scopes never contain commas.
    return [s.strip() for value in values for s in value.replace(",", " ").split() if s.strip()]


def _extra_params(values: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for value in values:
        for pair in value.split(","):
            key, sep, val = pair.partition("=")
            if not sep or not key:
                raise PluginError(f"--oidc-auth-request-extra-params {pair!r} is not KEY=VALUE")
            params[key] = val
    return params


def _options(args: argparse.Namespace, *, interactive: bool) -> Options:
    if not args.issuer:
        raise PluginError("--issuer (or --oidc-issuer-url) is required")
    if not args.client_id:
        raise PluginError("--client-id (or --oidc-client-id) is required")
    options = Options(
        issuer=args.issuer,
        client_id=args.client_id,
        client_secret=args.client_secret or None,
        scopes=_split_scopes(args.scopes),
        ca_files=list(args.ca_files),
        ca_data=list(args.ca_data),
        insecure=args.insecure_skip_tls_verify,
        token_cache_dir=args.token_cache_dir,
        interactive=interactive,
        verbosity=args.verbosity,
    )
    if hasattr(args, "grant_type"):
        grant = args.grant_type
        if grant == "auto" and args.username:
            grant = "password"
        options.grant_type = grant
        options.listen_addresses = _split_scopes(args.listen_addresses) or list(
            DEFAULT_LISTEN_ADDRESSES
        )
        for address in options.listen_addresses:
            split_address(address)  # a typo fails before any network request
        options.redirect_host = args.redirect_host
        options.open_browser = not args.skip_open_browser
        if args.authentication_timeout_sec <= 0:
            raise PluginError("--authentication-timeout-sec must be positive")
        options.authentication_timeout = args.authentication_timeout_sec
        options.pkce = args.oidc_pkce_method != "no"
        options.auth_request_params = _extra_params(args.extra_params)
        options.username = args.username
        options.password = args.password
        options.force_refresh = args.force_refresh
    return options


def _get_token(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    info = exec_info(os.environ.get("KUBERNETES_EXEC_INFO"), stdin_is_tty=sys.stdin.isatty())
    options = _options(args, interactive=info.interactive)
    credential = Login(options, stderr=stderr).credential()
    document = exec_credential(info.api_version, credential.id_token, credential.expires_at)
    stdout.write(json.dumps(document) + "\n")
    stdout.flush()
    return 0


def _exec_args(args: argparse.Namespace, options: Options) -> list[str]:
    """The get-token flags that reproduce this login, for the kubeconfig."""
    flags = [f"--issuer={options.issuer}", f"--client-id={options.client_id}"]
    if options.client_secret:
        flags.append(f"--client-secret={options.client_secret}")
    flags += [f"--scope={scope}" for scope in _split_scopes(args.scopes)]
    flags += [f"--certificate-authority={os.path.abspath(f)}" for f in options.ca_files]
    flags += [f"--certificate-authority-data={d}" for d in options.ca_data]
    if options.insecure:
        flags.append("--insecure-skip-tls-verify")
    if options.grant_type != "auto":
        flags.append(f"--grant-type={options.grant_type}")
    # The redirect URI must stay the one the client has registered.
    if list(options.listen_addresses) != list(DEFAULT_LISTEN_ADDRESSES):
        flags += [f"--listen-address={address}" for address in options.listen_addresses]
    if options.redirect_host != "127.0.0.1":
        flags.append(f"--oidc-redirect-url-hostname={options.redirect_host}")
    if args.token_cache_dir != DEFAULT_DIR:
        flags.append(f"--token-cache-dir={args.token_cache_dir}")
    return flags


def _setup(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    options = _options(args, interactive=sys.stdin.isatty())
    provider = Provider.discover(options.http(), options.issuer)

    def say(text: str = "") -> None:
        print(text, file=stdout, flush=True)

    say(f"## 1. Discovery: {provider.issuer}/.well-known/openid-configuration is valid")
    say(f"  authorization endpoint: {provider.authorization_endpoint}")
    say(f"  token endpoint:         {provider.token_endpoint}")
    say(f"  device endpoint:        {provider.device_authorization_endpoint or '(none)'}")
    say(f"  revocation endpoint:    {provider.revocation_endpoint or '(none)'}")
    say(f"  grant types:            {', '.join(provider.grant_types)}")
    credential = Login(options, stderr=stderr).credential()
    claims: dict[str, Any] = decode_claims(credential.id_token)
    say()
    say(f"## 2. Logged in ({credential.source}); the ID token's claims (decoded, not verified):")
    say(json.dumps(claims, indent=2, sort_keys=True))
    command = [
        "kubectl",
        "config",
        "set-credentials",
        args.user_name,
        f"--exec-api-version={V1}",
        "--exec-command=kubectl-portcullis",
        "--exec-arg=get-token",
        *(f"--exec-arg={flag}" for flag in _exec_args(args, options)),
        "--exec-interactive-mode=IfAvailable",
    ]
    say()
    say("## 3. Add this login to your kubeconfig:")
    say(shlex.join(command))
    say(f"kubectl config set-context --current --user={shlex.quote(args.user_name)}")
    say()
    say("## 4. Let the cluster authorize it (a cluster administrator runs these), e.g. read-only;")
    say(
        f"#    names as kube-apiserver maps them with --oidc-username-claim={args.username_claim} "
        f"--oidc-username-prefix={args.username_prefix} --oidc-groups-claim=groups "
        f"--oidc-groups-prefix={args.groups_prefix} (docs/kubernetes.md):"
    )
    username = claims.get(args.username_claim)
    if isinstance(username, str) and username:
        user = ("" if args.username_prefix == "-" else args.username_prefix) + username
        say(
            shlex.join(
                [
                    "kubectl",
                    "create",
                    "clusterrolebinding",
                    _binding_name("view", user),
                    "--clusterrole=view",
                    f"--user={user}",
                ]
            )
        )
    else:
        say(f"#    (the ID token has no {args.username_claim!r} claim to bind a user by)")
    groups = claims.get("groups")
    for group in groups if isinstance(groups, list) else []:
        if isinstance(group, str) and group:
            name = args.groups_prefix + group
            say(
                shlex.join(
                    [
                        "kubectl",
                        "create",
                        "clusterrolebinding",
                        _binding_name("view", name),
                        "--clusterrole=view",
                        f"--group={name}",
                    ]
                )
            )
    return 0


def _binding_name(role: str, subject: str) -> str:
    """A valid object name (RFC 1123 subdomain) for a binding of ``subject``."""
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", subject.lower()).strip("-.")
    return f"{role}-{cleaned}"[:253].rstrip("-.")


def _logout(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    options = _options(args, interactive=False)
    had_entry, revoked = Login(options, stderr=stderr).logout()
    if not had_entry:
        print("No cached login for this issuer, client and scopes.", file=stderr)
    elif revoked:
        print("Logged out: cache cleared and the refresh token revoked at the issuer.", file=stderr)
    else:
        print(
            "Logged out locally (cache cleared); the issuer has no revocation endpoint or "
            "there was no refresh token to revoke.",
            file=stderr,
        )
    return 0


def main(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    # `kubectl oidc-login get-token ...` kubeconfigs: the plugin name kubelogin is invoked with.
    if argv[:1] == ["oidc-login"]:
        argv = argv[1:]
    parser = build_parser()
    try:
        _refuse_unsupported(argv)
        args = parser.parse_args(argv)
        if args.command == "get-token":
            return _get_token(args, out, err)
        if args.command == "setup":
            return _setup(args, out, err)
        if args.command == "logout":
            return _logout(args, out, err)
        parser.print_help(err)
        return 2
    except PluginError as exc:
        print(f"kubectl-portcullis: error: {exc}", file=err, flush=True)
        return 1
    except KeyboardInterrupt:
        print("kubectl-portcullis: interrupted", file=err, flush=True)
        return 130
    except Exception as exc:  # a bug: one line for the user, never a traceback with tokens
        print(f"kubectl-portcullis: internal error ({type(exc).__name__})", file=err, flush=True)
        return 70
