"""Open the storage backend a config names.

The storage type names and their config models are config's (``config.model.STORAGE_TYPES``);
this module maps each config model to its backend. The SQL backends are imported only when
configured, so a memory-only process never loads SQLAlchemy or the PostgreSQL driver.

It also resolves ``storageSealing`` into the :class:`Sealer` the SQL backends seal connector
data with (``storage.sealing``): the configured keys, or for sqlite3 without one a key file
created beside the database (so the embedded default seals without any setting), or for
postgres without one no sealing (a Dex config keeps working; the config check warns).
"""

from __future__ import annotations

import importlib
import logging

from portcullis.config.load import Config
from portcullis.config.model import PostgresConfig, SQLiteConfig, StorageSealingSection
from portcullis.storage.base import Storage
from portcullis.storage.memory import MemoryStorage
from portcullis.storage.sealing import (
    UNSEALED,
    Sealer,
    SealingKey,
    decode_key,
    generate_key,
    load_or_create_key_file,
    read_key_file,
)

log = logging.getLogger("portcullis.storage")

#: Appended to the sqlite3 database path to name the key file made when none is configured.
SQLITE_KEY_FILE_SUFFIX = ".sealing-key"
_MEMORY_DATABASE = ":memory:"


def open_storage(config: Config) -> Storage:
    """The backend for ``storage.type``, chosen by the type of its resolved settings (the
    names themselves are config's alone)."""
    settings = config.storage_config
    if settings is None:  # the one backend without settings
        return MemoryStorage()
    sealing = config.raw.storage_sealing
    if isinstance(settings, SQLiteConfig):
        from portcullis.storage.sqlite import SQLiteStorage  # lazy: SQLAlchemy when configured

        return SQLiteStorage(
            settings.file,
            synchronous=settings.synchronous,
            sealer=sqlite_sealer(sealing, settings.file),
        )
    if isinstance(settings, PostgresConfig):
        from portcullis.storage.postgres import PostgresStorage  # lazy: psycopg when configured

        return PostgresStorage(settings, sealer=configured_sealer(sealing) or UNSEALED)
    raise ValueError(f"storage type {config.raw.storage.type!r} is not supported")


def import_backend(config: Config) -> None:
    """Import the configured backend's module without opening anything.

    ``serve --workers N`` calls this before it forks: the backend's libraries (SQLAlchemy and,
    for postgres, psycopg: about 10 MB of objects) are then loaded once in the parent and
    shared copy-on-write by every worker, instead of imported again by each one."""
    settings = config.storage_config
    if isinstance(settings, SQLiteConfig):
        importlib.import_module("portcullis.storage.sqlite")
    elif isinstance(settings, PostgresConfig):
        importlib.import_module("portcullis.storage.postgres")


def configured_sealer(section: StorageSealingSection) -> Sealer | None:
    """The sealer ``storageSealing`` configures, or None when it names no key. Raises
    StorageError naming the field when a key file is missing or holds no key."""
    if not section.configured:
        return None
    if section.key is not None:
        current = SealingKey(
            decode_key(section.key.get_secret_value(), "storageSealing.key"), "storageSealing.key"
        )
    else:
        where = "storageSealing.keyFile"
        current = SealingKey(read_key_file(section.key_file, where), where)
    previous: list[SealingKey] = []
    for i, text in enumerate(section.previous_keys):
        where = f"storageSealing.previousKeys[{i}]"
        previous.append(SealingKey(decode_key(text.get_secret_value(), where), where))
    for i, path in enumerate(section.previous_key_files):
        where = f"storageSealing.previousKeyFiles[{i}]"
        previous.append(SealingKey(read_key_file(path, where), where))
    return Sealer(current, previous)


def sqlite_sealer(section: StorageSealingSection, database: str) -> Sealer:
    """The configured sealer, else one with the key file beside ``database`` (created on the
    first start, reused on every later one). A private in-memory database lives no longer
    than the process, so a key that does too is enough."""
    configured = configured_sealer(section)
    if configured is not None:
        return configured
    if database == _MEMORY_DATABASE:
        return Sealer(SealingKey(generate_key(), "a key for this in-memory database"))
    path = database + SQLITE_KEY_FILE_SUFFIX
    key, created = load_or_create_key_file(path)
    if created:
        log.warning(
            "storageSealing: no key configured; created %s (mode 0600) to seal upstream tokens "
            "in the sqlite3 database. Keep it with the database and back it up with it: "
            "without it, refreshable sessions of upstream connectors must log in again",
            path,
        )
    else:
        log.info("storageSealing: sealing upstream tokens with the key file %s", path)
    return Sealer(SealingKey(key, f"the key file {path}"))
