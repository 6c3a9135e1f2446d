"""Pattern subscriptions against a real `herald standalone` (namespace `events`, and the
private `crew`, both with `patterns = true`): messages of every matching channel with their
real channel names, the copies of a message that matches a channel and a pattern
subscription, unsubscribing, refusals, re-subscription after the network dropped, and the
server ending a pattern whose grant a token refresh took away."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from herald_client import (
    Herald,
    Message,
    PatternSubscription,
    Publisher,
    RequestError,
    SubscriptionState,
    Unsubscribed,
)

from .conftest import Events
from .harness import FreezingProxy, Processes, Standalone, mint_token, start_standalone


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def next_message(sub: PatternSubscription, timeout: float = 10.0) -> Message:
    message: Message = await asyncio.wait_for(sub.__aiter__().__anext__(), timeout)
    return message


@pytest.fixture
async def relay(standalone: Standalone) -> AsyncIterator[FreezingProxy]:
    proxy = FreezingProxy(urlsplit(standalone.ws_url).port or 0)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_a_pattern_receives_matching_channels_with_their_real_names(
    standalone: Standalone, publisher: Publisher
) -> None:
    t = tag()
    herald = Herald(standalone.ws_url, token=mint_token("pat"))
    await herald.connect(timeout=10)
    try:
        orders = await herald.subscribe_pattern(f"events:{t}-order-*")
        assert orders.state is SubscriptionState.SUBSCRIBED
        assert herald.patterns == {f"events:{t}-order-*": orders}
        await publisher.publish(f"events:{t}-invoice-1", {"n": 0})
        await publisher.publish(f"events:{t}-order-1", {"n": 1})
        await publisher.publish(f"events:{t}-order-2", {"n": 2})
        await publisher.publish(f"events:{t}-order-1", {"n": 3})
        got = [await next_message(orders) for _ in range(3)]
        assert sorted((m.channel, m.data["n"]) for m in got) == [
            (f"events:{t}-order-1", 1),
            (f"events:{t}-order-1", 3),
            (f"events:{t}-order-2", 2),
        ]
        # One channel's messages in publish order (the invoice, published first, is not there).
        assert [m.data["n"] for m in got if m.channel.endswith("order-1")] == [1, 3]
        assert all(m.pattern == f"events:{t}-order-*" for m in got)
        assert not any(m.channel.endswith("invoice-1") for m in got)
    finally:
        await herald.disconnect()
    assert orders.state is SubscriptionState.CLOSED


async def test_channel_and_pattern_subscriptions_each_get_their_copy_once(
    standalone: Standalone, publisher: Publisher
) -> None:
    t = tag()
    channel = f"events:{t}-a"
    herald = Herald(standalone.ws_url, token=mint_token("pat"))
    events = Events(herald)
    await herald.connect(timeout=10)
    try:
        plain: list[Message] = []
        marked: list[Message] = []
        sub = await herald.subscribe(channel, on_message=plain.append)
        pattern = await herald.subscribe_pattern(f"events:{t}-*", on_message=marked.append)
        ids = [await publisher.publish(channel, {"n": n}) for n in range(3)]
        await events.wait(lambda: len(plain) >= 3 and len(marked) >= 3, what="both copies of 3 messages")
        # A fourth: each subscription delivers in order, so nothing more of the first three
        # can come after it.
        ids.append(await publisher.publish(channel, {"n": 3}))
        await events.wait(lambda: len(plain) >= 4 and len(marked) >= 4, what="both copies of the fourth")
        assert [m.id for m in plain] == ids
        assert [m.id for m in marked] == ids
        assert all(m.pattern is None and m.channel == channel for m in plain)
        assert all(m.pattern == pattern.pattern and m.channel == channel for m in marked)
        # The client's own "message" callbacks see both copies.
        assert len(events.of("message")) == 8
        assert sub.state is SubscriptionState.SUBSCRIBED
    finally:
        await herald.disconnect()


async def test_unsubscribe_stops_the_pattern_and_ends_its_iteration(
    standalone: Standalone, publisher: Publisher
) -> None:
    t = tag()
    channel = f"events:{t}-a"
    herald = Herald(standalone.ws_url, token=mint_token("pat"))
    events = Events(herald)
    await herald.connect(timeout=10)
    try:
        plain: list[Message] = []
        await herald.subscribe(channel, on_message=plain.append)
        pattern = await herald.subscribe_pattern(f"events:{t}-*")
        await publisher.publish(channel, {"n": 1})
        assert (await next_message(pattern)).data == {"n": 1}
        await pattern.unsubscribe()
        assert pattern.state is SubscriptionState.CLOSED
        assert herald.patterns == {}
        await publisher.publish(channel, {"n": 2})
        await events.wait(lambda: len(plain) >= 2, what="the channel's copy")
        # The server acknowledged the unsubscribe before this publish: no pattern copy of it.
        await herald.ping()
        assert [m.data["n"] for m in events.of("message") if m.pattern is not None] == [1]
        # The iteration ends instead of waiting.
        assert [m async for m in pattern] == []
        # The pattern can be subscribed again.
        again = await herald.subscribe_pattern(f"events:{t}-*")
        await publisher.publish(channel, {"n": 3})
        assert (await next_message(again)).data == {"n": 3}
    finally:
        await herald.disconnect()


@pytest.mark.parametrize(
    ("pattern", "code"),
    [
        ("news:*", "forbidden"),  # a namespace without `patterns`
        ("user:*", "forbidden"),  # never the personal channels
        ("events:no-wildcard", "invalid_pattern"),
        ("events:[x", "invalid_pattern"),
        ("*", "invalid_pattern"),
        ("nowhere:*", "unknown_channel"),
    ],
)
async def test_a_refused_pattern_raises_the_server_code(standalone: Standalone, pattern: str, code: str) -> None:
    herald = Herald(standalone.ws_url, token=mint_token("pat"))
    await herald.connect(timeout=10)
    try:
        with pytest.raises(RequestError) as refused:
            await herald.subscribe_pattern(pattern)
        assert refused.value.code == code
        assert herald.patterns == {}
        # The connection is fine.
        await herald.ping()
    finally:
        await herald.disconnect()


async def test_a_refusal_of_a_pattern_given_before_connect_reaches_its_error_callbacks(
    standalone: Standalone,
) -> None:
    herald = Herald(standalone.ws_url, token=mint_token("pat"))
    events = Events(herald)
    pattern = await herald.subscribe_pattern("news:*")
    good = await herald.subscribe_pattern(f"events:{tag()}-*")
    errors: list[RequestError] = []
    pattern.on("error", errors.append)
    await herald.connect(timeout=10)
    try:
        await events.wait(lambda: bool(errors), what="the refusal")
        assert errors[0].code == "forbidden"
        assert pattern.state is SubscriptionState.CLOSED
        await good.wait_subscribed(10)
        assert list(herald.patterns) == [good.pattern]
    finally:
        await herald.disconnect()


async def test_a_pattern_is_subscribed_again_after_the_network_dropped(
    relay: FreezingProxy, publisher: Publisher
) -> None:
    t = tag()
    herald = Herald(relay.url, token=mint_token("pat"), min_delay=0.05, max_delay=0.2)
    events = Events(herald)
    confirmations: list[PatternSubscription] = []
    pattern = await herald.subscribe_pattern(f"events:{t}-*")
    pattern.on("subscribed", confirmations.append)
    await herald.connect(timeout=10)
    try:
        await pattern.wait_subscribed(10)
        await publisher.publish(f"events:{t}-a", {"n": 1})
        assert (await next_message(pattern)).channel == f"events:{t}-a"

        relay.cut()
        await events.wait(lambda: bool(events.of("disconnected")), what="the drop")
        assert pattern.state is SubscriptionState.SUBSCRIBING
        relay.restore()
        await events.wait(lambda: len(events.of("connected")) >= 2, what="the reconnect")
        await pattern.wait_subscribed(10)
        await events.wait(lambda: len(confirmations) >= 2, what="the second confirmation")
        assert pattern.state is SubscriptionState.SUBSCRIBED

        await publisher.publish(f"events:{t}-b", {"n": 2})
        message = await next_message(pattern)
        assert (message.channel, message.data, message.pattern) == (f"events:{t}-b", {"n": 2}, pattern.pattern)
    finally:
        await herald.disconnect()


@pytest.fixture(scope="module")
def refreshing() -> Iterator[Standalone]:
    """A server that asks for a fresh token 2 s before `exp`."""
    with tempfile.TemporaryDirectory(prefix="herald-py-patterns-") as tmp:
        procs = Processes(Path(tmp))
        try:
            yield start_standalone(procs, {"HERALD_GATEWAY__REFRESH_WARNING": "2s"})
        finally:
            procs.stop_all()


async def test_a_refresh_without_the_grant_ends_the_pattern(refreshing: Standalone) -> None:
    """In a private namespace the token's `channels` claim grants the pattern; the refreshed
    token no longer lists it: the server ends it with "grant_revoked", and it is not renewed."""
    t = tag()
    granted = f"crew:{t}-*"
    tokens = 0

    async def get_token() -> str:
        nonlocal tokens
        tokens += 1
        claims = {"channels": [granted]} if tokens == 1 else {}
        return mint_token("pat", ttl=4, claims=claims)

    herald = Herald(refreshing.ws_url, get_token=get_token)
    events = Events(herald)
    await herald.connect(timeout=10)
    try:
        with pytest.raises(RequestError) as refused:
            await herald.subscribe_pattern(f"crew:{t}-a*")  # not the claim character for character
        assert refused.value.code == "forbidden"
        pattern = await herald.subscribe_pattern(granted)
        ended: list[Unsubscribed] = []
        pattern.on("unsubscribed", ended.append)
        await events.wait(lambda: bool(ended), timeout=10, what="grant_revoked")
        assert ended == [Unsubscribed(granted, "grant_revoked", granted)]
        assert pattern.state is SubscriptionState.CLOSED
        assert herald.patterns == {}
        with pytest.raises(RequestError) as error:
            await pattern.wait_subscribed(1)
        assert error.value.code == "grant_revoked"
        assert not events.of("disconnected")
    finally:
        await herald.disconnect()
