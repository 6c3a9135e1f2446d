"""The client and the gateway's token protocol, against a real `herald standalone` with
short-lived tokens, `refresh_due` 2 s before `exp` and refusals told by close codes
(`gateway.refusal = "close"`, as browsers get them): in-band refresh of the connection token,
subscription tokens of a private namespace, and an expired token at connect."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herald_client import (
    ConnectionState,
    DisconnectKind,
    Herald,
    Message,
    Publisher,
    RequestError,
    SubscriptionState,
    Unsubscribed,
)

from .conftest import Events
from .harness import API_KEY, Processes, Standalone, mint_token, start_standalone


@pytest.fixture(scope="module")
def server() -> Iterator[Standalone]:
    with tempfile.TemporaryDirectory(prefix="herald-py-auth-") as tmp:
        procs = Processes(Path(tmp))
        try:
            yield start_standalone(
                procs, {"HERALD_GATEWAY__REFRESH_WARNING": "2s", "HERALD_GATEWAY__REFUSAL": "close"}
            )
        finally:
            procs.stop_all()


def vip() -> str:
    return f"vip:{uuid.uuid4().hex[:12]}"


async def next_message(sub: Any, timeout: float = 10.0) -> Message:
    message: Message = await asyncio.wait_for(sub.__aiter__().__anext__(), timeout)
    return message


async def test_connection_outlives_its_token_by_refreshing_in_band(server: Standalone) -> None:
    """A connection on 4 s tokens answers each `refresh_due` with a fresh token and is still
    the same connection, receiving, 7 s later."""
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return mint_token("ann", ttl=4)

    herald = Herald(server.ws_url, get_token=get_token, min_delay=0.05, max_delay=0.5)
    events = Events(herald)
    refreshed: list[dict[str, Any]] = []
    herald.on("refreshed", refreshed.append)
    news = f"news:{uuid.uuid4().hex[:12]}"
    sub = await herald.subscribe(news)
    await herald.connect(timeout=10)
    try:
        await asyncio.sleep(7)
        assert events.of("disconnected") == []
        assert len(refreshed) >= 2, refreshed
        assert all(isinstance(r.get("expires_at"), int) for r in refreshed)
        async with Publisher(server.http_url, API_KEY) as publisher:
            message_id = await publisher.publish(news, {"still": "here"})
        assert (await next_message(sub)).id == message_id
    finally:
        await herald.disconnect()


async def test_expired_token_at_connect_asks_the_source_again(server: Standalone) -> None:
    """The source's first token has expired: the gateway closes the handshake with 4001
    `token_expired`, and the next attempt uses a new token from the source, not the old one."""
    tokens: list[str] = []

    async def get_token() -> str:
        tokens.append(mint_token("cid", ttl=-60 if not tokens else 3600))
        return tokens[-1]

    herald = Herald(server.ws_url, get_token=get_token, min_delay=0.05, max_delay=0.5)
    events = Events(herald)
    await herald.connect(timeout=10)
    try:
        refused = events.of("disconnected")[0]
        assert (refused.kind, refused.code, refused.will_reconnect) == (DisconnectKind.UNAUTHORIZED, 4001, True)
        assert refused.reason.startswith("token_expired:")
        assert len(tokens) == 2
        assert herald.state is ConnectionState.CONNECTED
    finally:
        await herald.disconnect()


async def test_private_channel_with_a_subscription_token_is_refreshed(server: Standalone) -> None:
    """A private channel is refused without a subscription token, live with one from
    `get_token`, and refreshed before it expires: still subscribed and receiving past the first
    token's expiry."""
    herald = Herald(server.ws_url, get_token=lambda: _ready(mint_token("eve")), min_delay=0.05, max_delay=0.5)
    await herald.connect(timeout=10)
    try:
        with pytest.raises(RequestError) as refused:
            await herald.subscribe(vip())
        assert refused.value.code == "invalid_subscription_token"

        issued: list[str] = []

        async def channel_token(channel: str) -> str:
            issued.append(channel)
            return mint_token("eve", ttl=4, claims={"channel": channel, "n": len(issued)})

        gold = vip()
        sub = await herald.subscribe(gold, get_token=channel_token)
        assert isinstance(sub.expires_at, int)
        refreshed: list[dict[str, Any]] = []
        ended: list[Unsubscribed] = []
        sub.on("refreshed", refreshed.append)
        sub.on("unsubscribed", ended.append)
        await asyncio.sleep(5.5)
        assert refreshed, "a subscribe_refresh was sent and confirmed"
        assert ended == []
        assert sub.state is SubscriptionState.SUBSCRIBED
        async with Publisher(server.http_url, API_KEY) as publisher:
            message_id = await publisher.publish(gold, {"tier": "gold"})
        assert (await next_message(sub)).id == message_id
        assert len(issued) >= 2
    finally:
        await herald.disconnect()


async def test_unrefreshed_subscription_token_ends_the_subscription(server: Standalone) -> None:
    """A fixed subscription token that is not refreshed: the server ends the subscription at
    its expiry, the subscription says why ("unsubscribed", `subscription_expired`), its
    iteration ends with it, and the client does not subscribe it again."""
    herald = Herald(server.ws_url, get_token=lambda: _ready(mint_token("fay")), min_delay=0.05, max_delay=0.5)
    await herald.connect(timeout=10)
    try:
        silver = vip()
        sub = await herald.subscribe(silver, token=mint_token("fay", ttl=3, claims={"channel": silver}))
        ended: list[Unsubscribed] = []
        sub.on("unsubscribed", ended.append)
        # The iteration ends with the reason.
        with pytest.raises(RequestError) as gone:
            async for _message in _bounded(sub, 8):
                pass
        assert gone.value.code == "subscription_expired"
        assert ended == [Unsubscribed(silver, "subscription_expired")]
        assert sub.state is SubscriptionState.CLOSED
        assert silver not in herald.subscriptions
    finally:
        await herald.disconnect()


async def test_private_channel_resubscribed_with_a_fresh_token_after_reconnect(server: Standalone) -> None:
    """After the server restarts, a private channel is subscribed again by frame with a new
    token from its `get_token`."""
    herald = Herald(server.ws_url, get_token=lambda: _ready(mint_token("gil")), min_delay=0.05, max_delay=0.5)
    events = Events(herald)
    minted: list[str] = []

    async def channel_token(channel: str) -> str:
        minted.append(mint_token("gil", claims={"channel": channel, "n": len(minted)}))
        return minted[-1]

    await herald.connect(timeout=10)
    try:
        channel = vip()
        sub = await herald.subscribe(channel, get_token=channel_token)
        resubscribed = asyncio.Event()
        sub.on("subscribed", lambda _s: resubscribed.set())
        await asyncio.to_thread(server.restart)
        await events.wait(lambda: len(events.of("connected")) == 2, what="the reconnect")
        await asyncio.wait_for(resubscribed.wait(), 10)
        assert len(minted) == 2 and minted[0] != minted[1]
        assert channel not in (events.of("connected")[1].get("channels") or [])
    finally:
        await herald.disconnect()


async def _ready(value: str) -> str:
    return value


async def _bounded(sub: Any, timeout: float) -> Any:
    """The subscription's messages until its iteration ends, failing after `timeout` s."""
    iterator = sub.__aiter__()
    while True:
        try:
            yield await asyncio.wait_for(iterator.__anext__(), timeout)
        except StopAsyncIteration:
            return
