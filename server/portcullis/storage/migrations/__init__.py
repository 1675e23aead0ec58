"""A small, explicit migration runner shared by the SQL backends.

Migrations are numbered SQL files, ``<dialect>/NNNN_name.sql``, applied in order and recorded in
``schema_migrations``. The backend calls :func:`apply_migrations` inside one write-locked
transaction (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL), so several workers
starting together migrate exactly once and a failed migration leaves nothing half-applied.

File rules, kept simple on purpose so no SQL parser is needed: ``--`` comment lines are ignored,
and every statement ends with ``;`` at the end of a line (no semicolons inside a statement).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import sqlalchemy as sa

from portcullis.storage.base import StorageError
from portcullis.storage.sql_schema import schema_migrations

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(StorageError):
    """The migration files or the recorded history are inconsistent."""


class SchemaTooNewError(MigrationError):
    """The database was migrated by a newer Portcullis; refusing to run against it."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(text: str) -> tuple[str, ...]:
    """Split a migration file into statements (see the module docstring for the rules)."""
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        if stripped.endswith(";"):
            statements.append("\n".join(current).strip().removesuffix(";").strip())
            current = []
    if current:
        raise MigrationError("migration ends with a statement that has no terminating ';'")
    return tuple(statements)


def load_migrations(dialect: str) -> tuple[Migration, ...]:
    """The dialect's migrations in version order; versions must run 1, 2, 3... without gaps."""
    root = resources.files(__name__).joinpath(dialect)
    if not root.is_dir():
        raise MigrationError(f"no migrations found for dialect {dialect!r}")
    found: list[Migration] = []
    for entry in root.iterdir():
        match = _FILE_NAME.match(entry.name)
        if not match:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"{dialect}/{entry.name}: name must look like 0001_name.sql")
            continue
        try:
            statements = split_statements(entry.read_text(encoding="utf-8"))
        except MigrationError as exc:
            raise MigrationError(f"{dialect}/{entry.name}: {exc}") from None
        found.append(Migration(int(match.group(1)), match.group(2), statements))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"{dialect} migrations: expected version {expected}, found {migration.version}"
            )
    if not found:
        raise MigrationError(f"no migrations found for dialect {dialect!r}")
    return tuple(found)


def applied_versions(conn: sa.Connection) -> dict[int, str]:
    """Recorded history: version -> name (empty for a new database)."""
    rows = conn.execute(sa.select(schema_migrations.c.version, schema_migrations.c.name))
    return {int(version): str(name) for version, name in rows}


def apply_migrations(
    conn: sa.Connection, migrations: tuple[Migration, ...], now: float
) -> list[int]:
    """Bring the schema up to date inside the caller's (write-locked) transaction.

    Returns the versions applied now. A database whose history has versions this code does not
    know raises SchemaTooNewError; a history whose names differ from the files (a database from
    another branch) or a non-empty database without a history (a Dex database) raises
    MigrationError. None of these is ever "repaired" automatically.
    """
    existing = {
        name for name in sa.inspect(conn).get_table_names() if not name.startswith("sqlite_")
    }
    if existing and schema_migrations.name not in existing:
        # E.g. a Dex database file: never write our tables into someone else's schema.
        raise MigrationError(
            "the database already has tables but no schema_migrations table, so it is not a "
            f"Portcullis database (found: {', '.join(sorted(existing)[:5])}); use an empty one"
        )
    schema_migrations.create(conn, checkfirst=True)
    history = applied_versions(conn)
    known = {m.version: m for m in migrations}
    latest = max(known)
    newest = max(history, default=0)
    if newest > latest:
        raise SchemaTooNewError(
            f"database schema version {newest} is newer than this Portcullis supports "
            f"({latest}); run a Portcullis release that knows it, or restore a matching backup"
        )
    for version, name in sorted(history.items()):
        if known[version].name != name:
            raise MigrationError(
                f"schema_migrations version {version} is {name!r} but this Portcullis expects "
                f"{known[version].name!r}; the database was migrated by a different build"
            )
    applied: list[int] = []
    for migration in migrations:
        if migration.version in history:
            continue
        for statement in migration.statements:
            conn.exec_driver_sql(statement)
        conn.execute(
            schema_migrations.insert().values(
                version=migration.version, name=migration.name, applied_at=now
            )
        )
        applied.append(migration.version)
    return applied
