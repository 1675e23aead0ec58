"""`portcullis` command line: serve, check-config, hash-password, import-dex, revoke, kube,
version.

Commands import what they use inside their handler: in FIPS mode the OpenSSL configuration and
self-check (portcullis.fips) must run before anything loads ``_hashlib``, ``_ssl`` or
``cryptography``, and ``version``/``hash-password`` need not load the server at all.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from portcullis import __version__

if TYPE_CHECKING:
    from portcullis.config.load import Config
    from portcullis.storage.base import Storage

EXIT_OK = 0
EXIT_USAGE = 2

log = logging.getLogger("portcullis")


def _fips() -> tuple[bool, dict[str, Any]]:
    """FIPS mode: requested through PORTCULLIS_FIPS; fails closed (exit 78) when broken."""
    from portcullis import fips

    if not fips.fips_requested():
        return False, {"enabled": False}
    fips.enforce_or_exit()
    return True, fips.status()


def _load_config(path: str, fips_mode: bool) -> Config | None:
    """The config the offline commands work on, or None once every problem is printed."""
    from portcullis.config.load import ConfigError
    from portcullis.issuer import load_config

    try:
        return load_config(path, fips_mode=fips_mode)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return None


def _refuses_memory(command: str, config: Config, why: str) -> bool:
    """True (reason printed) when ``config`` keeps its state in memory, which an offline command
    cannot reach: a fresh memory store would be empty, so its answer would be wrong."""
    if config.raw.storage.type != "memory":
        return False
    print(f"portcullis {command}: the config's storage is memory, {why}", file=sys.stderr)
    return True


def _open_storage(command: str, config: Config) -> Storage | None:
    """The config's storage for ``portcullis <command>``, or None once the reason is printed."""
    from portcullis.storage.base import StorageError
    from portcullis.storage.factory import open_storage

    try:
        return open_storage(config)
    except StorageError as exc:
        print(f"portcullis {command}: storage: {exc}", file=sys.stderr)
        return None


# -- serve -----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    # The FIPS self-check runs before anything else loads OpenSSL (see portcullis.fips).
    fips_mode, fips_status = _fips()

    from portcullis.config.load import ConfigError
    from portcullis.issuer import check_connectors
    from portcullis.serve import serve
    from portcullis.telemetry import configure_logging

    config = _load_config(args.config, fips_mode)
    if config is None:
        return EXIT_USAGE
    raw = config.raw
    configure_logging(raw.logger.level, raw.logger.format, raw.logger.exclude_fields)
    try:
        # Before anything listens or forks: a connector that cannot open is a config error.
        check_connectors(config, fips_mode=fips_mode)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    for warning in config.warnings:
        log.warning("config: %s", warning)
    if args.workers > 1 and raw.storage.type == "memory":
        print(
            "portcullis: --workers > 1 needs shared storage (sqlite3 or postgres), not memory",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return serve(
        config,
        workers=args.workers,
        fips_mode=fips_mode,
        fips_status=fips_status,
        drain_timeout=args.drain_timeout,
    )


# -- check-config ----------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    from portcullis import fips
    from portcullis.config.load import ConfigError, load_config
    from portcullis.connectors.registry import CONNECTOR_MODELS
    from portcullis.issuer import check_connectors

    fips_mode = fips.fips_requested()
    try:
        config = load_config(args.config, connector_models=CONNECTOR_MODELS, fips_mode=fips_mode)
        # Opened as serve would (no network), so what only opening finds is reported too.
        check_connectors(config, fips_mode=fips_mode)
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{args.config}: valid (issuer {config.issuer_id}, storage {config.raw.storage.type}, "
        f"{len(config.clients)} client(s), {len(config.connectors)} connector(s))"
    )
    return EXIT_OK


# -- hash-password ---------------------------------------------------------------------------


def cmd_hash_password(args: argparse.Namespace) -> int:
    from portcullis.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("portcullis: the passwords differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("portcullis: empty password", file=sys.stderr)
        return EXIT_USAGE
    scheme = "pbkdf2" if args.pbkdf2 else "bcrypt"
    from portcullis.passwords import BCRYPT_MIN_COST, PBKDF2_MIN_ITERATIONS

    minimum = PBKDF2_MIN_ITERATIONS if args.pbkdf2 else BCRYPT_MIN_COST
    if args.cost is not None and args.cost < minimum:
        print(
            f"portcullis: --cost {args.cost} is below the minimum {minimum} the config accepts",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        print(hash_password(password, scheme=scheme, cost=args.cost))
    except ValueError as exc:
        print(f"portcullis: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


# -- import-dex ------------------------------------------------------------------------------


def cmd_import_dex(args: argparse.Namespace) -> int:
    fips_mode, _ = _fips()

    from portcullis.clock import SystemClock
    from portcullis.dexmigrate.plan import apply_plan, build_plan
    from portcullis.dexmigrate.source import DexSourceError, read_source
    from portcullis.storage.base import StorageError

    config = _load_config(args.config, fips_mode)
    if config is None:
        return EXIT_USAGE
    if _refuses_memory(
        "import-dex", config, "which nothing outlives; import into sqlite3 or postgres storage"
    ):
        return EXIT_USAGE
    try:
        state = read_source(args.source)
    except DexSourceError as exc:
        print(f"portcullis import-dex: {exc}", file=sys.stderr)
        return EXIT_USAGE
    storage = _open_storage("import-dex", config)
    if storage is None:
        return EXIT_USAGE
    try:
        plan = build_plan(state, config, storage, SystemClock().now())
        for line in plan.summary():
            print(line)
        if not args.apply:
            print("dry run: nothing written (add --apply to import in one transaction)")
            return EXIT_OK
        result = apply_plan(plan, storage)
    except StorageError as exc:
        print(f"portcullis import-dex: storage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        storage.close()
    print(
        f"imported: {result.clients} client(s), {result.passwords} password(s), "
        f"{result.refresh_tokens} refresh token(s), {result.verification_keys} key(s)"
    )
    return EXIT_OK


# -- clients ---------------------------------------------------------------------------------


def cmd_clients(args: argparse.Namespace) -> int:
    """List or delete the clients in the config's storage (created through the admin API or by
    dynamic registration): the same records the admin gRPC API's ListClients/DeleteClient
    see, for an operator with the config and no gRPC client at hand. Static clients live in
    the config file and are not listed."""
    fips_mode, _ = _fips()

    from portcullis.storage.base import NotFoundError, StorageError

    config = _load_config(args.config, fips_mode)
    if config is None:
        return EXIT_USAGE
    storage = _open_storage("clients", config)
    if storage is None:
        return EXIT_USAGE
    try:
        if args.action == "delete":
            try:
                storage.delete_client(args.client_id)
            except NotFoundError:
                print(f"portcullis clients: no stored client {args.client_id!r}", file=sys.stderr)
                return EXIT_USAGE
            print(f"deleted client {args.client_id}")
            return EXIT_OK
        rows = [
            {
                "id": c.id,
                "name": c.name,
                "public": c.public,
                "registered": bool(c.registration_token_hash),
                "expires_at": c.expires_at or None,
                "redirect_uris": list(c.redirect_uris),
            }
            for c in sorted(storage.list_clients(), key=lambda c: c.id)
        ]
    except StorageError as exc:
        print(f"portcullis clients: storage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        storage.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            kind = "registered" if row["registered"] else "admin API"
            access = "public" if row["public"] else "confidential"
            print(f"{row['id']}\t{row['name']}\t{access}\t{kind}")
    return EXIT_OK


# -- revoke ----------------------------------------------------------------------------------


def cmd_revoke(args: argparse.Namespace) -> int:
    fips_mode, _ = _fips()

    from portcullis.clock import SystemClock
    from portcullis.oidc.provider import Provider
    from portcullis.oidc.revocation import RevocationError, Revoker
    from portcullis.storage.base import StorageError

    config = _load_config(args.config, fips_mode)
    if config is None:
        return EXIT_USAGE
    if _refuses_memory(
        "revoke", config, "which only the running server holds; use the admin API of that server"
    ):
        return EXIT_USAGE
    storage = _open_storage("revoke", config)
    if storage is None:
        return EXIT_USAGE
    try:
        clock = SystemClock()
        provider = Provider(config, storage, {}, clock, fips_mode=fips_mode)
        horizon = provider.settings.max_token_lifetime(provider.clients.all())
        revoker = Revoker(storage, provider.keys, clock, horizon)
        if args.all:
            revoker.revoke_all()
            print(
                "rotated the signing key and removed every retired key from /keys: every token "
                "issued before now fails verification (API servers: at their next JWKS fetch)"
            )
            return EXIT_OK
        if args.user is not None:
            what, result = f"user {args.user}", revoker.revoke_user(args.user)
        elif args.group is not None:
            what, result = f"group {args.group}", revoker.revoke_group(args.group)
        else:
            what, result = f"client {args.client}", revoker.revoke_client(args.client)
    except RevocationError as exc:
        print(f"portcullis revoke: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as exc:
        print(f"portcullis revoke: storage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        storage.close()
    print(
        f"revoked {what}: ended {result.families} refresh token famil"
        f"{'y' if result.families == 1 else 'ies'}; tokens issued until now are refused "
        f"for {horizon:.0f}s (by this issuer and the TokenReview webhook; an API server "
        "verifying tokens itself accepts them until they expire)"
    )
    return EXIT_OK


# -- kube apiserver-config ------------------------------------------------------------------


def cmd_kube_apiserver_config(args: argparse.Namespace) -> int:
    fips_mode, _ = _fips()

    from portcullis.kube.apiserver import (
        ApiserverConfigError,
        issuer_ca_from_tls_cert,
        render,
        settings_for,
    )

    config = _load_config(args.config, fips_mode)
    if config is None:
        return EXIT_USAGE
    ca = ""
    web = config.raw.web
    page_ca = config.raw.kubernetes.kubeconfig_page.issuer_certificate_authority_data
    # A cluster trusting another issuer gets that issuer's CA from its own config, never ours.
    foreign = any(
        c.name == args.cluster and c.issuer for c in config.raw.kubernetes.kubeconfig_page.clusters
    )
    source = args.ca_file or (web.tls_cert if web.https and not page_ca and not foreign else None)
    if source:
        try:
            with open(source, "rb") as handle:
                pem = handle.read()
        except OSError as exc:
            print(f"portcullis kube apiserver-config: {source}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        ca = pem.decode("ascii", "replace") if args.ca_file else issuer_ca_from_tls_cert(pem)
        if args.ca_file and "-----BEGIN CERTIFICATE-----" not in ca:
            print(
                f"portcullis kube apiserver-config: --ca-file {source}: no PEM certificate",
                file=sys.stderr,
            )
            return EXIT_USAGE
    try:
        settings = settings_for(config, args.cluster, ca)
    except ApiserverConfigError as exc:
        print(f"portcullis kube apiserver-config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(render(settings, args.format, args.api_version, args.ca_path))
    if args.format == "flags" and settings.certificate_authority:
        print(
            f"# {args.ca_path} on every API server host must hold the issuer CA "
            "(shown with --format authentication-config, or the file passed as --ca-file)",
            file=sys.stderr,
        )
    return EXIT_OK


# -- version ---------------------------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {"version": __version__, "python": sys.version.split()[0]}
    from portcullis import fips

    info["fips"] = fips.status()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        fips_info = info["fips"]
        state = "on" if fips_info.get("enabled") else "off"
        print(f"portcullis {__version__} (python {info['python']}, FIPS mode {state})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portcullis",
        description="A hardened, Dex-compatible OpenID Connect issuer for Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="serve the issuer with a config file")
    serve.add_argument("config", help="path to the YAML config (Dex format)")
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=20.0,
        help="seconds to let in-flight requests finish after SIGTERM (default 20)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("PORTCULLIS_WORKERS", "1")),
        help="worker processes sharing the listeners and storage "
        "(default 1, or $PORTCULLIS_WORKERS)",
    )
    serve.set_defaults(handler=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file without serving")
    check.add_argument("config")
    check.set_defaults(handler=cmd_check_config)

    hashing = sub.add_parser(
        "hash-password", help="hash a password read from stdin for staticPasswords"
    )
    hashing.add_argument(
        "--pbkdf2",
        action="store_true",
        help="PBKDF2-HMAC-SHA256 (FIPS-approved) instead of bcrypt",
    )
    hashing.add_argument("--cost", type=int, default=None, help="bcrypt cost or PBKDF2 iterations")
    hashing.set_defaults(handler=cmd_hash_password)

    importer = sub.add_parser(
        "import-dex",
        help="import a Dex database or Kubernetes dump into the config's storage",
        description="Read Dex's clients, passwords, refresh tokens (offline sessions) and public "
        "signing keys and write them into the storage of CONFIG. Dry run unless --apply; "
        "records already present are left alone, so re-running is harmless.",
    )
    importer.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SOURCE",
        help="sqlite3:PATH, postgres:DSN (libpq string or URL) or k8s:DUMP.yaml "
        "(kubectl get <kinds>.dex.coreos.com -o yaml)",
    )
    importer.add_argument("config", help="the Portcullis config whose storage receives the data")
    importer.add_argument(
        "--apply", action="store_true", help="write (one transaction); default: dry run"
    )
    importer.set_defaults(handler=cmd_import_dex)

    clients = sub.add_parser(
        "clients",
        help="list or delete the clients in the config's storage (admin API, registered)",
    )
    clients_sub = clients.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = clients_sub.add_parser("list", help="list stored clients")
    listing.add_argument("config")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    deleting = clients_sub.add_parser("delete", help="delete a stored client")
    deleting.add_argument("config")
    deleting.add_argument("client_id")
    clients.set_defaults(handler=cmd_clients)

    revoke = sub.add_parser(
        "revoke",
        help="end the sessions of a user, group or client, or invalidate every token",
        description="Against the storage of CONFIG (every replica sees it): --user/--group/"
        "--client end the matching refresh tokens and refuse every token issued to them "
        "before now (userinfo, introspection, the TokenReview webhook, the refresh grant) "
        "until the longest token lifetime has passed; --all rotates the signing key and "
        "removes every retired key from /keys. See docs/kubernetes.md for how long each "
        "takes to reach a Kubernetes API server.",
    )
    revoke.add_argument("config", help="the Portcullis config whose storage is changed")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", metavar="SUB", help="a user, by the `sub` claim of its tokens")
    target.add_argument("--group", metavar="NAME", help="every member of a group (upstream name)")
    target.add_argument("--client", metavar="ID", help="every token of a client")
    target.add_argument("--all", action="store_true", help="every token: new signing key")
    revoke.set_defaults(handler=cmd_revoke)

    kube = sub.add_parser("kube", help="Kubernetes integration helpers")
    kube_sub = kube.add_subparsers(dest="kube_command", metavar="KUBE_COMMAND", required=True)
    apiserver = kube_sub.add_parser(
        "apiserver-config",
        help="print the kube-apiserver settings that trust this issuer",
        description="Print the kube-apiserver --oidc-* flags or an AuthenticationConfiguration "
        "(--authentication-config) for one cluster of kubernetes.kubeconfigPage.clusters, with "
        "the TokenReview webhook's claim mapping so RBAC names are the same either way.",
    )
    apiserver.add_argument("config", help="the Portcullis config")
    apiserver.add_argument("--cluster", required=True, help="a kubeconfigPage cluster name")
    apiserver.add_argument("--format", choices=["flags", "authentication-config"], default="flags")
    apiserver.add_argument("--api-version", choices=["v1", "v1beta1"], default="v1")
    apiserver.add_argument(
        "--ca-file",
        default=None,
        help="PEM of the CA that verifies the issuer's certificate (default: "
        "kubernetes.kubeconfigPage.issuerCertificateAuthorityData, else the CA at the end of "
        "web.tlsCert when the issuer serves https itself)",
    )
    apiserver.add_argument(
        "--ca-path",
        default="/etc/kubernetes/pki/portcullis-ca.crt",
        help="where --oidc-ca-file points on the API server hosts",
    )
    apiserver.set_defaults(handler=cmd_kube_apiserver_config)

    version = sub.add_parser("version", help="print the version and FIPS state")
    version.add_argument("--json", action="store_true", help="machine-readable output")
    version.set_defaults(handler=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from portcullis import fips

    if fips.fips_requested():
        # Must happen before _hashlib, _ssl or cryptography are imported by anything.
        fips.configure_environment()
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
