"""Refusals a gateway tells by closing the handshake before `connected` (browsers, or
`gateway.refusal = "close"`), and refused refreshes, against a scripted server
(fake_server.py): what each close code makes the client do next. Against a real gateway:
test_auth.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from herald_client import ConnectRefused, DisconnectKind, Herald, RequestError

from .conftest import Events
from .fake_server import FakeServer
from .harness import mint_token


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with FakeServer() as s:
        yield s


async def test_4003_without_channels_in_the_url_stops_the_client(server: FakeServer) -> None:
    """A 4003 for a URL without channels: no more attempts, `connect()` raises
    `ConnectRefused`, the "disconnected" event says it will not reconnect."""
    herald = Herald(server.url, token=mint_token("alice"), min_delay=0.01, max_delay=0.02)
    events = Events(herald)
    connecting = asyncio.create_task(herald.connect(timeout=5))
    conn = await server.next()
    await conn.ws.close(4003, "forbidden: user:bob is not yours")
    with pytest.raises(ConnectRefused) as refused:
        await connecting
    assert (refused.value.code, refused.value.status) == ("forbidden", 4003)
    closed = events.of("disconnected")
    assert [(c.kind, c.code, c.will_reconnect) for c in closed] == [(DisconnectKind.REFUSED, 4003, False)]
    assert [type(e) for e in events.of("error")] == [ConnectRefused]
    with pytest.raises(asyncio.TimeoutError):
        await server.next(timeout=0.2)
    await herald.disconnect()


async def test_4000_for_a_url_channel_subscribes_by_frames_then_stops(server: FakeServer) -> None:
    """A 4000 while the URL names channels: the next attempt subscribes by frames; a 4000 for
    that one stops the client."""
    herald = Herald(server.url, token=mint_token("alice"), min_delay=0.01, max_delay=0.02)
    await herald.subscribe("nowhere:x")
    connecting = asyncio.create_task(herald.connect(timeout=5))
    first = await server.next()
    assert first.param("subscribe") == "nowhere:x"
    await first.ws.close(4000, "unknown_channel: namespace nowhere is not configured")
    second = await server.next()
    assert second.param("subscribe") is None
    await second.ws.close(4000, "malformed_frame: bad request")
    with pytest.raises(ConnectRefused) as refused:
        await connecting
    assert refused.value.code == "malformed_frame"
    await herald.disconnect()


async def test_load_refusals_back_off_and_4001_asks_for_a_new_token(server: FakeServer) -> None:
    """1013 and `too_many_connections` are retried with the same token; a 4001 makes the client
    ask `get_token` before the next attempt."""
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return mint_token("alice", claims={"n": calls})

    herald = Herald(server.url, get_token=get_token, min_delay=0.01, max_delay=0.02)
    events = Events(herald)
    connecting = asyncio.create_task(herald.connect(timeout=5))
    conn = await server.next()
    await conn.ws.close(1013, "unavailable: the gateway is not ready")
    conn = await server.next()
    await conn.ws.close(4030, "too_many_connections: alice has 3 connections open")
    conn = await server.next()
    assert calls == 1, "the same token is fine after a load refusal"
    await conn.ws.close(4001, "token_expired: token expired")
    conn = await server.next()
    assert calls == 2, "a refused token is not offered again"
    await conn.open()
    await connecting
    assert [(c.kind, c.code) for c in events.of("disconnected")] == [
        (DisconnectKind.UNAVAILABLE, 1013),
        (DisconnectKind.UNAVAILABLE, 4030),
        (DisconnectKind.UNAUTHORIZED, 4001),
    ]
    await herald.disconnect()


async def test_refused_refresh_is_an_error_event_and_the_connection_stays(server: FakeServer) -> None:
    """On `refresh_due` a token equal to the one in use is not sent; a refused refresh
    (`user_mismatch`) is an "error" event and the connection goes on."""
    tokens = [mint_token("alice")]

    async def get_token() -> str:
        return tokens[-1]

    herald = Herald(server.url, get_token=get_token, min_delay=0.01, max_delay=0.02)
    events = Events(herald)
    connecting = asyncio.create_task(herald.connect(timeout=5))
    conn = await server.next()
    await conn.open()
    await connecting
    try:
        await conn.send({"type": "refresh_due", "expires_at": 0})
        await asyncio.sleep(0.1)
        assert conn.frames.empty(), "the source gave the token in use: nothing sent"
        tokens.append(mint_token("mallory"))
        await conn.send({"type": "refresh_due", "expires_at": 0})
        refresh = await conn.expect("refresh")
        assert refresh["token"] == tokens[1]
        await conn.send({"type": "error", "id": refresh["id"], "code": "user_mismatch", "message": "mallory"})
        await events.wait(lambda: bool(events.of("error")), timeout=5, what="the error event")
        error = events.of("error")[0]
        assert isinstance(error, RequestError) and error.code == "user_mismatch"
        assert events.of("disconnected") == []
    finally:
        await herald.disconnect()
