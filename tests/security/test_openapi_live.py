"""docs/openapi.yaml is a valid OpenAPI 3.1 description of every route the issuer serves, and a
live `portcullis serve` conforms to it under schemathesis' generated requests (valid and
invalid): no 5xx, every status, media type, header and body as documented.

Why against a real process: the schema promises what an operator's clients see over the wire
(uvicorn's parsing, the middleware, the error pages), which only the real server shows. The
examples are bounded and derandomized, so the run is deterministic and takes well under a
minute; a failure prints the exact request (schemathesis' reproduction) to replay.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from portcullis.issuer import create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Mount, Route

from tests.support.issuer import REPO_ROOT, Issuer, issuers_in

OPENAPI = REPO_ROOT / "docs" / "openapi.yaml"
EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Served, but not part of the API: files (their content is the operator's) and the per-connector
# callback alias of /callback.
UNDESCRIBED = {"/static/{path:path}", "/theme/{path:path}", "/callback/{connector}"}


def _document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    return document


# Operations whose every input is an unconstrained optional string: no request violates their
# schema, so there is nothing for the negative mode to generate.
UNCONSTRAINED = {
    ("/.well-known/openid-configuration", "GET"),
    ("/.well-known/oauth-authorization-server", "GET"),
    ("/keys", "GET"),
    ("/userinfo", "GET"),
    ("/token/introspect", "POST"),
    ("/token/revoke", "POST"),
    ("/healthz", "GET"),
    ("/robots.txt", "GET"),
}


def _operations() -> list[tuple[str, str]]:
    return [
        (path, method.upper())
        for path, item in _document()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    ]


def _cases() -> list[Any]:
    """(path, method, mode): positive for every operation, negative where inputs can be wrong."""
    return [
        pytest.param(path, method, mode, id=f"{method} {path} {mode.value}")
        for path, method in _operations()
        for mode in GenerationMode
        if mode is GenerationMode.POSITIVE or (path, method) not in UNCONSTRAINED
    ]


def test_openapi_document_is_valid_openapi_3_1() -> None:
    document = _document()
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()


def test_openapi_document_describes_every_route_the_issuer_serves() -> None:
    config = parse_config(
        "issuer: http://127.0.0.1:5556/dex\nstorage: {type: memory}\n"
        "web: {http: 127.0.0.1:5556}\nenablePasswordDB: true\n"
        # The device grant and registration add routes; every optional route is served here.
        "oauth2: {grantTypes: [authorization_code, refresh_token, "
        "'urn:ietf:params:oauth:grant-type:device_code']}\n"
        "registration: {enabled: true, allowLoopbackRedirectURIs: true}\n"
    )
    issuer = create_issuer(config, storage=MemoryStorage())
    mount = next(r for r in issuer.app.routes if isinstance(r, Mount))
    served: dict[str, set[str]] = {}
    for route in mount.routes:
        assert isinstance(route, Route)
        methods = (route.methods or set()) - {"HEAD", "OPTIONS"}
        served[route.path] = methods
    described = {
        path: {method.upper() for method in item} for path, item in _document()["paths"].items()
    }
    for path, methods in served.items():
        if path in UNDESCRIBED:
            continue
        assert path in described, f"{path} is served but not in docs/openapi.yaml"
        missing = methods - described[path]
        # /callback's POST is the SAML form-post binding: HTML in, redirect out, as GET.
        if path == "/callback":
            missing -= {"POST"}
        assert not missing, f"{path}: {sorted(missing)} served but not described"
    assert set(described) - set(served) == set(), "described paths the issuer does not serve"


def test_endpoints_doc_links_the_openapi_description() -> None:
    assert "openapi.yaml" in (REPO_ROOT / "docs" / "endpoints.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    def with_optional_routes(config: dict[str, Any]) -> None:
        # Every documented route is served: the device and registration endpoints included.
        config["oauth2"]["grantTypes"].append("urn:ietf:params:oauth:grant-type:device_code")
        config["registration"] = {"enabled": True, "allowLoopbackRedirectURIs": True}

    with issuers_in(tmp_path_factory.mktemp("openapi")) as start:
        yield start(edit=with_optional_routes)


@pytest.fixture(scope="module")
def live_schema(live: Issuer) -> Any:
    document = _document()
    document["servers"] = [{"url": live.issuer}]
    return schemathesis.openapi.from_dict(document)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(("path", "method", "mode"), _cases())
def test_live_server_conforms_to_openapi(
    live: Issuer, live_schema: Any, path: str, method: str, mode: GenerationMode
) -> None:
    """Valid requests (positive) and schema-violating ones (negative) alike."""
    operation = live_schema[path][method]

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case: Any) -> None:
        response = case.call(base_url=live.issuer, timeout=10)
        case.validate_response(response, checks=CHECKS)

    exercise()
    assert live.running, live.logs()[-3000:]
    # A 5xx shows up above; an unhandled exception that still produced a 4xx does not, so the
    # server log must not hold one either.
    assert "Traceback" not in live.logs(), live.logs()[-5000:]
