"""One racing worker process for the multi-process storage tests (run as a script).

Usage: storage_race_worker.py STORE CODES INCREMENTS ROUNDS FAILURES

STORE is a SQLite file path, or a JSON object (a postgres ``storage.config``). The worker opens
its own storage and prints "ready". Then, for each of four phases, it waits for a line on stdin
(the parent releases every worker together: a barrier per phase), races the other workers on
the same database and prints one JSON line with what it won and when it ran. The parent checks
that the union of all workers' results is what a serial execution gives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable

from portcullis.config.model import PostgresConfig
from portcullis.storage.base import CodeReplayedError, RotationNotDueError, Storage
from portcullis.storage.models import Keys, RefreshToken, SigningKey, VerificationKey
from portcullis.storage.postgres import PostgresStorage
from portcullis.storage.sqlite import SQLiteStorage


def open_store(spec: str) -> Storage:
    if spec.startswith("{"):
        return PostgresStorage(PostgresConfig.model_validate(json.loads(spec)))
    return SQLiteStorage(spec)


def main() -> None:
    store, codes, increments, rounds, failures = sys.argv[1], *map(int, sys.argv[2:6])
    storage = open_store(store)
    print("ready", flush=True)
    pid = os.getpid()

    def phase(name: str, run: Callable[[], object]) -> None:
        sys.stdin.readline()
        started = time.monotonic()
        outcome = run()
        window = [started, time.monotonic()]
        print(json.dumps({"phase": name, "pid": pid, "result": outcome, "window": window}))
        sys.stdout.flush()

    # 1. Every worker tries to consume every code; exactly one may win each.
    def consume() -> object:
        won, replayed = [], []
        for i in range(codes):
            try:
                storage.consume_auth_code(f"code-{i}", 1000.0 + i, "example-app")
                won.append(i)
            except CodeReplayedError:
                replayed.append(i)
        return {"won": won, "replayed": replayed}

    # 2. Read-modify-write increments of one counter (last_used) must never be lost.
    def increment() -> object:
        def bump(token: RefreshToken) -> RefreshToken:
            return dataclasses.replace(token, last_used=token.last_used + 1)

        for _ in range(increments):
            storage.update_refresh_token("counter", bump)
        return increments

    # 3. Key rotation: round r may rotate only if nobody rotated at a round >= r yet, so under
    # serialisable updates every round rotates exactly once across all workers.
    def rotate_rounds() -> object:
        rotated = []
        for r in range(1, rounds + 1):
            now = r * 100.0

            def rotate(keys: Keys, now: float = now, r: int = r) -> Keys:
                if keys.next_rotation > now:
                    raise RotationNotDueError("already rotated")
                retired = (
                    ()
                    if keys.signing_key is None
                    else (VerificationKey(keys.signing_key.jwk, 1e12),)
                )
                return Keys(
                    SigningKey({"kid": f"round-{r}-pid-{pid}"}),
                    keys.verification_keys + retired,
                    now + 100.0,
                )

            try:
                storage.update_keys(rotate)
                rotated.append(r)
            except RotationNotDueError:
                pass
        return rotated

    # 4. Failed logins counted from several processes.
    def fail_logins() -> object:
        return [
            storage.record_login_failure("ip:192.0.2.1", 5000.0, 3600.0) for _ in range(failures)
        ]

    phase("consume", consume)
    phase("increment", increment)
    phase("rotate", rotate_rounds)
    phase("failures", fail_logins)
    storage.close()


if __name__ == "__main__":
    main()
