"""Load a Dex-format YAML file into a validated, resolved :class:`Config`.

Every problem is collected and reported with its YAML path, so an operator fixes a file in one
pass (`portcullis check-config`). Environment expansion follows Dex: ``$VAR``/``${VAR}`` inside
``storage.config``, ``signer.config`` and ``connectors[].config``; ``idEnv``, ``secretEnv`` and
``hashFromEnv`` read whole values from the environment.

The loader knows no connector: the caller hands it the config model of each connector type it
can build (``connector_models``, from ``portcullis.connectors.registry.CONNECTOR_TYPES``), so
loading YAML never imports connectors or storage.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError

from portcullis import passwords
from portcullis.config.dex_compat import (
    GOMPLATE_HINT,
    check_device_callbacks,
    check_newer_dex_keys,
    decode_base64_hash,
)
from portcullis.config.model import LOCAL_CONNECTOR_ID, RawConfig

log = logging.getLogger("portcullis.config")

#: Connector type name -> the model its ``connectors[].config`` is validated with.
ConnectorModels = Mapping[str, type[BaseModel]]


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists each one as ``path: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ClientSpec:
    id: str
    secret: str  # clear text from config; hashed before it reaches storage
    redirect_uris: tuple[str, ...]
    trusted_peers: tuple[str, ...]
    public: bool
    name: str
    logo_url: str
    allowed_connectors: tuple[str, ...]
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    id_token_ttl: float | None
    refresh_token_lifetime: float | None
    introspect_any_token: bool = False
    post_logout_redirect_uris: tuple[str, ...] = ()
    allowed_resources: tuple[str, ...] = ()


@dataclass(frozen=True)
class PasswordSpec:
    email: str
    hash: str
    username: str
    name: str
    preferred_username: str
    email_verified: bool
    user_id: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class ConnectorSpec:
    id: str
    type: str
    name: str
    config: BaseModel | None


@dataclass(frozen=True)
class Config:
    raw: RawConfig
    source: str
    clients: tuple[ClientSpec, ...]
    passwords: tuple[PasswordSpec, ...]
    connectors: tuple[ConnectorSpec, ...]
    storage_config: BaseModel | None
    #: Risky but allowed settings: printed by check-config, logged at serve.
    warnings: tuple[str, ...] = ()

    @property
    def issuer(self) -> str:
        """The base every endpoint URL is built on (the configured issuer without a trailing
        ``/``, so ``f"{issuer}/token"`` never doubles it)."""
        return self.raw.issuer.rstrip("/")

    @property
    def issuer_id(self) -> str:
        """The issuer identifier exactly as configured: the ``iss`` claim and discovery's
        ``issuer``. Kept byte for byte (a trailing ``/`` included), because kube-apiserver's
        ``--oidc-issuer-url`` and every client compare it as a string (OIDC Discovery §4.3), and
        a cluster moved over from Dex was configured with Dex's exact string."""
        return self.raw.issuer

    @property
    def issuer_path(self) -> str:
        """The path prefix every endpoint lives under ("" for a root issuer)."""
        return urlsplit(self.issuer).path.rstrip("/")


_ENV_PATTERN = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_env(value: Any, environ: Mapping[str, str]) -> Any:
    """Expand $VAR and ${VAR} in every string of a nested structure (unset -> "", as Go's
    os.ExpandEnv does)."""
    if isinstance(value, str):
        return _ENV_PATTERN.sub(lambda m: environ.get(m.group(1) or m.group(2), ""), value)
    if isinstance(value, list):
        return [expand_env(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, environ) for k, v in value.items()}
    return value


#: Keys whose values are file paths or URLs: an unset variable inside one silently points
#: somewhere else (``${DATA_DIR}/dex.db`` becomes ``/dex.db``), so it is an error there.
_PATH_OR_URL_KEY = re.compile(r"(file|path|dir|url|uri|issuer|host|endpoint|cert|ca|key)s?$", re.I)


def expand_env_checked(
    value: Any, environ: Mapping[str, str], at: str, problems: list[str], key: str = ""
) -> Any:
    """:func:`expand_env`, Dex-compatible, except that a variable that is unset or empty inside
    a longer path or URL value is reported (``at`` is the YAML path): Go would expand it to ""
    and the server would use a different file or host than the operator meant."""
    if isinstance(value, str):
        if key and _PATH_OR_URL_KEY.search(key):
            for match in _ENV_PATTERN.finditer(value):
                name = match.group(1) or match.group(2)
                if not environ.get(name) and match.group(0) != value:
                    problems.append(
                        f"{at}: environment variable {name} is not set or empty, which would "
                        "leave a broken path or URL"
                    )
        return expand_env(value, environ)
    if isinstance(value, list):
        return [
            expand_env_checked(v, environ, f"{at}[{i}]", problems, key) for i, v in enumerate(value)
        ]
    if isinstance(value, dict):
        return {
            k: expand_env_checked(v, environ, f"{at}.{k}", problems, str(k))
            for k, v in value.items()
        }
    return value


def format_location(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _pydantic_problems(error: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[str]:
    problems = []
    for item in error.errors():
        loc = prefix + tuple(
            p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        message = item["msg"]
        kind = item["type"]
        if kind == "extra_forbidden":
            message = "unknown key (not a Dex or Portcullis setting)"
        elif kind == "missing":
            message = "required"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            message = "must be a mapping of settings"
        elif kind == "list_type":
            message = "must be a list"
        elif kind == "literal_error":
            message = f"must be {message.removeprefix('Input should be ')}"
        # Validators on a whole section report at that section's path.
        problems.append(f"{format_location(loc)}: {message}")
    return problems


def _duplicate_keys(
    node: yaml.Node, path: str, problems: list[str], visited: set[int] | None = None
) -> None:
    """Report every key written twice in one mapping: YAML loaders keep the last silently, so
    an operator's second ``web:`` or ``staticClients:`` would replace the first unseen.

    Each node is visited once: an alias points at the node of its anchor, so a self-referencing
    anchor (``&a [*a]``) would recurse forever and nested aliases (a "billion laughs" document)
    would take exponential time."""
    visited = set() if visited is None else visited
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
            where = f"{path}.{key}" if path else key
            if key and key != "<<":
                line = key_node.start_mark.line + 1
                if key in seen:
                    problems.append(
                        f"{where}: duplicate key (line {seen[key]} and line {line}); "
                        "YAML would keep only the last"
                    )
                else:
                    seen[key] = line
            _duplicate_keys(value_node, where, problems, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _duplicate_keys(item, f"{path}[{index}]", problems, visited)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            duplicates: list[str] = []
            _duplicate_keys(root, "", duplicates)
            if duplicates:
                raise ConfigError(duplicates)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = f"{source}: not valid YAML{where}: {exc}"
        if "{{" in text:
            problem += f"\n{GOMPLATE_HINT}"
        raise ConfigError([problem]) from None
    if not isinstance(document, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of settings"])
    return document


def parse_config(
    text: str,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    *,
    connector_models: ConnectorModels,
    fips_mode: bool = False,
) -> Config:
    """Parse and validate; ``connector_models`` are the connector types the caller can build
    (any other type is an error naming the available ones); ``fips_mode`` applies the FIPS
    password-hash policy too."""
    env = os.environ if environ is None else environ
    document = _parse_yaml(text, source)
    # An empty section ("oauth2:" with nothing under it) means defaults, as in Dex's Go YAML.
    document = {key: value for key, value in document.items() if value is not None}
    expansion_problems: list[str] = []
    if env.get("DEX_EXPAND_ENV", "true").lower() not in ("false", "0"):
        for section in ("storage", "signer"):
            if isinstance(document.get(section), dict) and "config" in document[section]:
                document[section]["config"] = expand_env_checked(
                    document[section]["config"], env, f"{section}.config", expansion_problems
                )
        if isinstance(document.get("storageSealing"), dict):
            document["storageSealing"] = expand_env_checked(
                document["storageSealing"], env, "storageSealing", expansion_problems
            )
        connectors = document.get("connectors")
        # A non-list ``connectors`` is reported by validation below; it must not crash here.
        for i, connector in enumerate(connectors if isinstance(connectors, list) else []):
            if isinstance(connector, dict) and "config" in connector:
                connector["config"] = expand_env_checked(
                    connector["config"], env, f"connectors[{i}].config", expansion_problems
                )
    try:
        raw = RawConfig.model_validate(document)
    except ValidationError as exc:
        schema_problems = expansion_problems + _pydantic_problems(exc)
        failed = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        # Validate again without the broken sections so the cross-field checks of the healthy
        # ones still run: an operator sees every problem in one pass.
        partial = _validate_without(document, failed)
        if partial is None:
            raise ConfigError(schema_problems) from None
        try:
            _resolve(partial, source, env, connector_models, fips_mode=fips_mode, skip=failed)
        except ConfigError as more:
            raise ConfigError(schema_problems + more.problems) from None
        raise ConfigError(schema_problems) from None
    if expansion_problems:
        try:
            _resolve(raw, source, env, connector_models, fips_mode=fips_mode)
        except ConfigError as more:
            raise ConfigError(expansion_problems + more.problems) from None
        raise ConfigError(expansion_problems)
    return _resolve(raw, source, env, connector_models, fips_mode=fips_mode)


# Stand-ins for required sections that failed validation (never used to serve).
_PLACEHOLDERS: dict[str, Any] = {
    "issuer": "http://placeholder.invalid",
    "storage": {"type": "memory"},
    "web": {"http": "127.0.0.1:1"},
}


def _validate_without(document: dict[str, Any], failed: set[str]) -> RawConfig | None:
    partial = {k: v for k, v in document.items() if k not in failed}
    for key in failed:
        if key in _PLACEHOLDERS:
            partial[key] = _PLACEHOLDERS[key]
    try:
        return RawConfig.model_validate(partial)
    except ValidationError:
        return None


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    connector_models: ConnectorModels,
    fips_mode: bool = False,
) -> Config:
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [
                f"{file}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                "save the file as UTF-8"
            ]
        ) from None
    return parse_config(
        text, str(file), environ, connector_models=connector_models, fips_mode=fips_mode
    )


# --------------------------------------------------------------------------------------------
# Cross-field resolution
# --------------------------------------------------------------------------------------------


def _resolve(
    raw: RawConfig,
    source: str,
    env: Mapping[str, str],
    connector_models: ConnectorModels,
    *,
    fips_mode: bool,
    skip: set[str] | None = None,
) -> Config:
    """Cross-field checks. ``skip`` names top-level sections that failed schema validation:
    checks that read them are left out rather than reporting follow-on noise."""
    skip = skip or set()
    problems: list[str] = []
    warnings: list[str] = []
    storage_config = None if "storage" in skip else _resolve_storage(raw, problems)
    connectors = (
        [] if "connectors" in skip else _resolve_connectors(raw, connector_models, problems)
    )
    clients = (
        [] if skip & {"staticClients", "oauth2"} else _resolve_clients(raw, env, problems, warnings)
    )
    if not skip & {"issuer", "web"}:
        _check_exposure(raw, warnings)
    if not skip & {"storage", "storageSealing"}:
        _check_sealing(raw, warnings)
    password_specs = (
        []
        if skip & {"staticPasswords", "enablePasswordDB"}
        else _resolve_passwords(raw, env, problems, fips_mode=fips_mode)
    )
    if skip & {"connectors", "enablePasswordDB", "oauth2", "staticClients"}:
        if problems:
            raise ConfigError(problems)
        return Config(raw, source, tuple(clients), tuple(password_specs), (), storage_config)

    if fips_mode and raw.grpc.addr and raw.grpc.tls_cert and "grpc" not in skip:
        # Fail closed: grpcio's TLS is its bundled BoringSSL, outside the FIPS provider.
        problems.append(
            "grpc.tlsCert: in FIPS mode the admin API cannot use TLS (grpcio's TLS stack is not "
            "the FIPS provider); serve it on loopback without TLS behind a FIPS TLS proxy, or "
            "turn it off"
        )
    connector_ids = {c.id for c in connectors}
    if raw.enable_password_db:
        connector_ids.add(LOCAL_CONNECTOR_ID)
    if not connector_ids:
        problems.append("connectors: no connector configured and enablePasswordDB is false")
    if raw.oauth2.password_connector and raw.oauth2.password_connector not in connector_ids:
        problems.append(
            f"oauth2.passwordConnector: no connector with id {raw.oauth2.password_connector!r}"
        )
    for i, client in enumerate(clients):
        for j, connector_id in enumerate(client.allowed_connectors):
            if connector_id not in connector_ids:
                problems.append(
                    f"staticClients[{i}].allowedConnectors[{j}]: no connector with id "
                    f"{connector_id!r}"
                )
    _check_kubeconfig_client(raw, clients, problems)
    check_device_callbacks(raw, problems)
    check_newer_dex_keys(raw, problems)
    for j, grant in enumerate(raw.oauth2.grant_types):
        if grant == "password" and not raw.oauth2.password_connector:
            problems.append(
                f"oauth2.grantTypes[{j}]: the password grant needs oauth2.passwordConnector"
            )
    for i, client in enumerate(clients):
        if client.public and "password" in client.grant_types:
            j = client.grant_types.index("password")
            problems.append(
                f"staticClients[{i}].grantTypes[{j}]: public clients may not use the password "
                "grant (RFC 9700 §2.4); remove it or make the client confidential"
            )
    if problems:
        raise ConfigError(problems)
    return Config(
        raw=raw,
        source=source,
        clients=tuple(clients),
        passwords=tuple(password_specs),
        connectors=tuple(connectors),
        storage_config=storage_config,
        warnings=tuple(warnings),
    )


def _resolve_storage(raw: RawConfig, problems: list[str]) -> BaseModel | None:
    try:
        backend = raw.storage.backend_config()
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, ("storage", "config")))
        return None
    if backend is None and raw.storage.config:
        problems.append("storage.config: the memory storage takes no settings")
    return backend


def _resolve_connectors(
    raw: RawConfig, connector_models: ConnectorModels, problems: list[str]
) -> list[ConnectorSpec]:
    specs: list[ConnectorSpec] = []
    seen: set[str] = set()
    for i, connector in enumerate(raw.connectors):
        if connector.id in seen or (connector.id == LOCAL_CONNECTOR_ID and raw.enable_password_db):
            problems.append(f"connectors[{i}].id: duplicate connector id {connector.id!r}")
        seen.add(connector.id)
        model = connector_models.get(connector.type)
        if model is None:
            problems.append(
                f"connectors[{i}].type: connector type {connector.type!r} is not available in "
                f"this Portcullis version (available: {', '.join(sorted(connector_models))})"
            )
            continue
        config_model: BaseModel | None = None
        try:
            config_model = model.model_validate(connector.config)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, ("connectors", i, "config")))
        specs.append(ConnectorSpec(connector.id, connector.type, connector.name, config_model))
    return specs


def _from_env(env: Mapping[str, str], name: str, where: str, problems: list[str]) -> str:
    value = env.get(name)
    if value is None or value == "":
        problems.append(f"{where}: environment variable {name} is not set or empty")
        return ""
    return value


#: Client secrets shorter than this are refused: guessable online, and shorter than any secret a
#: generator produces. Dex's own examples use 24 characters ("ZXhhbXBsZS1hcHAtc2VjcmV0").
MIN_CLIENT_SECRET = 8
#: Shorter than this (but at least MIN_CLIENT_SECRET) is a warning: 16 random characters are
#: about 96 bits, the least a password-equivalent credential should carry.
RECOMMENDED_CLIENT_SECRET = 16

_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_exposure(raw: RawConfig, warnings: list[str]) -> None:
    """Settings that work but expose users: warned, not refused, so Dex configs still load."""
    parts = urlsplit(raw.issuer)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        warnings.append(
            f"issuer: {raw.issuer!r} is http on a non-loopback host: codes, tokens and "
            "passwords cross the network in clear text (use https, or serve on 127.0.0.1)"
        )
    for i, origin in enumerate(raw.web.allowed_origins):
        if origin.strip() == "*":
            warnings.append(
                f"web.allowedOrigins[{i}]: '*' lets any web site call the token, userinfo "
                "and introspection endpoints from a user's browser; list the origins instead"
            )


def _check_sealing(raw: RawConfig, warnings: list[str]) -> None:
    """PostgreSQL without a sealing key still works (a Dex config must load unchanged), but
    every refreshable session's upstream tokens then sit in clear in the database."""
    sealing = raw.storage_sealing
    if raw.storage.type == "postgres" and not sealing.configured:
        warnings.append(
            "storageSealing: no key configured, so upstream access and refresh tokens "
            "(connector data) are stored unsealed in PostgreSQL, readable by anyone who can "
            "read the database or its backups; set storageSealing.keyFile or storageSealing.key "
            "to 32 random bytes in base64 (`openssl rand -base64 32`)"
        )
    if raw.storage.type == "memory" and sealing.configured:
        warnings.append(
            "storageSealing: the memory storage keeps nothing at rest, so the key is not used"
        )


def _resolve_clients(
    raw: RawConfig, env: Mapping[str, str], problems: list[str], warnings: list[str]
) -> list[ClientSpec]:
    specs: list[ClientSpec] = []
    seen: set[str] = set()
    for i, client in enumerate(raw.static_clients):
        at = f"staticClients[{i}]"
        if client.id and client.id_env:
            problems.append(f"{at}.idEnv: set either id or idEnv, not both")
        client_id = client.id or (
            _from_env(env, client.id_env, f"{at}.idEnv", problems) if client.id_env else ""
        )
        if not client.id and not client.id_env:
            problems.append(f"{at}.id: required (or idEnv)")
        if client.secret is not None and client.secret_env:
            problems.append(f"{at}.secretEnv: set either secret or secretEnv, not both")
        secret = client.secret.get_secret_value() if client.secret is not None else ""
        if client.secret_env:
            secret = _from_env(env, client.secret_env, f"{at}.secretEnv", problems)
        if not client.public and not secret:
            problems.append(f"{at}.secret: required for a confidential client (or set public)")
        if client.public and secret:
            # Dex accepts it (and ignores the secret for public clients); so do we, saying so.
            log.warning(
                "%s (%s): public client has a secret; it is unused (public clients do not "
                "authenticate)",
                at,
                client_id,
            )
            secret = ""
        elif secret and len(secret) < MIN_CLIENT_SECRET:
            field = "secretEnv" if client.secret_env else "secret"
            problems.append(
                f"{at}.{field}: the client secret is {len(secret)} character(s); at least "
                f"{MIN_CLIENT_SECRET} are required ({RECOMMENDED_CLIENT_SECRET}+ random "
                "characters recommended)"
            )
        elif secret and len(secret) < RECOMMENDED_CLIENT_SECRET:
            field = "secretEnv" if client.secret_env else "secret"
            warnings.append(
                f"{at}.{field}: the client secret is only {len(secret)} characters; use "
                f"{RECOMMENDED_CLIENT_SECRET} or more random characters"
            )
        if (
            not client.public
            and not client.redirect_uris
            and (not client.grant_types or "authorization_code" in client.grant_types)
        ):
            problems.append(f"{at}.redirectURIs: a confidential client needs at least one")
        if client_id in seen:
            problems.append(f"{at}.id: duplicate client id {client_id!r}")
        seen.add(client_id)
        for j, grant in enumerate(client.grant_types):
            if grant not in raw.oauth2.enabled_grant_types():
                problems.append(
                    f"{at}.grantTypes[{j}]: {grant!r} is not enabled server-wide "
                    "(oauth2.grantTypes)"
                )
        for j, response_type in enumerate(client.response_types):
            if response_type not in raw.oauth2.response_types:
                problems.append(
                    f"{at}.responseTypes[{j}]: {response_type!r} is not enabled server-wide "
                    "(oauth2.responseTypes)"
                )
        specs.append(
            ClientSpec(
                id=client_id,
                secret=secret,
                redirect_uris=tuple(client.redirect_uris),
                trusted_peers=tuple(client.trusted_peers),
                public=client.public,
                name=client.name or client_id,
                logo_url=client.logo_url,
                allowed_connectors=tuple(client.allowed_connectors),
                grant_types=tuple(client.grant_types),
                response_types=tuple(client.response_types),
                id_token_ttl=client.id_tokens_valid_for,
                refresh_token_lifetime=client.refresh_token_lifetime,
                introspect_any_token=client.introspect_any_token,
                post_logout_redirect_uris=tuple(client.post_logout_redirect_uris),
                allowed_resources=tuple(client.allowed_resources),
            )
        )
    known = {c.id for c in specs}
    for i, client in enumerate(raw.static_clients):
        for j, peer in enumerate(client.trusted_peers):
            if peer not in known:
                problems.append(
                    f"staticClients[{i}].trustedPeers[{j}]: no static client with id {peer!r}"
                )
    return specs


def _resolve_passwords(
    raw: RawConfig, env: Mapping[str, str], problems: list[str], *, fips_mode: bool
) -> list[PasswordSpec]:
    specs: list[PasswordSpec] = []
    seen: set[str] = set()
    if raw.static_passwords and not raw.enable_password_db:
        problems.append("staticPasswords: set enablePasswordDB: true to use static passwords")
    for i, entry in enumerate(raw.static_passwords):
        at = f"staticPasswords[{i}]"
        if entry.hash is not None and entry.hash_from_env:
            problems.append(f"{at}.hashFromEnv: set either hash or hashFromEnv, not both")
        hashed = entry.hash.get_secret_value() if entry.hash is not None else ""
        if entry.hash_from_env:
            hashed = _from_env(env, entry.hash_from_env, f"{at}.hashFromEnv", problems)
        field = "hashFromEnv" if entry.hash_from_env else "hash"
        if not hashed:
            if entry.hash is None and not entry.hash_from_env:
                problems.append(f"{at}.hash: required (or hashFromEnv)")
        else:
            problem = passwords.check_hash_format(hashed, fips_mode=fips_mode)
            decoded = decode_base64_hash(hashed) if problem else None
            if decoded is not None:
                # Dex's backwards-compatible base64 form: check and use the hash inside.
                hashed = decoded
                problem = passwords.check_hash_format(hashed, fips_mode=fips_mode)
            if problem:
                problems.append(f"{at}.{field}: {problem}")
        if entry.email.lower() in seen:
            problems.append(f"{at}.email: duplicate email {entry.email!r}")
        seen.add(entry.email.lower())
        specs.append(
            PasswordSpec(
                email=entry.email,
                hash=hashed,
                username=entry.username,
                name=entry.name or entry.username,
                preferred_username=entry.preferred_username,
                email_verified=entry.email_verified,
                user_id=entry.user_id,
                groups=tuple(entry.groups),
            )
        )
    return specs


def _check_kubeconfig_client(
    raw: RawConfig, clients: list[ClientSpec], problems: list[str]
) -> None:
    """The kubeconfig page signs users in as ``kubernetes.kubeconfigPage.clientID``: that client
    must exist and allow the code grant. (The page's own callback is registered on the client by
    portcullis.kube, which owns that path.)"""
    page = raw.kubernetes.kubeconfig_page
    if not page.enabled:
        return
    spec = next((c for c in clients if c.id == page.client_id), None)
    if spec is None:
        problems.append(
            f"kubernetes.kubeconfigPage.clientID: no static client with id {page.client_id!r}"
        )
    elif spec.grant_types and "authorization_code" not in spec.grant_types:
        problems.append(
            "kubernetes.kubeconfigPage.clientID: client "
            f"{page.client_id!r} does not allow the authorization_code grant"
        )
