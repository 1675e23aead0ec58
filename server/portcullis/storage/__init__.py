"""Storage: one interface (``base.Storage``) with memory, SQLite (the embedded default) and
PostgreSQL (HA) backends, their records (``models``), migrations, and garbage collection.

Owns: every persistent record and every transaction (a consumed code, a rotated refresh token,
a key rotation is one atomic storage call); ``factory.open_storage`` maps config's storage
settings to a backend.

Must not: import the protocol (oidc), keys, connectors, the adapters or the assembly; it knows
config only for its settings models. Backends never decide protocol questions: they store and
compare what the caller gives them.
"""
