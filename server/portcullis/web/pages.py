"""Server-rendered HTML: the Jinja2 environment (with frontend.dir overrides) and page helpers."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.responses import HTMLResponse

from portcullis.config.model import FrontendSection

if TYPE_CHECKING:
    import jinja2

PACKAGE_DIR = Path(__file__).parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
THEMES_DIR = PACKAGE_DIR / "themes"

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# The one script any page runs: it submits the HTTP-POST binding form (SAML). It is allowed by
# its hash on that response only; every other page keeps a CSP without script-src.
_POST_SCRIPT = 'document.getElementById("pc-post").submit();'
_POST_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_POST_SCRIPT.encode()).digest()).decode()
POST_BINDING_CSP = (
    f"default-src 'none'; style-src 'self'; img-src 'self' data:; "
    f"script-src 'sha256-{_POST_SCRIPT_HASH}'; frame-ancestors 'none'; base-uri 'none'"
)


class Pages:
    def __init__(self, frontend: FrontendSection, issuer_path: str) -> None:
        # Operator's templates first, then the built-in ones.
        self._template_dirs = [str(TEMPLATES_DIR)]
        if frontend.dir:
            self._template_dirs.insert(0, str(Path(frontend.dir) / "templates"))
        # Built at the first page rendered: Jinja2 costs every worker start-up time and memory,
        # and a worker that only answers token and discovery requests never needs it (each
        # template is compiled at its first use either way).
        self._env: jinja2.Environment | None = None
        self._globals = {
            "issuer_name": frontend.issuer,
            "logo_url": _logo_url(frontend.logo_url, issuer_path),
            "theme_css": f"{issuer_path}/theme/styles.css",
            "static": f"{issuer_path}/static",
            "extra": frontend.extra,
        }

    def _environment(self) -> jinja2.Environment:
        if self._env is None:
            import jinja2

            self._env = jinja2.Environment(
                loader=jinja2.ChoiceLoader(
                    [jinja2.FileSystemLoader(path) for path in self._template_dirs]
                ),
                autoescape=jinja2.select_autoescape(default=True),
                undefined=jinja2.StrictUndefined,
                auto_reload=False,
            )
        return self._env

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self._environment().get_template(template).render(**self._globals, **context)
        return HTMLResponse(html, status_code=status, headers=NO_STORE)

    def error(
        self,
        status: int,
        title: str,
        message: str,
        *,
        retry_url: str = "",
        retry_label: str = "Try again",
    ) -> HTMLResponse:
        """An error page for people; ``retry_url`` adds a link to start the step again (an
        upstream failure is often transient, and a dead end makes users close the tab)."""
        return self.render(
            "error.html",
            status=status,
            title=title,
            message=message,
            retry_url=retry_url,
            retry_label=retry_label,
        )

    def post_binding(
        self,
        action: str,
        fields: Mapping[str, str],
        message: str = "Your browser is being sent to your identity provider.",
    ) -> HTMLResponse:
        """A form that POSTs fields to action, submitted at once by the hash-allowed script
        (a button does the same without JavaScript)."""
        response = self.render(
            "post_binding.html",
            action=action,
            fields=sorted(fields.items()),
            script=_POST_SCRIPT,
            message=message,
        )
        response.headers["Content-Security-Policy"] = POST_BINDING_CSP
        return response


def _logo_url(configured: str, issuer_path: str) -> str:
    """Dex resolves a relative logoURL (e.g. "theme/logo.png") against the issuer."""
    if not configured:
        return f"{issuer_path}/theme/logo.svg"
    if "://" in configured or configured.startswith("/"):
        return configured
    return f"{issuer_path}/{configured}"


def static_dirs(frontend: FrontendSection) -> tuple[list[Path], list[Path]]:
    """(static dirs, theme dirs) in lookup order: the operator's frontend.dir first."""
    statics: list[Path] = []
    themes: list[Path] = []
    if frontend.dir:
        statics.append(Path(frontend.dir) / "static")
        themes.append(Path(frontend.dir) / "themes" / frontend.theme)
    statics.append(STATIC_DIR)
    themes.append(THEMES_DIR / frontend.theme)
    themes.append(THEMES_DIR / "light")
    return statics, themes
