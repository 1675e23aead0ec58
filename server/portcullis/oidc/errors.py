"""OAuth 2.0 / OIDC protocol errors (RFC 6749 §4.1.2.1 and §5.2, RFC 7009, RFC 7662)."""

from __future__ import annotations


class OAuthError(Exception):
    """An error the client receives as ``{"error", "error_description"}``.

    ``status`` is the HTTP status for direct responses (token, introspection, revocation);
    authorization-endpoint errors travel in the redirect instead.
    """

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}

    def as_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def invalid_client(description: str = "client authentication failed") -> OAuthError:
    # RFC 6749 §5.2: 401 with a WWW-Authenticate challenge for the scheme the client used.
    return OAuthError(
        "invalid_client",
        description,
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="portcullis"'},
    )


def invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)


def unauthorized_client(description: str) -> OAuthError:
    return OAuthError("unauthorized_client", description)


def unsupported_grant_type(grant_type: str) -> OAuthError:
    return OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")


def invalid_scope(description: str) -> OAuthError:
    return OAuthError("invalid_scope", description)


class AuthorizeError(Exception):
    """An error at the authorization endpoint.

    When ``redirect_uri`` is empty the request could not be tied to a registered client and
    redirect URI, so the user gets an HTML error page instead of a redirect (RFC 6749 §4.1.2.1:
    never redirect to an unverified URI).
    """

    def __init__(
        self,
        error: str,
        description: str,
        *,
        redirect_uri: str = "",
        state: str = "",
        use_fragment: bool = False,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state
        self.use_fragment = use_fragment


# -- RFC 8628 §3.5 (device polling) and RFC 8693 ---------------------------------------------


def authorization_pending() -> OAuthError:
    return OAuthError("authorization_pending", "the user has not finished the login yet")


def slow_down(interval: int) -> OAuthError:
    return OAuthError(
        "slow_down", f"polling too fast: wait at least {interval} seconds between requests"
    )


def expired_token(description: str) -> OAuthError:
    return OAuthError("expired_token", description)


def access_denied(description: str) -> OAuthError:
    return OAuthError("access_denied", description)
