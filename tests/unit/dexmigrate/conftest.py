"""The import tests use the session's real PostgreSQL for both sides (a Dex database built by
tests.support.dex_schema, and a migrated Portcullis database)."""

from tests.support.postgres import (  # noqa: F401
    _reusable_database,
    fresh_postgres_database,
    postgres_cluster,
    postgres_database,
)
