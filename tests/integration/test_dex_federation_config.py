"""A Dex config with ldap, oidc, oauth, saml and authproxy connectors, written the way Dex's
docs write them, passes `portcullis check-config` unchanged and serves (opening connectors does
no network I/O: none of the upstreams below exists)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.issuer import PORTCULLIS, Issuer, Secrets, finish_issuer, free_port
from tests.support.saml_idp import IssuingCA

pytestmark = pytest.mark.integration

DEX_CONFIG = """\
issuer: http://127.0.0.1:{web}/dex
storage:
  type: sqlite3
  config:
    file: {db}
web:
  http: 127.0.0.1:{web}
  clientRemoteIP:
    header: X-Forwarded-For
    trustedProxies:
    - 10.0.0.0/8
telemetry:
  http: 127.0.0.1:{telemetry}
staticClients:
- id: example-app
  redirectURIs:
  - 'http://127.0.0.1:5555/callback'
  name: 'Example App'
  secret: ZXhhbXBsZS1hcHAtc2VjcmV0
connectors:
- type: ldap
  id: ldap
  name: LDAP
  config:
    host: ldap.example.com:636
    insecureNoSSL: false
    insecureSkipVerify: false
    rootCA: {ca}
    bindDN: uid=serviceaccount,cn=users,dc=example,dc=com
    bindPW: password
    usernamePrompt: SSO Username
    userSearch:
      baseDN: cn=users,dc=example,dc=com
      filter: "(objectClass=person)"
      username: uid
      idAttr: uid
      emailAttr: mail
      nameAttr: name
      preferredUsernameAttr: uid
    groupSearch:
      baseDN: cn=groups,dc=freeipa,dc=example,dc=com
      filter: "(objectClass=group)"
      userMatchers:
      - userAttr: uid
        groupAttr: member
      nameAttr: name
- type: oidc
  id: google
  name: Google
  config:
    issuer: https://accounts.google.com
    clientID: google-client-id
    clientSecret: google-client-secret
    redirectURI: http://127.0.0.1:{web}/dex/callback
    promptType: consent
    scopes:
    - profile
    - email
    insecureSkipEmailVerified: false
    getUserInfo: true
    userIDKey: sub
    userNameKey: name
- type: oauth
  id: myplatform
  name: My Platform
  config:
    clientID: platform-client-id
    clientSecret: platform-client-secret
    redirectURI: http://127.0.0.1:{web}/dex/callback
    tokenURL: https://myplatform.com/oauth/token
    authorizationURL: https://myplatform.com/oauth/authorize
    userInfoURL: https://myplatform.com/userinfo
    scopes:
      - profile
      - email
      - groups
    insecureSkipVerify: false
    userIDKey: user_id
    claimMapping:
      userNameKey: "user_name"
      preferredUsernameKey: "preferred_username"
      groupsKey: "groups"
      emailKey: "email"
      emailVerifiedKey: "email_verified"
- type: saml
  id: saml
  name: SAML
  config:
    ssoURL: https://saml.example.com/sso
    ca: {ca}
    redirectURI: http://127.0.0.1:{web}/dex/callback
    usernameAttr: name
    emailAttr: email
    groupsAttr: groups
    entityIssuer: http://127.0.0.1:{web}/dex/callback
    ssoIssuer: https://saml.example.com/sso
    nameIDPolicyFormat: persistent
- type: authproxy
  id: myBasicAuth
  name: HTTP Basic Auth
"""


def test_a_dex_federation_config_checks_and_serves(tmp_path: Path) -> None:
    web, telemetry = free_port(), free_port()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(IssuingCA.create("Example Corp CA").pem)
    text = DEX_CONFIG.format(web=web, telemetry=telemetry, db=tmp_path / "dex.db", ca=ca)
    path = tmp_path / "dex.yaml"
    path.write_text(text)
    checked = subprocess.run(
        [str(PORTCULLIS), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "5 connector(s)" in checked.stdout

    issuer = Issuer(tmp_path / "serve", yaml.safe_load(text), Secrets(), web, telemetry)
    issuer.workdir.mkdir()
    try:
        issuer.start()
        picker = httpx.get(
            issuer.url("/auth"),
            params={
                "client_id": "example-app",
                "redirect_uri": "http://127.0.0.1:5555/callback",
                "response_type": "code",
                "scope": "openid",
            },
        )
        assert picker.status_code == 200
        shown = re.findall(r'id="connector-([^"]+)"', picker.text)
        assert shown == ["ldap", "google", "myplatform", "saml", "myBasicAuth"]
    finally:
        finish_issuer(issuer)
