"""Connectors: the upstream identity providers, one module (or small package) per type.

Owns: the connector contract (``base``: the Password/Callback/Header/Refresh connector interfaces,
``ConnectorEnv`` and ``ConnectorType``), each connector's config model and ``open_...``
function, and the table of types this build offers (``registry.CONNECTOR_TYPES``). A new
connector is a new module plus one line in that table.

Must not: import oidc, keys, the adapters or the assembly. A connector gets the server's
facilities only through the ``ConnectorEnv`` it is opened with, and answers with an
``Identity``; what the issuer does with it is oidc's business.
"""
