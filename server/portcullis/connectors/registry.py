"""The connector types this build can open: the table and the one function that opens one.

A new connector is a module (or small package) here exposing its config model and an ``open_...``
function, plus one line in the table below; the config loader and the assembly read the table,
nothing else needs to change.

The table names modules instead of importing them: a connector module pulls in its protocol
stack (ldap3; lxml, signxml and xmlsec for SAML; the OAuth/OIDC client), which costs start-up
time and resident memory in every worker. A module is imported the first time its type is looked
up, so a server only loads the connectors its config names; listing the type names (for an
error message) imports nothing, and ``check-config`` still validates every configured type
against its real model.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from pydantic import BaseModel

from portcullis.connectors.base import Connector, ConnectorEnv, ConnectorType
from portcullis.connectors.mock import (
    MockCallbackConfig,
    MockPasswordConfig,
    open_mock_callback,
    open_mock_password,
)

__all__ = ["CONNECTOR_MODELS", "CONNECTOR_TYPES", "build_connector"]

# Type name -> its ConnectorType, or the module whose CONNECTOR_TYPE it is (imported on use).
_TABLE: dict[str, ConnectorType | str] = {
    # Dex's names; "mock" is a short alias for the callback variant. The dev-only mocks are
    # small and import nothing heavy.
    "mockCallback": ConnectorType(MockCallbackConfig, open_mock_callback),
    "mock": ConnectorType(MockCallbackConfig, open_mock_callback),
    "mockPassword": ConnectorType(MockPasswordConfig, open_mock_password),
    "ldap": "portcullis.connectors.ldap",
    "saml": "portcullis.connectors.saml",
    "oidc": "portcullis.connectors.oidc",
    "oauth": "portcullis.connectors.oauth",
    "authproxy": "portcullis.connectors.authproxy",
    "github": "portcullis.connectors.github",
    "gitlab": "portcullis.connectors.gitlab",
    "microsoft": "portcullis.connectors.microsoft",
    "gitea": "portcullis.connectors.gitea",
    "bitbucket-cloud": "portcullis.connectors.bitbucketcloud",
    "keystone": "portcullis.connectors.keystone",
    "atlassian-crowd": "portcullis.connectors.atlassiancrowd",
    "openshift": "portcullis.connectors.openshift",
    "linkedin": "portcullis.connectors.linkedin",
    "google": "portcullis.connectors.google",
}


class _ConnectorTypes(Mapping[str, ConnectorType]):
    """The table, importing a connector module the first time its type is looked up."""

    def __init__(self, table: Mapping[str, ConnectorType | str]) -> None:
        self._table = dict(table)

    def __getitem__(self, name: str) -> ConnectorType:
        entry = self._table[name]
        if isinstance(entry, str):
            loaded = importlib.import_module(entry).CONNECTOR_TYPE
            if not isinstance(loaded, ConnectorType):
                raise TypeError(f"{entry}.CONNECTOR_TYPE is not a ConnectorType")
            self._table[name] = entry = loaded
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


class _ConnectorModels(Mapping[str, type[BaseModel]]):
    """Type name -> config model, for the config loader, as lazy as the table."""

    def __init__(self, types: Mapping[str, ConnectorType]) -> None:
        self._types = types

    def __getitem__(self, name: str) -> type[BaseModel]:
        return self._types[name].config_model

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)


CONNECTOR_TYPES: Mapping[str, ConnectorType] = _ConnectorTypes(_TABLE)
CONNECTOR_MODELS: Mapping[str, type[BaseModel]] = _ConnectorModels(CONNECTOR_TYPES)


def build_connector(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Open one configured connector (``config`` was validated with its type's model)."""
    return CONNECTOR_TYPES[connector_type].open(connector_id, name, connector_type, config, env)
