"""web.hot_paths answers discovery, JWKS and /token exactly as the Starlette routes behind it.

Two apps over one provider — the public app as served, and the same app built with
``hot_paths=False`` — get the same requests as raw ASGI calls; status, headers (as a multiset)
and body must agree, including the refusals (wrong secret, not a form, repeated parameters,
oversized and chunked bodies, too many fields) and the 304 answers. JWKS follows a key rotation
with the next request, and every answer is counted in the metrics under the label the
access-log middleware uses. The form parser is checked against Starlette's on generated bodies.
"""

from __future__ import annotations

import base64
import json
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from portcullis.clock import FrozenClock
from portcullis.issuer import Issuer, create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage
from portcullis.telemetry import Metrics
from portcullis.web.app import client_ip_resolver, web_app
from portcullis.web.hot_paths import HotPaths, StaticAnswers, parse_form
from portcullis.web.pages import Pages
from starlette.datastructures import Headers
from starlette.formparsers import FormParser
from starlette.types import ASGIApp, Message

ISSUER = "http://127.0.0.1:5556/dex"
SECRET = "hot-secret-0123456789abcdef"
BASIC = "Basic " + base64.b64encode(f"svc:{SECRET}".encode()).decode()
FORM = "application/x-www-form-urlencoded"
DISCOVERY = "/dex/.well-known/openid-configuration"
PATHS = (
    DISCOVERY,
    "/dex/.well-known/oauth-authorization-server",
    "/.well-known/oauth-authorization-server/dex",
    "/dex/keys",
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(issuer: str = ISSUER) -> str:
    return textwrap.dedent(
        f"""
        issuer: {issuer}
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556, allowedOrigins: ["https://app.example"]}}
        oauth2: {{grantTypes: [authorization_code, refresh_token, client_credentials]}}
        staticClients:
          - id: svc
            secret: {SECRET}
            redirectURIs: ["http://127.0.0.1:5555/callback"]
        connectors: [{{type: mockCallback, id: mock, name: Mock}}]
        """
    )


class Apps:
    def __init__(self, issuer: Issuer, slow: ASGIApp, slow_metrics: Metrics) -> None:
        self.issuer = issuer
        self.fast = issuer.app
        self.slow = slow
        self.slow_metrics = slow_metrics


def _apps(issuer_url: str = ISSUER) -> Apps:
    issuer = create_issuer(
        parse_config(_config(issuer_url)),
        storage=MemoryStorage(),
        clock=FrozenClock(1_800_000_000.0),
    )
    config = issuer.config
    metrics = Metrics()
    slow = web_app(
        config,
        issuer.provider,
        pages=Pages(config.raw.frontend, config.issuer_path),
        ip_resolver=client_ip_resolver(config),
        metrics=metrics,
        readiness=issuer.readiness,
        hot_paths=False,
    )
    return Apps(issuer, slow, metrics)


@pytest.fixture
def apps() -> Apps:
    return _apps()


Answer = tuple[int, Counter[tuple[bytes, bytes]], bytes]


async def call(
    app: ASGIApp,
    method: str,
    path: str,
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    chunks: list[bytes] | None = None,
    *,
    disconnect: bool = False,
) -> Answer | None:
    """One raw ASGI request; the answer, or None when nothing was sent."""
    chunks = chunks or [b""]
    incoming: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    if disconnect:
        incoming[-1]["more_body"] = True
        incoming.append({"type": "http.disconnect"})
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5556),
    }
    try:
        await app(scope, receive, send)
    except Exception:  # a disconnect surfaces as ClientDisconnect in the app
        if not disconnect:
            raise
    if not sent:
        return None
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], Counter(start["headers"]), body


async def both(apps: Apps, *args: Any, **kwargs: Any) -> tuple[Answer | None, Answer | None]:
    return await call(apps.fast, *args, **kwargs), await call(apps.slow, *args, **kwargs)


def _token_headers(body: bytes, **extra: str) -> list[tuple[str, str]]:
    headers = [("host", "127.0.0.1:5556"), ("content-type", FORM)]
    headers.append(("content-length", str(len(body))))
    headers += [(k.replace("_", "-"), v) for k, v in extra.items()]
    return headers


async def test_discovery_and_jwks_match_the_app(apps: Apps) -> None:
    for path in PATHS:
        fast, slow = await both(apps, "GET", path, [("host", "x")])
        assert fast is not None
        assert fast == slow, path
        assert fast[0] == 200
        etag = dict(fast[1].keys())[b"etag"].decode()
        for header in (etag, '"other"'):
            fast, slow = await both(apps, "GET", path, [("host", "x"), ("if-none-match", header)])
            assert fast == slow, (path, header)
        assert (await call(apps.fast, "GET", path, [("if-none-match", etag)]) or (0,))[0] == 304
        # Left to the app, so still the same: CORS, HEAD, a GET with a body.
        cors = [("origin", "https://app.example")]
        large = [("content-length", "20000")]
        for method, headers in (("GET", cors), ("HEAD", []), ("GET", large)):
            fast, slow = await both(apps, method, path, headers)
            assert fast == slow, (path, method, headers)
        # A GET with a small body (wrk sends "Content-Length: 0") is answered the same.
        fast, slow = await both(apps, "GET", path, [("content-length", "0")])
        assert fast == slow


async def test_jwks_follows_a_rotation_with_the_next_request(apps: Apps) -> None:
    before = await call(apps.fast, "GET", "/dex/keys")
    assert before is not None
    keys = apps.issuer.provider.keys
    assert keys.rotate_if_due(force=True)
    after, slow = await both(apps, "GET", "/dex/keys")
    assert after == slow
    assert after is not None
    assert after[2] != before[2]
    assert dict(after[1].keys())[b"etag"] != dict(before[1].keys())[b"etag"]
    kids = {key["kid"] for key in json.loads(after[2])["keys"]}
    assert keys.cached().signing_kid in kids


async def test_token_answers_match_the_app(apps: Apps) -> None:
    grant = b"grant_type=client_credentials&scope=openid"
    headers = _token_headers(grant, authorization=BASIC)
    fast, slow = await both(apps, "POST", "/dex/token", headers, [grant])
    assert fast is not None
    assert slow is not None
    assert fast[:2] == slow[:2]
    assert fast[0] == 200, fast[2]
    assert json.loads(fast[2]).keys() == json.loads(slow[2]).keys()
    claims = apps.issuer.provider.keys.verify(json.loads(fast[2])["id_token"])
    assert claims["sub"] == "svc"

    wrong = "Basic " + base64.b64encode(b"svc:wrong").decode()
    many = b"&".join(b"f%d=1" % i for i in range(1001))
    refusals: list[tuple[list[tuple[str, str]], list[bytes]]] = [
        (_token_headers(grant, authorization=wrong), [grant]),
        (_token_headers(grant), [grant]),  # no client authentication
        (_token_headers(b"grant_type=password"), [b"grant_type=password"]),
        (_token_headers(b"scope=a&scope=b"), [b"scope=a&scope=b"]),
        (_token_headers(b"", authorization=BASIC), [b""]),
        ([("content-type", "application/json"), ("content-length", "2")], [b"{}"]),
        (_token_headers(grant, authorization=BASIC, origin="https://app.example"), [grant]),
        ([("content-type", FORM), ("authorization", BASIC)], [grant[:10], grant[10:]]),
        ([("content-type", FORM), ("content-length", str(70000))], [b"a" * 70000]),
        (_token_headers(many, authorization=BASIC), [many]),
    ]
    for headers, chunks in refusals:
        fast, slow = await both(apps, "POST", "/dex/token", headers, chunks)
        assert fast is not None
        assert slow is not None
        assert fast[:2] == slow[:2], headers
        if fast[0] != 200:
            assert fast[2] == slow[2], headers


async def test_a_client_that_leaves_mid_body_is_handled_by_the_app(apps: Apps) -> None:
    body = b"grant_type=client_credentials"
    headers = _token_headers(body + b"&scope=openid", authorization=BASIC)
    fast, slow = await both(apps, "POST", "/dex/token", headers, [body], disconnect=True)
    assert fast == slow


async def test_answers_are_counted_like_the_app_counts_them(apps: Apps) -> None:
    grant = b"grant_type=client_credentials"
    requests: list[tuple[str, str, list[tuple[str, str]], list[bytes]]] = [
        ("GET", DISCOVERY, [], [b""]),
        ("GET", "/dex/keys", [], [b""]),
        ("POST", "/dex/token", _token_headers(grant, authorization=BASIC), [grant]),
        ("POST", "/dex/token", _token_headers(grant), [grant]),
    ]
    for method, path, headers, chunks in requests:
        await both(apps, method, path, headers, chunks)

    def counts(metrics: Metrics) -> dict[tuple[str, ...], float]:
        found: dict[tuple[str, ...], float] = {}
        for family in metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "portcullis_http_requests_total":
                    labels = sample.labels
                    found[(labels["route"], labels["method"], labels["code"])] = sample.value
                elif sample.name == "portcullis_http_request_duration_seconds_count":
                    found[(sample.labels["route"],)] = sample.value
        return found

    fast = counts(apps.issuer.metrics)
    assert fast == counts(apps.slow_metrics)
    assert fast[(DISCOVERY, "GET", "200")] == 1
    assert fast[("/dex/token", "POST", "401")] == 1


def _starlette_form(body: bytes, chunk: int) -> list[tuple[str, str]]:
    import anyio

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    async def parse() -> list[tuple[str, str]]:
        form = await FormParser(Headers({"content-type": FORM}), stream()).parse()
        return [(key, str(value)) for key, value in form.multi_items()]

    return anyio.run(parse)


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(
        st.sampled_from([b"a", b"b", b"=", b"&", b"&&", b"%41", b"%e2%82%ac", b"+", b"%", b"\xff"])
    ).map(b"".join),
    chunk=st.integers(min_value=1, max_value=8),
)
def test_the_form_parser_reads_forms_as_starlette_does(body: bytes, chunk: int) -> None:
    assert parse_form(body) == _starlette_form(body, chunk)


async def test_the_hot_answers_never_reach_the_app(apps: Apps) -> None:
    """The comparisons above would hold if every request fell through to the app: these are
    the requests the raw routes must answer themselves."""

    async def app_must_not_run(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError(f"{scope['method']} {scope['path']} reached the app")

    issuer = apps.issuer
    config = issuer.config
    hot = HotPaths(
        app_must_not_run,
        base=config.issuer_path,
        provider=issuer.provider,
        ip_resolver=client_ip_resolver(config),
        static=StaticAnswers(
            base=config.issuer_path,
            provider=issuer.provider,
            metrics=Metrics(),
            security_headers={"X-Frame-Options": "DENY"},
        ),
        storage_unavailable=app_must_not_run,
    )
    for path in PATHS:
        answer = await call(hot, "GET", path, [("content-length", "0")])
        assert answer is not None
        assert answer[0] == 200
        assert (b"x-frame-options", b"DENY") in answer[1]
        etag = dict(answer[1].keys())[b"etag"].decode()
        assert (await call(hot, "GET", path, [("if-none-match", etag)]) or (0,))[0] == 304
    grant = b"grant_type=client_credentials"
    for headers, status in (
        (_token_headers(grant, authorization=BASIC), 200),
        (_token_headers(grant), 401),
        (_token_headers(b"scope=a&scope=b"), 400),
    ):
        answer = await call(
            hot, "POST", "/dex/token", headers, [grant if status != 400 else b"scope=a&scope=b"]
        )
        assert answer is not None
        assert answer[0] == status


async def test_an_issuer_without_a_path_is_answered_the_same() -> None:
    root = _apps("http://127.0.0.1:5556")
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        fast, slow = await both(root, "GET", path, [("content-length", "0")])
        assert fast == slow
        assert fast is not None
        assert fast[0] == 200
    fast, slow = await both(root, "GET", "/keys")
    assert fast == slow
    grant = b"grant_type=client_credentials"
    headers = _token_headers(grant, authorization=BASIC)
    fast, slow = await both(root, "POST", "/token", headers, [grant])
    assert fast is not None
    assert slow is not None
    assert fast[:2] == slow[:2]
    assert fast[0] == 200
