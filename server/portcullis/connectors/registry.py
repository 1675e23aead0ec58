"""The connector types this build can open: the table and the one function that opens one.

A new connector is a module (or small package) here exposing its config model and an ``open_...``
function, plus one line in :data:`CONNECTOR_TYPES`; the config loader and the assembly read the
table, nothing else needs to change.
"""

from __future__ import annotations

from pydantic import BaseModel

from portcullis.connectors import (
    authproxy,
    bitbucketcloud,
    gitea,
    github,
    gitlab,
    ldap,
    microsoft,
    oauth,
    oidc,
    saml,
)
from portcullis.connectors.base import Connector, ConnectorEnv, ConnectorType
from portcullis.connectors.mock import (
    MockCallbackConfig,
    MockPasswordConfig,
    open_mock_callback,
    open_mock_password,
)

__all__ = ["CONNECTOR_TYPES", "build_connector"]

CONNECTOR_TYPES: dict[str, ConnectorType] = {
    # Dex's names; "mock" is a short alias for the callback variant.
    "mockCallback": ConnectorType(MockCallbackConfig, open_mock_callback),
    "mock": ConnectorType(MockCallbackConfig, open_mock_callback),
    "mockPassword": ConnectorType(MockPasswordConfig, open_mock_password),
    "ldap": ldap.CONNECTOR_TYPE,
    "saml": saml.CONNECTOR_TYPE,
    "oidc": oidc.CONNECTOR_TYPE,
    "oauth": oauth.CONNECTOR_TYPE,
    "authproxy": authproxy.CONNECTOR_TYPE,
    "github": github.CONNECTOR_TYPE,
    "gitlab": gitlab.CONNECTOR_TYPE,
    "microsoft": microsoft.CONNECTOR_TYPE,
    "gitea": gitea.CONNECTOR_TYPE,
    "bitbucket-cloud": bitbucketcloud.CONNECTOR_TYPE,
}


def build_connector(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Open one configured connector (``config`` was validated with its type's model)."""
    return CONNECTOR_TYPES[connector_type].open(connector_id, name, connector_type, config, env)
