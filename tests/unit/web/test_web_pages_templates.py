"""Pages: the operator's frontend.dir templates come before the built-in ones, escaping on.

The Jinja2 environment is built at the first page rendered, not at worker start-up (issue 13;
tests/unit/test_serve_path_imports.py checks that start-up does not import Jinja2)."""

from __future__ import annotations

from pathlib import Path

from portcullis.config.model import FrontendSection
from portcullis.web.pages import Pages


def test_builtin_error_page_escapes_its_message() -> None:
    pages = Pages(FrontendSection(), "/dex")
    response = pages.error(502, "Sign-in failed", "<script>x</script>")
    body = bytes(response.body).decode()
    assert response.status_code == 502
    assert "Sign-in failed" in body
    assert "&lt;script&gt;x&lt;/script&gt;" in body
    assert "<script>x</script>" not in body


def test_frontend_dir_template_overrides_the_builtin_one(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "error.html").write_text(
        "custom {{ issuer_name }}: {{ title }} / {{ message }}", encoding="utf-8"
    )
    pages = Pages(FrontendSection.model_validate({"dir": str(tmp_path), "issuer": "Acme"}), "")
    body = bytes(pages.error(400, "Bad", "a & b").body).decode()
    assert body == "custom Acme: Bad / a &amp; b"
    # A template the operator did not override still comes from the built-in set.
    login = pages.render("post_binding.html", action="/x", fields=[], script="", message="m")
    assert 'action="/x"' in bytes(login.body).decode()
