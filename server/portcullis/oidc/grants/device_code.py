"""The device_code grant (RFC 8628 §3.4-3.5): a device polls with its device code until the
person approved (tokens, once), denied (``access_denied``) or the request expired
(``expired_token``); polling faster than the interval answers ``slow_down`` and adds 5 seconds.

The rules live in ``portcullis.oidc.device`` (shared with the verification page); this module
is the token endpoint's side: one storage transaction decides the poll, then the same token
response as every user grant (``TokenIssuer``), both in a worker thread.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread

from portcullis.config.model import DEVICE_CODE_GRANT
from portcullis.oidc.device import DeviceFlow
from portcullis.oidc.errors import invalid_grant, invalid_request
from portcullis.oidc.grants.base import TokenRequest
from portcullis.oidc.issue import TokenIssuer


class DeviceCodeGrant:
    grant_type = DEVICE_CODE_GRANT
    parameters = ("device_code",)
    # Devices are typically public clients (kubectl); the device code is the credential.
    allow_public = True

    def __init__(self, device: DeviceFlow, issuer: TokenIssuer) -> None:
        self._device = device
        self._issuer = issuer

    async def handle(self, request: TokenRequest) -> dict[str, Any]:
        return await to_thread.run_sync(self.redeem, request)

    def redeem(self, request: TokenRequest) -> dict[str, Any]:
        device_code = request.form.get("device_code", "")
        if not device_code:
            raise invalid_request("the device_code parameter is missing")
        approved = self._device.redeem(request.client, device_code)
        identity = approved.identity
        if identity is None:  # redeem() never returns one without; never issue without
            raise invalid_grant("the device login is incomplete")
        return self._issuer.issue(
            request.client,
            identity=identity,
            connector_id=approved.connector_id,
            granted=approved.scopes,
            nonce="",
            auth_time=approved.auth_time,
            jti_seed="",
            issued_by_code="",
        )
