"""Storage conformance: the behaviour every backend must share (runs once per backend)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from portcullis.storage.base import (
    AlreadyExistsError,
    CodeReplayedError,
    NotFoundError,
    RotationNotDueError,
    Storage,
)
from portcullis.storage.models import Keys, SigningKey, VerificationKey

NOW = 1_700_000_000.0


# -- generic CRUD over every updatable kind -------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """How to create/read/update/delete one record kind through the Storage API."""

    name: str  # method suffix: create_<name>, get_<name>, update_<name>, delete_<name>
    make: Callable[[Any, str], Any]  # (samples, key) -> record
    key: Callable[[Any], str]
    change: Callable[[Any], Any]  # a visible change that keeps the key

    def create(self, storage: Storage, record: Any) -> None:
        getattr(storage, f"create_{self.name}")(record)

    def get(self, storage: Storage, key: str) -> Any:
        return getattr(storage, f"get_{self.name}")(key)

    def update(self, storage: Storage, key: str, updater: Callable[[Any], Any]) -> Any:
        return getattr(storage, f"update_{self.name}")(key, updater)

    def delete(self, storage: Storage, key: str) -> None:
        getattr(storage, f"delete_{self.name}")(key)


KINDS = [
    Kind(
        "client",
        lambda s, k: s.client(k),
        lambda r: r.id,
        lambda r: dataclasses.replace(
            r, redirect_uris=(*r.redirect_uris, "https://new.example/cb"), id_token_ttl=None
        ),
    ),
    Kind(
        "auth_request",
        lambda s, k: s.auth_request(k),
        lambda r: r.id,
        lambda r: dataclasses.replace(r, logged_in=False, identity=None, connector_id=""),
    ),
    Kind(
        "refresh_token",
        lambda s, k: s.refresh_token(k),
        lambda r: r.id,
        lambda r: dataclasses.replace(
            r, token_hash="00" * 32, obsolete_token_hash=r.token_hash, last_used=r.last_used + 60
        ),
    ),
    Kind(
        "password",
        lambda s, k: s.password(k),
        lambda r: r.email,
        lambda r: dataclasses.replace(r, hash="$2b$10$changed", groups=("admins", "ops")),
    ),
]
KIND_IDS = [k.name for k in KINDS]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_created_record_reads_back_equal(storage: Storage, samples: Any, kind: Kind) -> None:
    record = kind.make(samples, "key-1@example.com")
    kind.create(storage, record)
    assert kind.get(storage, kind.key(record)) == record


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_create_existing_key_raises_already_exists(
    storage: Storage, samples: Any, kind: Kind
) -> None:
    first = kind.make(samples, "dup@example.com")
    kind.create(storage, first)
    with pytest.raises(AlreadyExistsError):
        kind.create(storage, kind.change(first))
    assert kind.get(storage, kind.key(first)) == first


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_missing_record_raises_not_found(storage: Storage, kind: Kind) -> None:
    with pytest.raises(NotFoundError):
        kind.get(storage, "nobody@example.com")
    with pytest.raises(NotFoundError):
        kind.delete(storage, "nobody@example.com")
    calls: list[Any] = []
    with pytest.raises(NotFoundError):
        kind.update(storage, "nobody@example.com", lambda r: calls.append(r) or r)
    assert calls == []


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_delete_removes_only_that_record(storage: Storage, samples: Any, kind: Kind) -> None:
    doomed, kept = kind.make(samples, "a@example.com"), kind.make(samples, "b@example.com")
    kind.create(storage, doomed)
    kind.create(storage, kept)
    kind.delete(storage, kind.key(doomed))
    with pytest.raises(NotFoundError):
        kind.get(storage, kind.key(doomed))
    assert kind.get(storage, kind.key(kept)) == kept
    kind.create(storage, doomed)  # the key is free again
    assert kind.get(storage, kind.key(doomed)) == doomed


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_updater_sees_current_record_and_result_is_stored(
    storage: Storage, samples: Any, kind: Kind
) -> None:
    record = kind.make(samples, "u@example.com")
    kind.create(storage, record)
    seen: list[Any] = []

    def updater(current: Any) -> Any:
        seen.append(current)
        return kind.change(current)

    returned = kind.update(storage, kind.key(record), updater)
    assert seen == [record]
    assert returned == kind.change(record) != record
    assert kind.get(storage, kind.key(record)) == returned


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_failing_updater_leaves_record_untouched(
    storage: Storage, samples: Any, kind: Kind
) -> None:
    record = kind.make(samples, "f@example.com")
    kind.create(storage, record)

    class BoomError(Exception):
        pass

    def updater(current: Any) -> Any:
        raise BoomError

    with pytest.raises(BoomError):
        kind.update(storage, kind.key(record), updater)
    assert kind.get(storage, kind.key(record)) == record


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_updater_cannot_change_the_key(storage: Storage, samples: Any, kind: Kind) -> None:
    record = kind.make(samples, "k@example.com")
    kind.create(storage, record)
    renamed = kind.make(samples, "other@example.com")
    with pytest.raises(ValueError, match="key"):
        kind.update(storage, kind.key(record), lambda _r: renamed)
    assert kind.get(storage, kind.key(record)) == record
    with pytest.raises(NotFoundError):
        kind.get(storage, "other@example.com")


def test_ping_answers(storage: Storage) -> None:
    storage.ping()


# -- clients ---------------------------------------------------------------------------------
def test_list_clients_returns_all_sorted_by_id(storage: Storage, samples: Any) -> None:
    assert storage.list_clients() == []
    for client_id in ("zeta", "alpha", "kubectl"):
        storage.create_client(samples.client(client_id, public=client_id == "kubectl"))
    listed = storage.list_clients()
    assert [c.id for c in listed] == ["alpha", "kubectl", "zeta"]
    assert listed[1] == samples.client("kubectl", public=True)


def test_client_optional_fields_round_trip_as_none_and_values(
    storage: Storage, samples: Any
) -> None:
    a = samples.client("a", id_token_ttl=None, refresh_token_absolute_lifetime=86400.0)
    b = samples.client("b", id_token_ttl=30.0, secret_hash="", public=True, redirect_uris=())
    storage.create_client(a)
    storage.create_client(b)
    assert storage.get_client("a") == a
    assert storage.get_client("b") == b


# -- auth requests ---------------------------------------------------------------------------
def test_auth_request_without_identity_round_trips(storage: Storage, samples: Any) -> None:
    pending = samples.auth_request("pending", identity=None, logged_in=False, connector_id="")
    storage.create_auth_request(pending)
    assert storage.get_auth_request("pending") == pending
    completed = storage.update_auth_request(
        "pending",
        lambda r: dataclasses.replace(
            r, identity=samples.identity("u9"), logged_in=True, connector_id="mock"
        ),
    )
    assert storage.get_auth_request("pending") == completed
    assert completed.identity == samples.identity("u9")


def test_identity_with_empty_connector_data_round_trips(storage: Storage, samples: Any) -> None:
    plain = samples.auth_request("r", identity=samples.identity(connector_data=b"", groups=()))
    storage.create_auth_request(plain)
    assert storage.get_auth_request("r") == plain


# -- auth codes ------------------------------------------------------------------------------
def test_consume_auth_code_returns_it_marked_used(storage: Storage, samples: Any) -> None:
    code = samples.auth_code("c1")
    storage.create_auth_code(code)
    used = storage.consume_auth_code("c1", NOW + 5, "example-app")
    assert used == dataclasses.replace(code, used_at=NOW + 5)


def test_consume_auth_code_twice_raises_replay_with_the_code(
    storage: Storage, samples: Any
) -> None:
    code = samples.auth_code("c1")
    storage.create_auth_code(code)
    storage.consume_auth_code("c1", NOW + 5, "example-app")
    with pytest.raises(CodeReplayedError) as replay:
        storage.consume_auth_code("c1", NOW + 9, "example-app")
    # The original code (who, which client, when first used) so the caller can revoke.
    assert replay.value.code == dataclasses.replace(code, used_at=NOW + 5)
    with pytest.raises(CodeReplayedError):
        storage.consume_auth_code("c1", NOW + 10, "example-app")


def test_consume_one_code_leaves_other_codes_unused(storage: Storage, samples: Any) -> None:
    storage.create_auth_code(samples.auth_code("c1"))
    storage.create_auth_code(samples.auth_code("c2"))
    storage.consume_auth_code("c1", NOW, "example-app")
    assert storage.consume_auth_code("c2", NOW + 1, "example-app").used_at == NOW + 1


def test_auth_code_missing_duplicate_and_delete(storage: Storage, samples: Any) -> None:
    with pytest.raises(NotFoundError):
        storage.consume_auth_code("nope", NOW, "example-app")
    with pytest.raises(NotFoundError):
        storage.delete_auth_code("nope")
    storage.create_auth_code(samples.auth_code("c1"))
    with pytest.raises(AlreadyExistsError):
        storage.create_auth_code(samples.auth_code("c1", client_id="other"))
    storage.delete_auth_code("c1")
    with pytest.raises(NotFoundError):
        storage.consume_auth_code("c1", NOW, "example-app")


# -- refresh tokens --------------------------------------------------------------------------
def test_list_refresh_tokens_filters_by_user_and_connector(storage: Storage, samples: Any) -> None:
    tokens = [
        samples.refresh_token("t1", identity=samples.identity("u1"), connector_id="ldap"),
        samples.refresh_token(
            "t2", identity=samples.identity("u1"), connector_id="github", created_at=NOW - 10
        ),
        samples.refresh_token("t3", identity=samples.identity("u2"), connector_id="ldap"),
        samples.refresh_token(
            "t4", identity=samples.identity("u1"), connector_id="ldap", created_at=NOW + 10
        ),
    ]
    for token in tokens:
        storage.create_refresh_token(token)

    def ids(**filters: str) -> list[str]:
        return [t.id for t in storage.list_refresh_tokens(**filters)]

    assert sorted(ids()) == ["t1", "t2", "t3", "t4"]
    assert ids(user_id="u1", connector_id="ldap") == ["t1", "t4"]  # oldest first
    assert ids(user_id="u1") == ["t2", "t1", "t4"]  # by created_at
    assert ids(connector_id="ldap") == ["t1", "t3", "t4"]  # t1/t3 tie on created_at: by id
    assert ids(user_id="nobody") == []
    assert storage.list_refresh_tokens(user_id="u2") == [tokens[2]]


def test_refresh_tokens_listed_by_issuing_code(storage: Storage, samples: Any) -> None:
    storage.create_refresh_token(samples.refresh_token("a", issued_by_code="code-A"))
    storage.create_refresh_token(samples.refresh_token("b", issued_by_code="code-B"))
    storage.create_refresh_token(
        samples.refresh_token("c", issued_by_code="code-A", created_at=NOW + 1)
    )
    assert [t.id for t in storage.refresh_tokens_issued_by_code("code-A")] == ["a", "c"]
    assert storage.refresh_tokens_issued_by_code("code-C") == []


def test_several_sessions_per_user_and_client_coexist(storage: Storage, samples: Any) -> None:
    """Dex #981: a second device's login must not replace the first device's session."""
    laptop = samples.refresh_token("laptop", token_hash="11" * 32)
    phone = samples.refresh_token("phone", token_hash="22" * 32, created_at=NOW + 100)
    storage.create_refresh_token(laptop)
    storage.create_refresh_token(phone)
    assert storage.list_refresh_tokens("user-1", "local") == [laptop, phone]
    storage.delete_refresh_token("laptop")
    assert storage.get_refresh_token("phone") == phone


# -- passwords -------------------------------------------------------------------------------
def test_password_lookup_is_case_insensitive(storage: Storage, samples: Any) -> None:
    password = samples.password("Admin@Example.COM")
    storage.create_password(password)
    for spelling in ("admin@example.com", "ADMIN@EXAMPLE.COM", "Admin@Example.COM"):
        assert storage.get_password(spelling) == password  # original spelling kept
    with pytest.raises(AlreadyExistsError):
        storage.create_password(samples.password("admin@example.com"))
    updated = storage.update_password(
        "ADMIN@example.com", lambda p: dataclasses.replace(p, name="Renamed")
    )
    assert storage.get_password("admin@example.com") == updated
    assert updated.name == "Renamed"
    storage.delete_password("aDmIn@eXaMpLe.CoM")
    with pytest.raises(NotFoundError):
        storage.get_password("admin@example.com")


def test_password_lookup_folds_non_ascii_case(storage: Storage, samples: Any) -> None:
    storage.create_password(samples.password("ÅSA@Example.com"))
    assert storage.get_password("åsa@example.com").email == "ÅSA@Example.com"


def test_list_passwords_sorted_by_email(storage: Storage, samples: Any) -> None:
    for email in ("zed@example.com", "Bob@example.com", "alice@example.com"):
        storage.create_password(samples.password(email, user_id=email))
    assert [p.email for p in storage.list_passwords()] == [
        "alice@example.com",
        "Bob@example.com",
        "zed@example.com",
    ]


# -- signing keys ----------------------------------------------------------------------------
def _jwk(kid: str) -> dict[str, Any]:
    return {"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "x": "xx", "y": "yy"}


def test_keys_start_empty(storage: Storage) -> None:
    assert storage.get_keys() == Keys(signing_key=None, verification_keys=(), next_rotation=0.0)


def test_update_keys_stores_the_new_key_set(storage: Storage) -> None:
    first = Keys(SigningKey(_jwk("k1") | {"d": "secret"}), (), NOW + 3600)
    assert storage.update_keys(lambda _current: first) == first
    assert storage.get_keys() == first
    second = Keys(
        SigningKey(_jwk("k2")), (VerificationKey(_jwk("k1"), expiry=NOW + 7200),), NOW + 7200
    )
    seen: list[Keys] = []
    storage.update_keys(lambda current: seen.append(current) or second)
    assert seen == [first]
    assert storage.get_keys() == second


def test_rotation_not_due_aborts_and_leaves_keys_untouched(storage: Storage) -> None:
    current = Keys(SigningKey(_jwk("k1")), (VerificationKey(_jwk("k0"), NOW),), NOW + 3600)
    storage.update_keys(lambda _k: current)

    def rotate_if_due(keys: Keys) -> Keys:
        if keys.next_rotation > NOW:
            raise RotationNotDueError("another replica rotated")
        return Keys(SigningKey(_jwk("k2")), (), NOW + 7200)

    with pytest.raises(RotationNotDueError):
        storage.update_keys(rotate_if_due)
    assert storage.get_keys() == current


# -- revocation ------------------------------------------------------------------------------
def test_revoke_token_is_remembered_and_idempotent(storage: Storage) -> None:
    assert not storage.is_token_revoked("jti-1")
    storage.revoke_token("jti-1", NOW + 60)
    storage.revoke_token("jti-1", NOW + 60)
    assert storage.is_token_revoked("jti-1")
    assert not storage.is_token_revoked("jti-2")


def test_revocation_keeps_the_later_expiry(storage: Storage) -> None:
    storage.revoke_token("jti-1", NOW + 100)
    storage.revoke_token("jti-1", NOW + 10)  # an earlier expiry must not shorten it
    storage.garbage_collect(NOW + 50)
    assert storage.is_token_revoked("jti-1")
    storage.garbage_collect(NOW + 101)
    assert not storage.is_token_revoked("jti-1")


# -- single-use keys ------------------------------------------------------------------------
def test_claim_once_admits_only_the_first_claim(storage: Storage) -> None:
    assert storage.claim_once("saml:id-1", NOW + 60)
    assert not storage.claim_once("saml:id-1", NOW + 60)
    assert not storage.claim_once("saml:id-1", NOW + 3600)
    assert storage.claim_once("saml:id-2", NOW + 60)


def test_threads_racing_to_claim_one_key_have_exactly_one_winner(storage: Storage) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _i: storage.claim_once("saml:race", NOW + 60), range(16)))
    assert results.count(True) == 1


# -- login throttling ------------------------------------------------------------------------
def test_login_failures_counted_inside_sliding_window(storage: Storage) -> None:
    window = 60.0
    assert storage.login_failures("user:alice", NOW, window) == 0
    assert storage.record_login_failure("user:alice", NOW, window) == 1
    assert storage.record_login_failure("user:alice", NOW + 30, window) == 2
    assert storage.record_login_failure("user:alice", NOW + 59, window) == 3
    # At NOW + 60 the first failure has left the (now - window, now] window.
    assert storage.record_login_failure("user:alice", NOW + 60, window) == 3
    assert storage.login_failures("user:alice", NOW + 60, window) == 3
    assert storage.login_failures("user:alice", NOW + 200, window) == 0
    assert storage.login_failures("user:alice", NOW + 200, 1000.0) == 4


def test_login_failures_are_per_key_and_clearable(storage: Storage) -> None:
    for _ in range(3):
        storage.record_login_failure("user:alice", NOW, 60)
    storage.record_login_failure("ip:10.0.0.1", NOW, 60)
    assert storage.login_failures("user:alice", NOW, 60) == 3
    assert storage.login_failures("ip:10.0.0.1", NOW, 60) == 1
    storage.clear_login_failures("user:alice")
    storage.clear_login_failures("user:never-failed")
    assert storage.login_failures("user:alice", NOW, 60) == 0
    assert storage.login_failures("ip:10.0.0.1", NOW, 60) == 1


# -- garbage collection ----------------------------------------------------------------------
def test_gc_deletes_only_expired_records(storage: Storage, samples: Any) -> None:
    storage.create_auth_request(samples.auth_request("req-old", expiry=NOW - 1))
    storage.create_auth_request(samples.auth_request("req-live", expiry=NOW + 1))
    storage.create_auth_code(samples.auth_code("code-old", expiry=NOW - 1))
    storage.create_auth_code(samples.auth_code("code-live", expiry=NOW + 1))
    storage.create_refresh_token(samples.refresh_token("rt-old", expires_at=NOW - 1))
    storage.create_refresh_token(samples.refresh_token("rt-live", expires_at=NOW + 1))
    storage.create_refresh_token(samples.refresh_token("rt-forever", expires_at=0.0))
    storage.revoke_token("jti-old", NOW - 1)
    storage.revoke_token("jti-live", NOW + 1)
    storage.update_keys(
        lambda _k: Keys(
            SigningKey(_jwk("current")),
            (VerificationKey(_jwk("old"), NOW - 1), VerificationKey(_jwk("live"), NOW + 1)),
            NOW + 3600,
        )
    )
    storage.record_login_failure("user:a", NOW - 2 * 86400, 60)
    storage.record_login_failure("user:a", NOW, 60)
    assert storage.claim_once("saml:old", NOW - 1)
    assert storage.claim_once("saml:live", NOW + 1)
    storage.create_client(samples.client("static"))
    storage.create_password(samples.password())

    result = storage.garbage_collect(NOW)

    assert result.auth_requests == 1
    assert result.auth_codes == 1
    assert result.refresh_tokens == 1
    assert result.revoked_tokens == 1
    assert result.verification_keys == 1
    assert result.login_attempts == 1
    assert result.single_use_keys == 1
    assert result.total == 7
    with pytest.raises(NotFoundError):
        storage.get_auth_request("req-old")
    assert storage.get_auth_request("req-live").id == "req-live"
    with pytest.raises(NotFoundError):
        storage.consume_auth_code("code-old", NOW, "example-app")
    assert storage.consume_auth_code("code-live", NOW, "example-app").id == "code-live"
    assert sorted(t.id for t in storage.list_refresh_tokens()) == ["rt-forever", "rt-live"]
    assert not storage.is_token_revoked("jti-old")
    assert storage.is_token_revoked("jti-live")
    keys = storage.get_keys()
    assert [k.jwk["kid"] for k in keys.verification_keys] == ["live"]
    assert keys.signing_key == SigningKey(_jwk("current"))
    assert storage.login_failures("user:a", NOW, 10 * 86400) == 1
    assert not storage.claim_once("saml:live", NOW + 1)
    assert storage.claim_once("saml:old", NOW + 60)  # collected, so claimable again
    assert storage.get_client("static").id == "static"
    assert storage.list_passwords() == [samples.password()]
    assert storage.garbage_collect(NOW).total == 0


def test_gc_never_collects_refresh_tokens_without_expiry(storage: Storage, samples: Any) -> None:
    storage.create_refresh_token(samples.refresh_token("forever", expires_at=0.0))
    assert storage.garbage_collect(NOW + 10 * 365 * 86400).refresh_tokens == 0
    assert storage.get_refresh_token("forever").id == "forever"


def test_gc_deletes_registered_clients_past_their_unused_expiry(
    storage: Storage, samples: Any
) -> None:
    storage.create_client(samples.client("stale", expires_at=NOW - 1))
    storage.create_client(samples.client("fresh", expires_at=NOW + 3600))
    storage.create_client(samples.client("admin-made", expires_at=0.0))
    assert storage.garbage_collect(NOW).clients == 1
    assert sorted(c.id for c in storage.list_clients()) == ["admin-made", "fresh"]


def test_gc_is_bounded_by_batch_size(storage: Storage, samples: Any) -> None:
    for i in range(7):
        storage.create_auth_request(samples.auth_request(f"r{i}", expiry=NOW - 1))
        storage.create_auth_code(samples.auth_code(f"c{i}", expiry=NOW - 1))
        storage.create_refresh_token(samples.refresh_token(f"t{i}", expires_at=NOW - 1))
        storage.revoke_token(f"j{i}", NOW - 1)
        storage.record_login_failure(f"user:{i % 2}", NOW - 2 * 86400, 60)
    storage.create_auth_request(samples.auth_request("live", expiry=NOW + 1))

    passes = [storage.garbage_collect(NOW, batch_size=3) for _ in range(4)]

    for field in ("auth_requests", "auth_codes", "refresh_tokens", "revoked_tokens"):
        assert [getattr(p, field) for p in passes] == [3, 3, 1, 0], field
    assert [p.login_attempts for p in passes] == [3, 3, 1, 0]
    assert storage.get_auth_request("live").id == "live"
    assert storage.list_refresh_tokens() == []


def test_gc_rejects_a_non_positive_batch(storage: Storage) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        storage.garbage_collect(NOW, batch_size=0)


# -- concurrency inside one process (threads: the ASGI thread pool, the GC thread) -----------
def test_concurrent_updaters_from_threads_lose_no_increment(storage: Storage, samples: Any) -> None:
    storage.create_refresh_token(samples.refresh_token("counter", last_used=0.0))
    threads, increments = 4, 50

    def bump() -> None:
        for _ in range(increments):
            storage.update_refresh_token(
                "counter", lambda t: dataclasses.replace(t, last_used=t.last_used + 1)
            )

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(bump) for _ in range(threads)]:
            future.result()
    assert storage.get_refresh_token("counter").last_used == threads * increments


def test_threads_racing_for_one_code_have_exactly_one_winner(
    storage: Storage, samples: Any
) -> None:
    codes, threads = 30, 4
    for i in range(codes):
        storage.create_auth_code(samples.auth_code(f"c{i}"))
    barrier = threading.Barrier(threads)

    def consume_all() -> list[int]:
        barrier.wait()
        won = []
        for i in range(codes):
            try:
                storage.consume_auth_code(f"c{i}", NOW, "example-app")
                won.append(i)
            except CodeReplayedError:
                pass
        return won

    with ThreadPoolExecutor(threads) as pool:
        results = [f.result() for f in [pool.submit(consume_all) for _ in range(threads)]]
    assert sorted(i for won in results for i in won) == list(range(codes))
