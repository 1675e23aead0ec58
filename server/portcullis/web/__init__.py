"""The web adapter: the public HTTP face of the issuer (Starlette routes, Jinja2 pages, static
files, security headers, browser binding and CSRF, CORS).

Owns: translating HTTP to the oidc core and back (``app.web_app`` builds the app; ``api`` the
JSON endpoints; ``login`` the login pages) and the page templates.

Must not: import kube, admin, the assembly or storage backends, or decide a protocol question
(the oidc core does). Other adapters' browser pages reach the app as routes handed in by the
assembly.
"""
