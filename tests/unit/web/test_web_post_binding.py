"""The HTTP-POST binding page (SAML): the only page that runs a script, allowed by its hash."""

from __future__ import annotations

import base64
import hashlib
import re

from portcullis.config.model import FrontendSection
from portcullis.web.pages import Pages


def test_post_binding_page_script_is_allowed_by_its_csp_hash_and_fields_are_escaped() -> None:
    page = Pages(FrontendSection(), "/dex").post_binding(
        "https://idp.example.com/sso", {"SAMLRequest": 'PHNhbWw+"<x>', "RelayState": "abc"}
    )
    html = page.body.decode()
    script = re.search(r"<script>(.*?)</script>", html, re.S)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    csp = page.headers["content-security-policy"]
    assert f"script-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert 'action="https://idp.example.com/sso"' in html
    assert 'value="PHNhbWw+&#34;&lt;x&gt;"' in html
    assert 'name="RelayState" value="abc"' in html
    assert page.headers["cache-control"] == "no-store"
