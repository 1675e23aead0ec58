"""The plugin against an HTTPS issuer with a private CA (the Helm chart's default): the
certificate is verified, and --certificate-authority / --certificate-authority-data trust it."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubectl_portcullis.jwt import decode_claims

from tests.support.issuer import ADMIN_EMAIL, ADMIN_PASSWORD, Issuer, StartIssuer
from tests.support.kube import ServingCert, make_serving_cert
from tests.support.plugin import Plugin, exec_credential

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_issuer(
    module_issuers: StartIssuer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Issuer, ServingCert]:
    cert = make_serving_cert(tmp_path_factory.mktemp("issuer-tls"))

    def https_only(config: dict[str, Any]) -> None:
        address = config["web"].pop("http")
        config["web"].update(https=address, tlsCert=str(cert.cert), tlsKey=str(cert.key))
        config["issuer"] = config["issuer"].replace("http://", "https://")

    return module_issuers(None, https_only), cert


def _password_args(issuer: Issuer) -> list[str]:
    # The password grant needs a confidential client (RFC 9700 §2.4).
    client_id, secret = issuer.app_auth()
    issuer.remember(secret)
    return [
        "get-token",
        f"--issuer={issuer.issuer}",
        f"--client-id={client_id}",
        f"--client-secret={secret}",
        f"--username={ADMIN_EMAIL}",
        f"--password={ADMIN_PASSWORD}",
    ]


def test_untrusted_issuer_certificate_is_refused(
    tls_issuer: tuple[Issuer, ServingCert], plugin: Plugin
) -> None:
    issuer, _ = tls_issuer
    code, stdout, stderr = plugin.run(_password_args(issuer))
    assert code == 1
    assert stdout == ""
    assert "CERTIFICATE_VERIFY_FAILED" in stderr or "certificate verify failed" in stderr


@pytest.mark.parametrize("how", ["file", "data"])
def test_certificate_authority_flags_trust_a_private_ca(
    tls_issuer: tuple[Issuer, ServingCert], plugin: Plugin, how: str
) -> None:
    issuer, cert = tls_issuer
    flag = (
        f"--certificate-authority={cert.ca}"
        if how == "file"
        else "--certificate-authority-data=" + base64.b64encode(cert.ca.read_bytes()).decode()
    )
    code, stdout, stderr = plugin.run([*_password_args(issuer), flag])
    assert code == 0, stderr
    token = exec_credential(stdout)["status"]["token"]
    issuer.remember(token)
    assert decode_claims(token)["iss"].startswith("https://127.0.0.1:")


def test_insecure_skip_tls_verify_is_honoured(
    tls_issuer: tuple[Issuer, ServingCert], plugin: Plugin
) -> None:
    issuer, _ = tls_issuer
    code, stdout, stderr = plugin.run([*_password_args(issuer), "--insecure-skip-tls-verify"])
    assert code == 0, stderr
    issuer.remember(exec_credential(stdout)["status"]["token"])
