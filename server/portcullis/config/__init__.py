"""Configuration: the Dex-format YAML schema (``model``), its loading, ``$VAR`` expansion and
cross-field checks with YAML paths in every message (``load``), Go-style durations.

Owns: every config key and its validation, Dex's defaults (e.g. the default grant types), the
storage type names (``model.STORAGE_TYPES``) and the reserved password-database connector id.

Must not: import anything of the server above it (storage, keys, connectors, oidc, the
adapters, the assembly). Connector config models are handed in by the caller
(``load_config(..., connector_models=...)``); storage backends pick their settings model from
here. It may use the leaf ``portcullis.passwords`` (hash-format checks).
"""
