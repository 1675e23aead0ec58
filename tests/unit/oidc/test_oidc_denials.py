"""Which tokens and refresh families the deny list of `portcullis revoke` refuses: only those
issued at or before the denial of their subject, one of their clients or groups."""

from __future__ import annotations

from typing import Any

from portcullis.oidc.denials import (
    CLIENT,
    GROUP,
    SUBJECT,
    family_denied,
    issued_before_denial,
    token_subjects,
)
from portcullis.storage.memory import MemoryStorage

NOW = 1_700_000_000.0


def _claims(**changes: Any) -> dict[str, Any]:
    return {"sub": "s1", "aud": "kubectl", "iat": int(NOW) - 10, "groups": ["dev"], **changes}


def test_token_subjects_cover_sub_every_audience_azp_client_id_and_groups() -> None:
    claims = _claims(aud=["kubectl", "peer"], azp="kubectl", client_id="bot", groups=["a", "a"])
    assert token_subjects(claims) == [
        (SUBJECT, "s1"),
        (CLIENT, "kubectl"),
        (CLIENT, "peer"),
        (CLIENT, "bot"),
        (GROUP, "a"),
    ]
    # Claims of the wrong type name nothing (they cannot smuggle a match either way).
    assert token_subjects({"sub": 3, "aud": None, "groups": "dev"}) == []


def test_only_tokens_issued_up_to_the_denial_are_refused() -> None:
    storage = MemoryStorage()
    assert not issued_before_denial(storage, _claims(), NOW)
    storage.deny_subject(GROUP, "dev", NOW, NOW + 3600)
    assert issued_before_denial(storage, _claims(), NOW)
    assert issued_before_denial(storage, _claims(iat=int(NOW)), NOW)  # the same second
    assert issued_before_denial(storage, _claims(iat="soon"), NOW)  # no usable iat
    assert not issued_before_denial(storage, _claims(iat=int(NOW) + 1), NOW + 1)
    assert not issued_before_denial(storage, _claims(groups=["ops"]), NOW)
    # Once the longest token lifetime has passed, the denial no longer counts.
    assert not issued_before_denial(storage, _claims(), NOW + 3601)


def test_refresh_families_created_before_the_denial_are_refused() -> None:
    storage = MemoryStorage()
    storage.deny_subject(CLIENT, "kubectl", NOW, NOW + 3600)

    def denied(created_at: float, client_id: str = "kubectl") -> bool:
        return family_denied(
            storage, sub="s1", client_id=client_id, groups=(), created_at=created_at, now=NOW
        )

    assert denied(NOW - 100)
    assert denied(NOW)
    assert not denied(NOW + 0.5)
    assert not denied(NOW - 100, client_id="other")
