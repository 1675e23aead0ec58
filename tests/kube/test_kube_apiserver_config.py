"""`portcullis kube apiserver-config`: the kube-apiserver flags and AuthenticationConfiguration
are well-formed (a strict schema written from the Go types, since kubernetes-validate ships none
for this kind) and name users and groups exactly as the TokenReview webhook does."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from portcullis.cli import main
from portcullis.config.load import ConfigError
from portcullis.issuer import parse_config
from portcullis.kube.apiserver import (
    ApiserverConfigError,
    apiserver_flags,
    authentication_config,
    issuer_ca_from_tls_cert,
    settings_for,
)
from portcullis.kube.usermap import ClaimMapping

from tests.support.admin import make_tls_files
from tests.support.kube import make_serving_cert

SCHEMA = json.loads(
    (Path(__file__).parents[1] / "support/schemas/authenticationconfiguration.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
# Every --oidc-* flag kube-apiserver knows (pkg/kubeapiserver/options/authentication.go).
KNOWN_FLAGS = {
    "--oidc-issuer-url",
    "--oidc-client-id",
    "--oidc-ca-file",
    "--oidc-username-claim",
    "--oidc-username-prefix",
    "--oidc-groups-claim",
    "--oidc-groups-prefix",
    "--oidc-signing-algs",
    "--oidc-required-claim",
}
CLUSTER = {"name": "prod", "server": "https://k8s.example.com:6443"}


def _document(**kubernetes: Any) -> dict[str, Any]:
    return {
        "issuer": "https://issuer.example.com/dex",
        "storage": {"type": "memory"},
        "web": {"http": "127.0.0.1:5556"},
        "enablePasswordDB": True,
        "staticClients": [{"id": "kubectl", "name": "K8s", "public": True}],
        "kubernetes": {
            "kubeconfigPage": {"enabled": True, "clientID": "kubectl", "clusters": [CLUSTER]},
            **kubernetes,
        },
    }


def _config(**kubernetes: Any) -> Any:
    return parse_config(yaml.safe_dump(_document(**kubernetes)), environ={})


def _errors(document: dict[str, Any]) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(document)]


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_authentication_config_validates_and_maps_like_the_webhook(version: Any) -> None:
    config = _config()
    settings = settings_for(config, "prod", "")
    document = authentication_config(settings, version)
    assert _errors(document) == []
    assert document["apiVersion"] == f"apiserver.config.k8s.io/{version}"
    (jwt,) = document["jwt"]
    assert jwt["issuer"] == {"url": "https://issuer.example.com/dex", "audiences": ["kubectl"]}
    mapping = ClaimMapping.from_config(config.raw.kubernetes.token_review)
    # usernameClaim email: a verified email else the subject, both behind the webhook's prefix.
    expression = jwt["claimMappings"]["username"]["expression"]
    assert expression.startswith(json.dumps(mapping.username_prefix) + " + ")
    assert "claims.email_verified == true" in expression
    assert expression.endswith("? claims.email : claims.sub)")
    assert jwt["claimMappings"]["groups"] == {
        "claim": mapping.groups_claim,
        "prefix": mapping.groups_prefix,
    }
    assert jwt["claimMappings"]["uid"] == {"claim": "sub"}


def test_other_username_claims_map_with_claim_and_prefix() -> None:
    review = {
        "enabled": True,
        "addr": "127.0.0.1:5559",
        "audiences": ["kubectl"],
        "usernameClaim": "preferred_username",
        "usernamePrefix": "",
        "groupsPrefix": "corp:",
    }
    settings = settings_for(_config(tokenReview=review), "prod")
    document = authentication_config(settings)
    assert _errors(document) == []
    mappings = document["jwt"][0]["claimMappings"]
    assert mappings["username"] == {"claim": "preferred_username", "prefix": ""}
    assert mappings["groups"] == {"claim": "groups", "prefix": "corp:"}
    flags = apiserver_flags(settings)
    # An empty flag prefix would mean "issuer URL#" to kube-apiserver: "-" means none.
    assert "--oidc-username-prefix=-" in flags
    assert "--oidc-groups-prefix=corp:" in flags


def test_the_schema_is_strict() -> None:
    document = authentication_config(settings_for(_config(), "prod"))
    jwt = document["jwt"][0]
    bad_prefix = {**jwt["claimMappings"], "username": {"claim": "email"}}  # prefix required
    both = {**jwt["claimMappings"], "username": {"claim": "sub", "prefix": "", "expression": "x"}}
    unknown = {**jwt["issuer"], "audience": "kubectl"}
    many = {**jwt["issuer"], "audiences": ["a", "b"]}  # needs audienceMatchPolicy
    for broken in (
        {**jwt, "claimMappings": bad_prefix},
        {**jwt, "claimMappings": both},
        {**jwt, "issuer": unknown},
        {**jwt, "issuer": many},
        {**jwt, "issuer": {**jwt["issuer"], "url": "http://issuer.example.com"}},
    ):
        assert _errors({**document, "jwt": [broken]}), broken
    assert _errors({**document, "apiVersion": "apiserver.config.k8s.io/v1alpha2"})


def test_flags_are_well_formed() -> None:
    settings = settings_for(_config(), "prod", "-----BEGIN CERTIFICATE-----\n")
    flags = apiserver_flags(settings, "/etc/pki/issuer.pem")
    for flag in flags:
        match = re.fullmatch(r"(--oidc-[a-z-]+)=(\S+)", flag)
        assert match, flag
        assert match.group(1) in KNOWN_FLAGS
    names = [f.partition("=")[0] for f in flags]
    assert len(names) == len(set(names))
    assert flags[:2] == [
        "--oidc-issuer-url=https://issuer.example.com/dex",
        "--oidc-client-id=kubectl",
    ]
    assert "--oidc-ca-file=/etc/pki/issuer.pem" in flags
    assert "--oidc-signing-algs=RS256" in flags


def test_unknown_cluster_and_http_issuers_are_refused() -> None:
    with pytest.raises(ApiserverConfigError, match="--cluster 'dev': not in kubernetes"):
        settings_for(_config(), "dev")
    document = _document()
    document["issuer"] = "http://127.0.0.1:5556/dex"
    with pytest.raises(ApiserverConfigError, match="only trusts https issuers"):
        settings_for(parse_config(yaml.safe_dump(document), environ={}), "prod")


def test_issuer_ca_is_the_root_of_the_tls_chain(tmp_path: Path) -> None:
    self_signed = make_serving_cert(tmp_path / "self")
    pem = self_signed.cert.read_text()
    assert issuer_ca_from_tls_cert(pem.encode()) == pem
    files = make_tls_files(tmp_path / "chain")
    # A leaf alone (its CA elsewhere, e.g. public): the system trust store applies.
    assert issuer_ca_from_tls_cert(files.server_cert.read_bytes()) == ""
    chain = files.server_cert.read_bytes() + files.ca.read_bytes()
    assert issuer_ca_from_tls_cert(chain) == files.ca.read_text()


def test_cli_prints_both_formats_with_the_issuer_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = make_serving_cert(tmp_path / "tls")
    document = _document()
    document["web"] = {
        "https": "127.0.0.1:5554",
        "tlsCert": str(cert.cert),
        "tlsKey": str(cert.key),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["kube", "apiserver-config", str(path), "--cluster", "prod"]) == 0
    flags = capsys.readouterr().out.splitlines()
    assert "--oidc-ca-file=/etc/kubernetes/pki/portcullis-ca.crt" in flags
    args = ["kube", "apiserver-config", str(path), "--cluster", "prod"]
    assert main([*args, "--format", "authentication-config", "--api-version", "v1beta1"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert _errors(printed) == []
    assert printed["jwt"][0]["issuer"]["certificateAuthority"] == cert.ca.read_text()
    assert main([*args[:3], "--cluster", "nope"]) == 2
    assert "not in kubernetes.kubeconfigPage.clusters (prod)" in capsys.readouterr().err


def test_cluster_client_and_page_issuer_ca_are_used(tmp_path: Path) -> None:
    ca = make_serving_cert(tmp_path / "ca").cert.read_text()
    page = {
        "enabled": True,
        "clientID": "kubectl",
        "clusters": [CLUSTER, {**CLUSTER, "name": "edge", "clientID": "edge-kubectl"}],
        "issuerCertificateAuthorityData": base64.b64encode(ca.encode()).decode(),
    }
    document = _document()
    document["kubernetes"]["kubeconfigPage"] = page
    config = parse_config(yaml.safe_dump(document), environ={})
    edge = settings_for(config, "edge")
    assert edge.audiences == ("edge-kubectl",)
    assert edge.certificate_authority == ca
    assert settings_for(config, "prod").audiences == ("kubectl",)
    # What the caller passes (--ca-file) wins over the page's CA.
    assert settings_for(config, "prod", "PEM").certificate_authority == "PEM"


def test_page_issuer_ca_and_download_url_are_checked() -> None:
    document = _document()
    page = document["kubernetes"]["kubeconfigPage"]
    page["issuerCertificateAuthorityData"] = base64.b64encode(b"not a certificate").decode()
    page["pluginDownloadURL"] = "http://downloads.example.com"
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(document), environ={})
    problems = info.value.problems
    assert any(
        p.startswith("kubernetes.kubeconfigPage.issuerCertificateAuthorityData: must be base64")
        for p in problems
    ), problems
    assert any(
        p.startswith("kubernetes.kubeconfigPage.pluginDownloadURL: must be an https URL")
        for p in problems
    ), problems
