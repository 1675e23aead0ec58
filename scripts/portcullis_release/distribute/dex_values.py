"""Carry a values file written for the upstream ``dex`` chart (0.24) over to the Portcullis chart.

The Portcullis chart keeps the Dex chart's value names wherever it has the same thing (``config``,
``configSecret``, ``https.enabled``, ``grpc.enabled``, ``env``/``envVars``/``envFrom``,
``volumes``/``volumeMounts``, ``ingress``, ``service``, ``serviceMonitor``, the pod and
deployment metadata, scheduling), so most of a Dex values file is copied as it is. What differs,
and why:

* ``config.storage`` moves to the top-level ``storage`` values: the chart provisions what the
  backend needs (the sqlite3 volume, the postgres password Secret reference) and writes the
  section itself, so a path or an address cannot disagree with the pod.
* ``config.web``/``config.telemetry`` listen addresses and TLS paths, and ``config.grpc.addr``,
  are the chart's (its ports, probes and certificate mounts must agree with them).
* Values the Portcullis chart does not have (``image`` points at Dex's image,
  ``service.loadBalancerIP``, some ``serviceMonitor`` scrape settings...) are dropped; each is
  listed, never dropped silently.

``migrate_values`` returns the Portcullis values and the list of differences; the CLI
(``portcullis-release chart migrate-values FILE``) prints the values as YAML with the differences
as comments on top, so the output can be saved and reviewed as one file.
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from portcullis_release.distribute.chart import CHART_DIR

__all__ = ["DexValuesError", "Migration", "migrate_values", "render_migration"]

_ENV_REFERENCE = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


class DexValuesError(Exception):
    """The file is not a values mapping."""


@dataclass
class Migration:
    values: dict[str, Any]
    differences: list[str] = field(default_factory=list)
    # Differences that leave the release unable to work as the Dex one did (e.g. a storage type
    # Portcullis does not have): the CLI exits non-zero when there are any.
    blockers: list[str] = field(default_factory=list)


def _schema(chart_dir: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((chart_dir / "values.schema.json").read_text())
    return schema


def _allows_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind is None or kind == "null" or (isinstance(kind, list) and "null" in kind)


def _fit(value: Any, schema: dict[str, Any], path: str, migration: Migration) -> Any:
    """value pruned to what schema accepts: unknown keys of closed objects dropped (listed),
    nulls where the chart wants a value left unset (the chart's default applies)."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    properties: dict[str, Any] = schema.get("properties", {})
    closed = schema.get("additionalProperties") is False
    fitted: dict[str, Any] = {}
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        sub = properties.get(key)
        if sub is None:
            if closed:
                migration.differences.append(f"{where}: dropped (not a Portcullis chart value)")
                continue
            fitted[key] = item
            continue
        if item is None and not _allows_null(sub):
            # An empty Dex value ("interval:") means "chart default" there too.
            continue
        fitted[key] = _fit(item, sub, where, migration)
    return fitted


def _storage(config: dict[str, Any], values: dict[str, Any], migration: Migration) -> None:
    storage = config.pop("storage", None)
    if storage is None:
        migration.differences.append(
            "config.storage: not set; the Portcullis chart defaults to sqlite3 on a "
            "PersistentVolumeClaim (storage.sqlite3.persistence)"
        )
        return
    kind = storage.get("type")
    settings = storage.get("config") or {}
    if kind == "memory":
        values["storage"] = {"type": "memory"}
        migration.differences.append("config.storage -> storage.type: memory")
    elif kind == "sqlite3":
        values["storage"] = {"type": "sqlite3"}
        migration.differences.append(
            f"config.storage.config.file ({settings.get('file', '')!r}) -> the chart's "
            "/var/lib/portcullis/portcullis.db on a PersistentVolumeClaim "
            "(storage.sqlite3.persistence); copy the old file there or run "
            "`portcullis import-dex --from sqlite3:PATH`"
        )
    elif kind == "postgres":
        values["storage"] = {"type": "postgres", "postgres": _postgres(settings, values, migration)}
    else:
        migration.blockers.append(
            f"config.storage.type {kind!r}: not available in Portcullis (memory, sqlite3, "
            "postgres); choose one in `storage` and move the data with `portcullis import-dex"
            + (" --from k8s:DUMP.yaml`" if kind == "kubernetes" else "`")
        )


def _postgres(
    settings: dict[str, Any], values: dict[str, Any], migration: Migration
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("host", "port", "database", "user"):
        if key in settings:
            out[key] = settings[key]
    # Dex leaves database/user to libpq when empty; the chart's defaults are "portcullis".
    for key in ("database", "user"):
        if not settings.get(key):
            out[key] = ""
            migration.differences.append(
                f"config.storage.config.{key}: unset in Dex (libpq default); kept unset"
            )
    ssl = settings.get("ssl") or {}
    if ssl:
        out["ssl"] = {k: ssl[k] for k in ("mode", "caFile") if k in ssl}
        for key in sorted(set(ssl) - {"mode", "caFile"}):
            migration.differences.append(
                f"config.storage.config.ssl.{key}: dropped (client certificates are not chart "
                "values; mount them and set them in the config of a custom image)"
            )
    else:
        # Dex's default ssl mode is verify-full, as the chart's.
        out["ssl"] = {"mode": "verify-full"}
    password = str(settings.get("password", ""))
    reference = _ENV_REFERENCE.match(password)
    if reference:
        secret = _secret_of_env(values, reference.group(1))
        if secret is not None:
            out["existingSecret"] = {"name": secret[0], "key": secret[1]}
            migration.differences.append(
                f"config.storage.config.password (${reference.group(1)} from Secret "
                f"{secret[0]}/{secret[1]}) -> storage.postgres.existingSecret"
            )
        else:
            migration.blockers.append(
                f"config.storage.config.password refers to ${reference.group(1)}, which no "
                "envVars secretKeyRef provides: set storage.postgres.existingSecret"
            )
    elif password:
        out["password"] = password
        migration.differences.append(
            "config.storage.config.password -> storage.postgres.password (consider "
            "storage.postgres.existingSecret)"
        )
    for key in sorted(set(settings) - {"host", "port", "database", "user", "password", "ssl"}):
        migration.differences.append(
            f"config.storage.config.{key}: dropped (not a chart value; the Portcullis default "
            "applies)"
        )
    return out


def _secret_of_env(values: dict[str, Any], name: str) -> tuple[str, str] | None:
    for entry in values.get("envVars") or ():
        if isinstance(entry, dict) and entry.get("name") == name:
            ref = ((entry.get("valueFrom") or {}).get("secretKeyRef")) or {}
            if ref.get("name") and ref.get("key"):
                return str(ref["name"]), str(ref["key"])
    return None


def _web(config: dict[str, Any], values: dict[str, Any], migration: Migration) -> None:
    web = config.get("web")
    if isinstance(web, dict):
        for key in ("http", "https", "tlsCert", "tlsKey"):
            if key in web:
                migration.differences.append(
                    f"config.web.{key}: set by the chart (https.enabled chooses HTTPS on 5554)"
                )
        cert = web.pop("tlsCert", None)
        for key in ("http", "https", "tlsKey"):
            web.pop(key, None)
        if values.get("https", {}).get("enabled") and cert:
            secret = _secret_mounted_at(values, posixpath.dirname(str(cert)))
            if secret:
                values.setdefault("https", {})["tls"] = {
                    "mode": "existingSecret",
                    "secretName": secret,
                }
                migration.differences.append(
                    f"config.web.tlsCert (Secret {secret} mounted at "
                    f"{posixpath.dirname(str(cert))}) -> https.tls.mode: existingSecret"
                )
        if not web:
            config.pop("web")
    if values.get("https", {}).get("enabled") and "tls" not in values["https"]:
        migration.differences.append(
            "https.enabled: the Portcullis chart makes the certificate itself "
            "(https.tls.mode: selfSigned by default; existingSecret or certManager available)"
        )
    for section, key in (("telemetry", "http"), ("grpc", "addr")):
        part = config.get(section)
        if isinstance(part, dict) and key in part:
            part.pop(key)
            migration.differences.append(f"config.{section}.{key}: set by the chart")
            if not part:
                config.pop(section)


def _secret_mounted_at(values: dict[str, Any], directory: str) -> str | None:
    mounts = {
        m.get("name"): m.get("mountPath", "").rstrip("/")
        for m in values.get("volumeMounts") or ()
        if isinstance(m, dict)
    }
    for volume in values.get("volumes") or ():
        if not isinstance(volume, dict) or "secret" not in volume:
            continue
        if mounts.get(volume.get("name")) == directory.rstrip("/"):
            return str(volume["secret"].get("secretName", "")) or None
    return None


def migrate_values(dex_values: dict[str, Any], *, chart_dir: Path = CHART_DIR) -> Migration:
    """Portcullis chart values for a Dex chart values mapping, and every difference."""
    values = copy.deepcopy(dex_values)
    migration = Migration(values={})
    if "image" in values:
        values.pop("image")
        migration.differences.append(
            "image: dropped (the Portcullis chart pins its own image by digest)"
        )
    config = values.get("config")
    if isinstance(config, dict):
        _storage(config, values, migration)
        _web(config, values, migration)
        if "kubernetes" in config:
            migration.blockers.append(
                "config.kubernetes: set with the chart's kubeconfigPage/tokenReviewWebhook values"
            )
            config.pop("kubernetes")
    elif values.get("configSecret", {}).get("create", True):
        migration.blockers.append("config: missing (the Dex chart renders it into a Secret)")
    network = values.get("networkPolicy")
    if isinstance(network, dict) and "egressRules" in network:
        network["egress"] = network.pop("egressRules")
        migration.differences.append("networkPolicy.egressRules -> networkPolicy.egress")
    migration.values = _fit(values, _schema(chart_dir), "", migration)
    return migration


def load_dex_values(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DexValuesError(f"{path}: cannot read: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DexValuesError(f"{path}: not a values mapping")
    return data


def render_migration(migration: Migration, source: str) -> str:
    """The values as YAML, every difference as a comment above them."""
    lines = [f"# Portcullis chart values migrated from Dex chart values {source}"]
    lines += [f"# BLOCKER: {b}" for b in migration.blockers]
    lines += [f"# difference: {d}" for d in migration.differences]
    if not migration.blockers and not migration.differences:
        lines.append("# no differences")
    body = yaml.safe_dump(migration.values, sort_keys=False) if migration.values else "{}\n"
    return "\n".join(lines) + "\n" + body
