"""The token protocol on an open connection, and refusals at connect (docs/protocol.md,
"Refreshing the token", "Private namespaces", "Refusals for browsers"): answering
`refresh_due` with `refresh` and `subscribe_refresh_due` with `subscribe_refresh`, and what a
handshake closed before `connected` means for the next attempt. Functions of the client
(`Herald`), kept apart so the connection loop stays readable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import HeraldError, RequestError
from ._refusal import ConnectRefused, RefusalKind, close_refusal_code, refusal_kind
from ._types import DisconnectKind

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from ._client import Herald
    from ._subscription import Subscription


async def refused_by_close(client: Herald, code: int, reason: str, attempt: int, url_asks: bool) -> tuple[float, int]:
    """A handshake refused with a close code before `connected` (see _refusal.py)."""
    error_code = close_refusal_code(code, reason)
    kind = refusal_kind(error_code)
    if kind is RefusalKind.TOKEN:
        # Never offer the refused token again: the next attempt asks get_token.
        if client._token == client._conn_token:
            client._token_stale = True
        disconnect_kind = DisconnectKind.UNAUTHORIZED
    elif kind is RefusalKind.PERMANENT:
        if not url_asks:
            await client._stop(ConnectRefused(error_code, code, reason), DisconnectKind.REFUSED)
            return 0.0, attempt
        # Maybe one of the URL's channels or positions: subscribe by frames next time,
        # so each refusal reaches its own subscription.
        client._skip_url_channels = True
        disconnect_kind = DisconnectKind.REFUSED
    else:
        disconnect_kind = DisconnectKind.UNAVAILABLE
    delay = client._backoff(attempt)
    await client._disconnected(disconnect_kind, code, reason, delay)
    return delay, attempt + 1


async def refresh_connection(client: Herald, ws: ClientConnection) -> None:
    """The server's `refresh_due`: hand it a fresh token with `refresh`, so the connection
    outlives its token. A token equal to the one in use is not sent; a refused one is an
    "error" event, and the connection runs on until its 4001 (then the reconnect asks
    get_token again)."""
    if client._get_token is None:
        return
    try:
        # A token fetched early for the next connect serves, if there is one.
        fresh = client._token if client._token is not None and client._token != client._conn_token else await client._get_token()
    except Exception as e:  # the application's token source failed
        await client._events.emit("error", e)
        return
    if fresh == client._conn_token or client._ws is not ws:
        return
    try:
        reply = await client._request({"type": "refresh", "token": fresh}, "refresh")
    except RequestError as e:
        await client._events.emit("error", e)
        return
    except HeraldError:
        return  # the connection went away: the reconnect takes the token
    if client._ws is not ws:
        return
    client._token = client._conn_token = fresh
    await client._events.emit("refreshed", reply)


async def refresh_subscription(client: Herald, sub: Subscription) -> None:
    """The server's `subscribe_refresh_due` for a channel held through a subscription
    token: send a fresh one with `subscribe_refresh`."""
    ws = client._ws
    try:
        token = await sub._token_for_refresh()
    except Exception as e:  # the application's token source failed
        await sub._events.emit("error", RequestError("token", f"get_token failed: {e!r}", operation="subscribe_refresh"))
        return
    if token is None or client._ws is not ws:
        return
    try:
        reply = await client._request({"type": "subscribe_refresh", "channel": sub.channel, "token": token}, f"subscribe_refresh {sub.channel}")
    except RequestError as e:
        await sub._events.emit("error", e)
        return
    except HeraldError:
        return
    sub._refreshed(token, reply)
    await sub._events.emit("refreshed", reply)
