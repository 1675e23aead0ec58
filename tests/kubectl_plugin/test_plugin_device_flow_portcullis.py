"""kubectl-portcullis's device flow against Portcullis itself (RFC 8628 on both sides): the
plugin asks for a device code, polls while the person enters the code and logs in through the
issuer's HTML pages, then prints the ExecCredential and caches the tokens."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest
from kubectl_portcullis.jwt import decode_claims

from tests.support.issuer import (
    ADMIN_EMAIL,
    Browser,
    Issuer,
    StartIssuer,
    form_action,
    hidden_fields,
)
from tests.support.plugin import Plugin, exec_credential

pytestmark = pytest.mark.integration

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PROMPT = re.compile(r"visit (http\S+) and enter the code: (\S+)")


@pytest.fixture(scope="module")
def device_issuer(module_issuers: StartIssuer) -> Issuer:
    grants = ["authorization_code", "refresh_token", "password", "client_credentials"]
    return module_issuers({"oauth2": {"grantTypes": [*grants, DEVICE_GRANT]}})


def test_device_login_through_portcullis_prints_the_credential_and_caches_it(
    device_issuer: Issuer, plugin: Plugin
) -> None:
    args = [
        "get-token",
        f"--issuer={device_issuer.issuer}",
        "--client-id=kubectl",
        "--grant-type=device",
        "--skip-open-browser",
    ]
    running = plugin.start(args)
    prompt = running.wait_for_line(PROMPT)
    verification_uri, user_code = prompt.group(1), prompt.group(2)
    assert verification_uri == device_issuer.url("/device")

    with Browser(device_issuer) as browser:
        page = browser.get(verification_uri)
        assert page.status_code == 200, page.text[:1000]
        fields = hidden_fields(page.text)
        device_issuer.remember(*fields.values())
        entered = browser.http.post(
            form_action(page.text, verification_uri), data={**fields, "user_code": user_code}
        )
        assert entered.status_code == 303, entered.text[:1000]
        steps = browser.login(urljoin(str(entered.url), entered.headers["location"]))
        assert steps.final is not None
        done = browser.get(urljoin(str(steps.final.url), steps.final.headers["location"]))
        assert done.status_code == 200, done.text[:1000]

    code, stdout, stderr = running.finish()
    assert code == 0, stderr
    token = exec_credential(stdout)["status"]["token"]
    device_issuer.remember(token)
    claims = decode_claims(token)
    assert claims["iss"] == device_issuer.issuer
    assert claims["aud"] == "kubectl"
    assert claims["email"] == ADMIN_EMAIL

    # The second call is served from the cache: no new device login.
    again_code, again_stdout, again_stderr = plugin.run(args)
    assert again_code == 0, again_stderr
    assert exec_credential(again_stdout)["status"]["token"] == token
