"""Open the storage backend a config names."""

from __future__ import annotations

from portcullis.config.load import Config
from portcullis.config.model import PostgresConfig, SQLiteConfig
from portcullis.storage.base import Storage
from portcullis.storage.memory import MemoryStorage


def open_storage(config: Config) -> Storage:
    kind = config.raw.storage.type
    if kind == "memory":
        return MemoryStorage()
    if kind == "sqlite3":
        from portcullis.storage.sqlite import SQLiteStorage

        assert isinstance(config.storage_config, SQLiteConfig)
        return SQLiteStorage(
            config.storage_config.file, synchronous=config.storage_config.synchronous
        )
    if kind == "postgres":
        from portcullis.storage.postgres import PostgresStorage

        assert isinstance(config.storage_config, PostgresConfig)
        return PostgresStorage(config.storage_config)
    raise ValueError(f"storage type {kind!r} is not supported")
