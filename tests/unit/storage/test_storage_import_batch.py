"""Conformance of ``Storage.import_batch`` (used by ``portcullis import-dex``) on every backend:
absent records are inserted, present ones left as they are (so a re-run is harmless), keys merge
by kid without touching the signing key, and a failure writes nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import sqlalchemy as sa
from portcullis.storage.base import Storage
from portcullis.storage.models import ImportBatch, ImportResult, Keys, SigningKey, VerificationKey


def _key(kid: str, expiry: float = 2e9) -> VerificationKey:
    return VerificationKey(jwk={"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": kid}, expiry=expiry)


def test_import_inserts_absent_records_and_counts_them(storage: Storage, samples: Any) -> None:
    batch = ImportBatch(
        clients=(samples.client("a"), samples.client("b")),
        passwords=(samples.password("jane@example.com"),),
        refresh_tokens=(samples.refresh_token("rt-x"),),
        verification_keys=(_key("dex-1"),),
    )
    result = storage.import_batch(batch)
    assert result == ImportResult(clients=2, passwords=1, refresh_tokens=1, verification_keys=1)
    assert [c.id for c in storage.list_clients()] == ["a", "b"]
    assert storage.get_password("JANE@example.com") == samples.password("jane@example.com")
    assert storage.get_refresh_token("rt-x") == samples.refresh_token("rt-x")
    assert [k.jwk["kid"] for k in storage.get_keys().verification_keys] == ["dex-1"]


def test_import_rerun_changes_nothing(storage: Storage, samples: Any) -> None:
    batch = ImportBatch(
        clients=(samples.client("a"),),
        passwords=(samples.password("jane@example.com"),),
        refresh_tokens=(samples.refresh_token("rt-x"),),
        verification_keys=(_key("dex-1"),),
    )
    storage.import_batch(batch)
    # A rotated family must not be reset to Dex's state by a second import.
    storage.update_refresh_token("rt-x", lambda r: dataclasses.replace(r, token_hash="rotated"))
    assert storage.import_batch(batch) == ImportResult()
    assert storage.get_refresh_token("rt-x").token_hash == "rotated"
    assert len(storage.get_keys().verification_keys) == 1


def test_import_keeps_existing_records_and_the_signing_key(storage: Storage, samples: Any) -> None:
    storage.create_client(samples.client("a", name="Ours"))
    storage.update_keys(
        lambda _k: Keys(
            signing_key=SigningKey(jwk={"kid": "ours"}),
            verification_keys=(_key("old"),),
            next_rotation=123.0,
        )
    )
    result = storage.import_batch(
        ImportBatch(clients=(samples.client("a", name="Dex's"),), verification_keys=(_key("d"),))
    )
    assert result.clients == 0
    assert result.verification_keys == 1
    assert storage.get_client("a").name == "Ours"
    keys = storage.get_keys()
    assert keys.signing_key == SigningKey(jwk={"kid": "ours"})
    assert keys.next_rotation == 123.0
    assert [k.jwk["kid"] for k in keys.verification_keys] == ["old", "d"]


@pytest.mark.parametrize("storage", ["sqlite", "postgres"], indirect=True)
def test_import_is_all_or_nothing(storage: Storage, samples: Any) -> None:
    # The keys are merged last; one that cannot be stored fails the batch after the clients
    # were inserted, and the clients must be gone with it. (Memory storage has no failure
    # mode between records.)
    unstorable = VerificationKey(jwk={"kid": "bad", "n": object()}, expiry=2e9)
    # SQLAlchemy wraps the encoder's TypeError (StatementError) on some dialects.
    with pytest.raises((TypeError, sa.exc.StatementError)):
        storage.import_batch(
            ImportBatch(clients=(samples.client("a"),), verification_keys=(unstorable,))
        )
    assert storage.list_clients() == []
    assert storage.get_keys().verification_keys == ()
