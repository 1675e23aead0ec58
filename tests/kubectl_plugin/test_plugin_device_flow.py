"""kubectl-portcullis's device flow (RFC 8628) against node-oidc-provider, an independent
implementation: every polling answer — authorization_pending, slow_down, expired_token,
access_denied — and the tokens at the end."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from kubectl_portcullis.jwt import decode_claims

from tests.support.device_peer import DevicePeer, complete_device_login, device_peer
from tests.support.plugin import Plugin, exec_credential

pytestmark = pytest.mark.integration

PROMPT = re.compile(r"visit (http\S+) and enter the code: (\S+)")
COMPLETE = re.compile(r"\(or open (http\S+)\)")


@pytest.fixture(scope="module")
def peer() -> Iterator[DevicePeer]:
    with device_peer() as running:
        yield running


def _args(peer: DevicePeer, client: str) -> list[str]:
    return [
        "get-token",
        f"--issuer={peer.issuer}",
        f"--client-id={client}",
        "--grant-type=device",
        "--skip-open-browser",
    ]


def test_device_login_polls_while_pending_and_prints_the_credential(
    peer: DevicePeer, plugin: Plugin
) -> None:
    running = plugin.start(_args(peer, "kubectl"))
    prompt = running.wait_for_line(PROMPT)
    assert prompt.group(1) == f"{peer.issuer}/device"
    assert re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", prompt.group(2))
    complete = running.wait_for_line(COMPLETE).group(1)
    # Let the plugin hear authorization_pending twice before the person acts.
    peer.wait_for(
        lambda: (
            [p["answer"] for p in peer.polls("kubectl")][-2:]
            == ["authorization_pending", "authorization_pending"]
        )
    )

    page = complete_device_login(complete)
    code, stdout, stderr = running.finish()

    assert "Sign-in Success" in page or "success" in page.lower()
    assert code == 0, stderr
    credential = exec_credential(stdout)
    token = credential["status"]["token"]
    assert token not in stderr
    claims = decode_claims(token)
    assert claims["iss"] == peer.issuer
    assert claims["aud"] == "kubectl"
    assert claims["sub"] == "device-user"
    assert claims["groups"] == ["device-users"]
    assert peer.polls("kubectl")[-1]["answer"] == "tokens"
    # Polls came no faster than the advertised one-second interval.
    gaps = [p["since_previous_ms"] for p in peer.polls("kubectl")]
    assert min(gaps) >= 900, gaps

    # The refresh token is cached: the next call needs no new device login.
    refreshes = len([e for e in list(peer.events) if e["event"] == "refresh"])
    code, stdout, stderr = plugin.run([*_args(peer, "kubectl"), "--force-refresh"])
    assert code == 0, stderr
    assert "enter the code" not in stderr
    assert decode_claims(exec_credential(stdout)["status"]["token"])["sub"] == "device-user"
    new_refreshes = [e for e in list(peer.events) if e["event"] == "refresh"][refreshes:]
    assert [(e["client"], e["status"]) for e in new_refreshes] == [("kubectl", 200)]


def test_slow_down_adds_five_seconds_to_the_polling_interval(
    peer: DevicePeer, plugin: Plugin
) -> None:
    running = plugin.start(_args(peer, "slow-client"))
    complete = running.wait_for_line(COMPLETE).group(1)
    peer.wait_for(lambda: any(p["answer"] == "slow_down" for p in peer.polls("slow-client")))
    complete_device_login(complete)

    code, stdout, stderr = running.finish()

    assert code == 0, stderr
    assert decode_claims(exec_credential(stdout)["status"]["token"])["aud"] == "slow-client"
    polls = peer.polls("slow-client")
    answers = [p["answer"] for p in polls]
    # One slow_down, then (whether the person was quick or not) never again: the plugin obeyed.
    assert answers[0] == "slow_down", answers
    assert answers[-1] == "tokens", answers
    assert set(answers[1:-1]) <= {"authorization_pending"}, answers
    # RFC 8628 §3.5: after slow_down the interval grows by 5 s (1 s advertised -> 6 s).
    assert min(p["since_previous_ms"] for p in polls[1:]) >= 5900, polls


def test_expired_device_code_ends_with_a_clear_error(peer: DevicePeer, plugin: Plugin) -> None:
    code, stdout, stderr = plugin.run(_args(peer, "short-lived"))

    assert code == 1
    assert stdout == ""
    assert "expired (expired_token)" in stderr
    assert "run the command again" in stderr
    assert peer.polls("short-lived")[-1]["answer"] == "expired_token"


def test_denied_device_login_ends_with_access_denied(peer: DevicePeer, plugin: Plugin) -> None:
    before = len(peer.polls("kubectl"))
    running = plugin.start([*_args(peer, "kubectl"), "--scope=email"])
    complete = running.wait_for_line(COMPLETE).group(1)

    complete_device_login(complete, abort=True)
    code, stdout, stderr = running.finish()

    assert code == 1
    assert stdout == ""
    assert "denied (access_denied)" in stderr
    assert peer.polls("kubectl")[before:][-1]["answer"] == "access_denied"
