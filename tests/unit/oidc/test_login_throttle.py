"""The password-login throttle (``oidc.throttle`` through ``authorize.PasswordLogin``, the one
sequence the login form and the password grant share), attacked the way issue 9 did:

* finding 1: parallel wrong guesses must be counted before the password is checked, so no
  more than the limit ever reach the connector, however many arrive at once;
* finding 2: a stranger must not keep a known user out: the hard limit is per (user, client
  address), the per-user limit is a capped progressive delay, and ``Retry-After`` is the real
  time left, not the whole window.
"""

from __future__ import annotations

import anyio
import pytest
from portcullis.connectors.base import ConnectorError, Scopes
from portcullis.connectors.mock import MockPasswordConfig, MockPasswordConnector
from portcullis.oidc.authorize import InvalidCredentialsError
from portcullis.oidc.throttle import ThrottledError
from portcullis.storage.models import Identity

from tests.support.oidc_provider import PASSWORD, USERNAME, World

pytestmark = pytest.mark.anyio

ATTACKER = "198.51.100.66"
OWNER = "192.0.2.7"
# web.passwordThrottle defaults: maxFailuresPerUser 5, window 15m, userDelay 1s, maxUserDelay 1m.
LIMIT = 5
WINDOW = 900


class SlowPasswordCheck(MockPasswordConnector):
    """The mock password connector taking a moment to answer, like bcrypt or an LDAP bind:
    the time in which parallel guesses used to slip past a check-then-record throttle."""

    def __init__(self, config: MockPasswordConfig) -> None:
        super().__init__("slow", "Slow", "mockPassword", config)
        self.checked = 0

    async def login(self, scopes: Scopes, username: str, password: str) -> Identity | None:
        self.checked += 1
        await anyio.sleep(0.05)
        return await super().login(scopes, username, password)


async def _attempt(
    world: World, password: str, client_ip: str, username: str = USERNAME
) -> Identity | None:
    """One password attempt through the shared sequence: the identity, or None when refused
    as a wrong password; ThrottledError propagates."""
    try:
        return await world.provider.password_login.attempt(
            world.connector, ("openid",), username, password, client_ip
        )
    except InvalidCredentialsError:
        return None


async def _retry_after(world: World, password: str, client_ip: str) -> int:
    with pytest.raises(ThrottledError) as refused:
        await _attempt(world, password, client_ip)
    return refused.value.retry_after


async def test_parallel_wrong_guesses_are_counted_before_the_password_is_checked(
    world: World,
) -> None:
    slow = SlowPasswordCheck(world.connector._config)
    outcomes: list[str] = []

    async def guess(n: int) -> None:
        try:
            await world.provider.password_login.attempt(
                slow, ("openid",), USERNAME, f"wrong-{n}", ATTACKER
            )
        except InvalidCredentialsError:
            outcomes.append("wrong")
        except ThrottledError:
            outcomes.append("throttled")

    async with anyio.create_task_group() as group:
        for n in range(25):
            group.start_soon(guess, n)

    assert sorted(outcomes) == ["throttled"] * 20 + ["wrong"] * LIMIT
    assert slow.checked == LIMIT  # the other 20 never reached the password check


async def test_a_stranger_cannot_lock_a_known_user_out(world: World) -> None:
    for _ in range(LIMIT):
        assert await _attempt(world, "wrong", ATTACKER) is None
    for _ in range(5):  # the attacker's address is refused for this user ...
        with pytest.raises(ThrottledError):
            await _attempt(world, "wrong", ATTACKER)

    # ... while the owner, from their own address, waits at most the first progressive delay.
    assert await _retry_after(world, PASSWORD, OWNER) <= 1
    world.clock.advance(1)
    assert await _attempt(world, PASSWORD, OWNER) is not None
    # The owner's success does not unlock the attacker's address.
    with pytest.raises(ThrottledError):
        await _attempt(world, PASSWORD, ATTACKER)


async def test_retry_after_is_the_time_left_until_the_oldest_failure_leaves_the_window(
    world: World,
) -> None:
    assert await _attempt(world, "wrong", ATTACKER) is None
    world.clock.advance(100)
    for _ in range(LIMIT - 1):
        assert await _attempt(world, "wrong", ATTACKER) is None
    world.clock.advance(50)

    assert await _retry_after(world, "wrong", ATTACKER) == WINDOW - 150
    world.clock.advance(WINDOW - 150)
    # The oldest failure has left the window: one more attempt is admitted.
    assert await _attempt(world, "wrong", ATTACKER) is None
    assert await _retry_after(world, "wrong", ATTACKER) == 100


async def test_failures_from_many_addresses_slow_the_user_down_progressively(
    world: World,
) -> None:
    for n in range(LIMIT):
        assert await _attempt(world, "wrong", f"203.0.113.{n}") is None
    delays = []
    for n in range(LIMIT, LIMIT + 9):
        wait = await _retry_after(world, "wrong", f"203.0.113.{n}")
        delays.append(wait)
        world.clock.advance(wait)
        assert await _attempt(world, "wrong", f"203.0.113.{n}") is None
    # Doubling from web.passwordThrottle.userDelay, capped at maxUserDelay.
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


async def test_refused_attempts_do_not_extend_the_delay(world: World) -> None:
    for n in range(LIMIT):
        assert await _attempt(world, "wrong", f"203.0.113.{n}") is None
    for _ in range(10):  # hammering while delayed is refused without being counted
        await _retry_after(world, "wrong", "203.0.113.99")
    world.clock.advance(1)
    assert await _attempt(world, PASSWORD, OWNER) is not None


async def test_an_upstream_failure_is_not_counted_against_the_user(world: World) -> None:
    class Down(MockPasswordConnector):
        async def login(self, scopes: Scopes, username: str, password: str) -> Identity | None:
            raise ConnectorError("ldap server unreachable")

    down = Down("down", "Down", "mockPassword", world.connector._config)
    for _ in range(2 * LIMIT):
        with pytest.raises(ConnectorError):
            await world.provider.password_login.attempt(
                down, ("openid",), USERNAME, PASSWORD, OWNER
            )
    assert await _attempt(world, PASSWORD, OWNER) is not None


async def test_spraying_many_users_from_one_address_is_still_refused(world: World) -> None:
    for n in range(20):  # web.passwordThrottle.maxFailuresPerIP defaults to 20
        assert await _attempt(world, "Spray-1", ATTACKER, username=f"user{n}") is None
    with pytest.raises(ThrottledError):
        await _attempt(world, PASSWORD, ATTACKER)
