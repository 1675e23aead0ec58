"""Open the storage backend a config names.

The storage type names and their config models are config's (``config.model.STORAGE_TYPES``);
this module maps each config model to its backend. The SQL backends are imported only when
configured, so a memory-only process never loads SQLAlchemy or the PostgreSQL driver.
"""

from __future__ import annotations

from portcullis.config.load import Config
from portcullis.config.model import PostgresConfig, SQLiteConfig
from portcullis.storage.base import Storage
from portcullis.storage.memory import MemoryStorage


def open_storage(config: Config) -> Storage:
    """The backend for ``storage.type``, chosen by the type of its resolved settings (the
    names themselves are config's alone)."""
    settings = config.storage_config
    if settings is None:  # the one backend without settings
        return MemoryStorage()
    if isinstance(settings, SQLiteConfig):
        from portcullis.storage.sqlite import SQLiteStorage  # lazy: SQLAlchemy when configured

        return SQLiteStorage(settings.file, synchronous=settings.synchronous)
    if isinstance(settings, PostgresConfig):
        from portcullis.storage.postgres import PostgresStorage  # lazy: psycopg when configured

        return PostgresStorage(settings)
    raise ValueError(f"storage type {config.raw.storage.type!r} is not supported")
