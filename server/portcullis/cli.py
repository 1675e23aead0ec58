"""`portcullis` command line: serve, check-config, hash-password, version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Generator, Sequence
from typing import Any

from portcullis import __version__

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h)

log = logging.getLogger("portcullis")


def _fips() -> tuple[bool, dict[str, Any]]:
    """FIPS mode: requested through PORTCULLIS_FIPS; fails closed (exit 78) when broken."""
    try:
        from portcullis import fips
    except ImportError:
        if os.environ.get("PORTCULLIS_FIPS", "").lower() in ("1", "true", "yes", "on"):
            print("portcullis: FIPS mode requested but not available in this build", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
        return False, {}
    if not fips.fips_requested():
        return False, {"enabled": False}
    fips.enforce_or_exit()
    return True, fips.status()


# -- serve -----------------------------------------------------------------------------------


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - operator's choice


def _Server(config: Any) -> Any:  # noqa: N802 - reads like the class it builds
    """A uvicorn server whose signals we handle ourselves, so all listeners stop together."""
    import uvicorn

    class SharedSignalServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    return SharedSignalServer(config)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from portcullis.config.load import ConfigError, load_config
    from portcullis.telemetry import configure_logging
    from portcullis.web.app import create_issuer

    fips_mode, fips_status = _fips()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if fips_mode:
        from portcullis.passwords import check_hash_format

        refused = [
            f"staticPasswords[{i}].hash: {problem}"
            for i, p in enumerate(config.passwords)
            if (problem := check_hash_format(p.hash, fips_mode=True))
        ]
        if refused:
            for line in refused:
                print(f"config error: {line}", file=sys.stderr)
            return EXIT_USAGE
    raw = config.raw
    configure_logging(raw.logger.level, raw.logger.format, raw.logger.exclude_fields)
    issuer = create_issuer(config, fips_mode=fips_mode, fips_status=fips_status)

    servers = []
    common: dict[str, Any] = {
        "access_log": False,
        "log_config": None,
        "lifespan": "on",
        "timeout_graceful_shutdown": args.drain_timeout,
        "proxy_headers": False,
        "server_header": False,
        "date_header": True,
    }
    if raw.web.http:
        host, port = _split_address(raw.web.http)
        servers.append(_Server(uvicorn.Config(issuer.app, host=host, port=port, **common)))
    if raw.web.https:
        host, port = _split_address(raw.web.https)
        https_config = uvicorn.Config(
            issuer.app,
            host=host,
            port=port,
            ssl_certfile=raw.web.tls_cert,
            ssl_keyfile=raw.web.tls_key,
            **common,
        )
        https_config.load()
        assert https_config.ssl is not None
        https_config.ssl.minimum_version = (
            ssl.TLSVersion.TLSv1_3 if raw.web.tls_min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        )
        if raw.web.tls_max_version == "1.2":
            https_config.ssl.maximum_version = ssl.TLSVersion.TLSv1_2
        servers.append(_Server(https_config))
    if raw.telemetry.http:
        host, port = _split_address(raw.telemetry.http)
        telemetry_common = {**common, "lifespan": "off"}
        servers.append(
            _Server(uvicorn.Config(issuer.telemetry, host=host, port=port, **telemetry_common))
        )

    async def run() -> None:
        loop = asyncio.get_running_loop()

        def stop(signame: str) -> None:
            log.info("received %s: draining in-flight requests", signame)
            for server in servers:
                server.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig.name)
        log.info(
            "serving issuer %s (version %s, storage %s, fips %s)",
            config.issuer,
            __version__,
            raw.storage.type,
            "on" if fips_mode else "off",
        )
        await asyncio.gather(*(server.serve() for server in servers))

    asyncio.run(run())
    issuer.provider.storage.close()
    log.info("stopped")
    return EXIT_OK


# -- check-config ----------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    from portcullis.config.load import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{args.config}: valid (issuer {config.issuer}, storage {config.raw.storage.type}, "
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
    try:
        print(hash_password(password, scheme=scheme, cost=args.cost))
    except ValueError as exc:
        print(f"portcullis: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


# -- version ---------------------------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {"version": __version__, "python": sys.version.split()[0]}
    try:
        from portcullis import fips

        info["fips"] = fips.status()
    except ImportError:
        info["fips"] = {"enabled": False, "available": False}
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
    hashing.add_argument(
        "--cost", type=int, default=None, help="bcrypt cost or PBKDF2 iterations"
    )
    hashing.set_defaults(handler=cmd_hash_password)

    version = sub.add_parser("version", help="print the version and FIPS state")
    version.add_argument("--json", action="store_true", help="machine-readable output")
    version.set_defaults(handler=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
