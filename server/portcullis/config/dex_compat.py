"""Checks for the Dex config forms that need more than a field type: what Dex accepts that a
plain schema would refuse, and the keys Dex added after 2.45 that this version recognises but
does not serve. Kept apart from ``config.load`` so every Dex-compatibility rule is in one place
(docs/migrating-from-dex.md lists them key by key).
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

from portcullis.config.model import DEVICE_CALLBACK_PATH, RawConfig, is_device_callback_path

#: Added to a YAML error when the file holds ``{{ ... }}``: most likely Dex's gomplate template
#: (``config.docker.yaml``), which Dex's image renders at start and Portcullis does not.
GOMPLATE_HINT = (
    "this looks like a gomplate template (Dex's config.docker.yaml): Portcullis reads plain "
    "YAML; render the template first (e.g. gomplate in an init container), or write the "
    'values in and use $X for {{ getenv "X" }} inside storage.config, signer.config and '
    "connectors[].config, where Dex and Portcullis expand $VAR (docs/migrating-from-dex.md)"
)


def decode_base64_hash(value: str) -> str | None:
    """Dex's backwards-compatible form of ``staticPasswords[].hash``: the bcrypt hash
    base64-encoded (standard alphabet). The decoded hash when value is one, else None."""
    if value.startswith("$"):
        return None
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = decoded.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.startswith("$2") else None


def check_device_callbacks(raw: RawConfig, problems: list[str]) -> None:
    """A relative redirect URI must be Dex's device callback: ``/device/callback`` (Dex's
    constant) or the same under the issuer's path (what Dex's example configs write, e.g.
    ``/dex/device/callback`` for ``http://127.0.0.1:5556/dex``)."""
    issuer_path = urlsplit(raw.issuer).path.rstrip("/")
    allowed = {DEVICE_CALLBACK_PATH, issuer_path + DEVICE_CALLBACK_PATH}
    for i, client in enumerate(raw.static_clients):
        for j, uri in enumerate(client.redirect_uris):
            if is_device_callback_path(uri) and uri not in allowed:
                problems.append(
                    f"staticClients[{i}].redirectURIs[{j}]: {uri!r} is not this issuer's device "
                    f"callback (use {' or '.join(repr(a) for a in sorted(allowed))})"
                )


def check_newer_dex_keys(raw: RawConfig, problems: list[str]) -> None:
    """Keys Dex added after 2.45: refused with what is missing, never silently ignored."""
    if raw.sessions is not None:
        problems.append(
            "sessions: Dex's browser sessions (after 2.45, behind DEX_SESSIONS_ENABLED) are not "
            "available in this Portcullis version; remove the section (logins are per "
            "authorization request, as in Dex 2.45)"
        )
    for i, client in enumerate(raw.static_clients):
        if client.backchannel_logout_uri:
            problems.append(
                f"staticClients[{i}].backchannelLogoutURI: back-channel logout (Dex after 2.45) "
                "is not available in this Portcullis version; remove the key"
            )
    enabled = set(raw.oauth2.enabled_grant_types())
    for i, connector in enumerate(raw.connectors):
        if not connector.grant_types:
            continue
        # Every connector serves every enabled grant here. A list naming all of them restricts
        # nothing and is served as written; a narrower one would be silently widened.
        missing = sorted(enabled - set(connector.grant_types))
        if missing:
            problems.append(
                f"connectors[{i}].grantTypes: restricting a connector's grants (Dex after 2.45) "
                f"is not available in this Portcullis version; it would also allow "
                f"{', '.join(missing)} (list every enabled grant, or remove the key)"
            )
