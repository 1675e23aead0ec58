"""Connector types the issuer knows, with their config schema and constructor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from portcullis.connectors.base import Connector
from portcullis.connectors.local import LOCAL_CONNECTOR_ID
from portcullis.connectors.mock import (
    MockCallbackConfig,
    MockCallbackConnector,
    MockPasswordConfig,
    MockPasswordConnector,
)

__all__ = ["CONNECTOR_TYPES", "LOCAL_CONNECTOR_ID", "ConnectorKind", "build_connector"]


@dataclass(frozen=True)
class ConnectorKind:
    config_model: type[BaseModel]
    factory: Callable[[str, str, str, BaseModel], Connector]


def _mock_callback(connector_id: str, name: str, kind: str, config: BaseModel) -> Connector:
    return MockCallbackConnector(connector_id, name, kind)


def _mock_password(connector_id: str, name: str, kind: str, config: BaseModel) -> Connector:
    assert isinstance(config, MockPasswordConfig)
    return MockPasswordConnector(connector_id, name, kind, config)


CONNECTOR_TYPES: dict[str, ConnectorKind] = {
    # Dex's names; "mock" is a short alias for the callback variant.
    "mockCallback": ConnectorKind(MockCallbackConfig, _mock_callback),
    "mock": ConnectorKind(MockCallbackConfig, _mock_callback),
    "mockPassword": ConnectorKind(MockPasswordConfig, _mock_password),
}


def build_connector(connector_id: str, name: str, kind: str, config: BaseModel) -> Connector:
    return CONNECTOR_TYPES[kind].factory(connector_id, name, kind, config)
