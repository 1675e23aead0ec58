"""Storage conformance: consuming an auth code names the client redeeming it, and a code issued
to another client is refused in the same locked transaction without being marked used (issue 9,
finding 9): a client that got hold of someone else's code cannot burn it for its owner."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from portcullis.storage.base import CodeClientMismatchError, CodeReplayedError, Storage

NOW = 1_700_000_000.0


def test_a_code_presented_by_another_client_is_left_unused(storage: Storage, samples: Any) -> None:
    storage.create_auth_code(samples.auth_code("c1", client_id="example-app"))
    with pytest.raises(CodeClientMismatchError):
        storage.consume_auth_code("c1", NOW, "intruder")
    assert storage.consume_auth_code("c1", NOW + 1, "example-app").used_at == NOW + 1
    # Once used, the wrong client still learns nothing more than "not yours".
    with pytest.raises(CodeClientMismatchError):
        storage.consume_auth_code("c1", NOW + 2, "intruder")
    with pytest.raises(CodeReplayedError):
        storage.consume_auth_code("c1", NOW + 3, "example-app")


def test_racing_wrong_clients_never_beat_the_owner(storage: Storage, samples: Any) -> None:
    storage.create_auth_code(samples.auth_code("c1", client_id="example-app"))

    def redeem(i: int) -> str:
        client = "example-app" if i == 7 else f"intruder-{i}"
        try:
            storage.consume_auth_code("c1", NOW, client)
        except CodeClientMismatchError:
            return "mismatch"
        return "won"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(redeem, range(16)))
    assert outcomes.count("won") == 1
    assert outcomes[7] == "won"
