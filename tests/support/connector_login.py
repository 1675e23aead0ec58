"""A whole browser login through a callback connector, as the issuer drives it: the connector's
authorization URL, the stand-in's "browser" (a function that follows it as the signed-in user
and returns the callback's query), the state checked, the callback handed back."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from portcullis.connectors.base import CallbackConnector, Scopes
from portcullis.storage.models import Identity


async def browser_login(
    connector: CallbackConnector,
    browse: Callable[[str], dict[str, str]],
    scopes: Scopes,
    callback: str,
) -> Identity:
    state = secrets.token_urlsafe(16)
    start = await connector.login_url(scopes, callback, state)
    params = await asyncio.to_thread(browse, start.url)  # the stand-ins are synchronous
    assert params["state"] == state
    return await connector.handle_callback(scopes, params, start.connector_state)
