"""The application ping and request timeouts, on a connection that goes silent without being
closed (a relay in front of the gateway stops passing bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from herald_client import ConnectionLost, DisconnectKind, Herald, RequestTimeout

from .conftest import Events
from .harness import FreezingProxy, Standalone, mint_token


@pytest.fixture
async def proxy(standalone: Standalone) -> AsyncIterator[FreezingProxy]:
    relay = FreezingProxy(urlsplit(standalone.ws_url).port or 0)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


async def test_no_pong_drops_the_socket_and_reconnects(proxy: FreezingProxy) -> None:
    """When the line goes silent, the client pings after `ping_interval`, drops the socket
    when no pong comes within `pong_timeout`, and connects again."""
    herald = Herald(proxy.url, token=mint_token("liam"), ping_interval=0.3, pong_timeout=0.5, min_delay=0.05)
    events = Events(herald)
    await herald.connect(timeout=10)
    try:
        # Pings keep a quiet line up.
        assert await herald.ping() >= 0
        proxy.freeze()
        await events.wait(lambda: bool(events.of("disconnected")), what="the ping timeout")
        dropped = events.of("disconnected")[0]
        assert (dropped.kind, dropped.will_reconnect) == (DisconnectKind.PING_TIMEOUT, True)
        await events.wait(lambda: len(events.of("connected")) == 2, what="the reconnect")
    finally:
        await herald.disconnect()


async def test_request_timeout_and_pending_requests_fail_when_the_socket_drops(proxy: FreezingProxy) -> None:
    """A request without a reply fails with `RequestTimeout` after `request_timeout`; a request
    still waiting when the socket is dropped fails with `ConnectionLost`."""
    herald = Herald(proxy.url, token=mint_token("mia"), ping_interval=60, request_timeout=0.5, min_delay=0.05)
    await herald.connect(timeout=10)
    try:
        proxy.freeze()
        with pytest.raises(RequestTimeout):
            await herald.publish("chat:quiet", 1)
        herald.request_timeout = 30
        waiting = asyncio.create_task(herald.publish("chat:quiet", 2))
        events = Events(herald)
        await events.wait(lambda: bool(herald._pending), what="the request on its way")
        await herald._drop(herald._ws)
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(waiting, 5)
    finally:
        await herald.disconnect()
