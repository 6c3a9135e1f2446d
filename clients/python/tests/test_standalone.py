"""The client against a real `herald standalone`: connecting, subscribing, publishing,
presence, request errors, refused connects and token renewal."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from herald_client import (
    ConnectionState,
    DisconnectKind,
    Herald,
    Message,
    ClientClosed,
    PresenceEvent,
    PublishError,
    PublishMessage,
    Publisher,
    RecoveryFailed,
    RequestError,
    SubscriptionState,
)

from herald_client._token import token_expiry

from .conftest import Events, token_source
from .harness import API_KEY, Standalone, free_port, mint_token


def channel(namespace: str) -> str:
    return f"{namespace}:{uuid.uuid4().hex[:12]}"


async def next_message(sub: object, timeout: float = 10.0) -> Message:
    iterator = sub.__aiter__()  # type: ignore[attr-defined]
    message: Message = await asyncio.wait_for(iterator.__anext__(), timeout)
    return message


async def test_subscribe_in_url_and_by_frame_both_receive_backend_publishes(
    standalone: Standalone, publisher: Publisher
) -> None:
    """A channel subscribed before connect() goes in the URL, one after by frame; both get
    the backend's messages through `async for`, and the state events run connecting ->
    connected."""
    herald = Herald(standalone.ws_url, get_token=token_source("alice"))
    events = Events(herald)
    early, late = channel("news"), channel("news")
    first = await herald.subscribe(early)
    await herald.connect(timeout=10)
    try:
        assert herald.state is ConnectionState.CONNECTED
        assert events.of("state") == [ConnectionState.CONNECTING, ConnectionState.CONNECTED]
        assert events.of("connected")[0]["channels"] == [early]
        assert first.state is SubscriptionState.SUBSCRIBED
        second = await herald.subscribe(late)
        assert second.state is SubscriptionState.SUBSCRIBED

        id1 = await publisher.publish(early, {"n": 1}, event="headline")
        id2 = await publisher.publish(late, [1, 2, 3])
        m1 = await next_message(first)
        m2 = await next_message(second)
        assert (m1.channel, m1.id, m1.data, m1.event, m1.sender) == (early, id1, {"n": 1}, "headline", None)
        assert (m2.channel, m2.id, m2.data) == (late, id2, [1, 2, 3])
        # Every message also reaches the client-wide "message" callbacks.
        await events.wait(lambda: len(events.of("message")) == 2, what="two messages")
    finally:
        await herald.disconnect()


async def test_personal_and_broadcast_channels(standalone: Standalone, publisher: Publisher) -> None:
    """`notify` reaches `herald.personal`, `broadcast` reaches `herald.broadcast`, by callback
    and by iteration."""
    user = f"u{uuid.uuid4().hex[:8]}"
    herald = Herald(standalone.ws_url, get_token=token_source(user))
    broadcasts: list[Message] = []
    herald.broadcast.on("message", broadcasts.append)
    personal = herald.personal.messages()
    await herald.connect(timeout=10)
    try:
        assert herald.personal.channel == f"user:{user}"
        note = await publisher.notify(user, {"text": "for you"})
        got = await asyncio.wait_for(personal.__anext__(), 10)
        assert (got.channel, got.id, got.data) == (f"user:{user}", note, {"text": "for you"})
        everyone = await publisher.broadcast({"text": "all"}, event="hello")
        events = Events(herald)
        await events.wait(lambda: any(m.id == everyone for m in broadcasts), what="the broadcast")
        assert broadcasts[-1].event == "hello"
    finally:
        await herald.disconnect()


async def test_client_publish_where_allowed_and_forbidden_elsewhere(standalone: Standalone) -> None:
    """A client publishes into a `publish = true` namespace (the message carries `from`),
    and gets `forbidden` in a namespace that does not allow it."""
    room = channel("chat")
    async with Herald(standalone.ws_url, token=mint_token("carol")) as herald:
        sub = await herald.subscribe(room)
        message_id = (await sub.publish({"text": "hi"}, event="say")).message_id
        got = await next_message(sub)
        assert (got.id, got.data, got.sender, got.event) == (message_id, {"text": "hi"}, "carol", "say")
        with pytest.raises(RequestError) as refused:
            await herald.publish(channel("news"), {"text": "no"})
        assert refused.value.code == "forbidden"


async def test_request_errors_carry_the_server_code(standalone: Standalone) -> None:
    """Refused subscribes raise `RequestError` with the server's code and leave the connection
    and other subscriptions alone; `history()` of a channel without history is `no_history`."""
    async with Herald(standalone.ws_url, token=mint_token("dave")) as herald:
        for name, code in [
            ("nowhere:x", "unknown_channel"),
            ("user:somebody-else", "forbidden"),
            ("chat:bad name", "invalid_channel"),
        ]:
            with pytest.raises(RequestError) as refused:
                await herald.subscribe(name)
            assert refused.value.code == code, name
            assert name not in herald.subscriptions
        sub = await herald.subscribe(channel("chat"))
        with pytest.raises(RequestError) as no_history:
            await sub.history(limit=10)
        assert no_history.value.code == "no_history"
        assert herald.state is ConnectionState.CONNECTED
        assert await herald.ping() >= 0


async def test_a_refused_url_channel_fails_only_its_subscription(standalone: Standalone, publisher: Publisher) -> None:
    """A bad channel among those of the connect URL makes the server refuse the upgrade
    (HTTP 422); the client connects again subscribing by frames, so only that subscription
    fails and the good one works."""
    herald = Herald(standalone.ws_url, token=mint_token("erin"))
    events = Events(herald)
    good = await herald.subscribe(channel("news"))
    bad = await herald.subscribe("nowhere:at-all")
    errors: list[Exception] = []
    bad.on("error", errors.append)
    await herald.connect(timeout=10)
    try:
        await events.wait(lambda: bool(errors), what="the bad channel's error")
        assert isinstance(errors[0], RequestError) and errors[0].code == "unknown_channel"
        assert bad.state is SubscriptionState.CLOSED
        refusal = events.of("disconnected")[0]
        assert (refusal.kind, refusal.code, refusal.reason) == (DisconnectKind.REFUSED, 422, "unknown_channel")
        await events.wait(lambda: good.state is SubscriptionState.SUBSCRIBED, what="the good channel")
        message_id = await publisher.publish(good.channel, "ok")
        assert (await next_message(good)).id == message_id
    finally:
        await herald.disconnect()


async def test_presence_and_join_leave(standalone: Standalone) -> None:
    """Members are listed with their token's `info`; `join` and `leave` reach the
    subscription's callbacks."""
    room = channel("chat")
    alice = Herald(standalone.ws_url, token=mint_token("alice", info={"name": "Alice"}))
    bob = Herald(standalone.ws_url, token=mint_token("bob"))
    seen: list[PresenceEvent] = []
    events = Events(alice)
    try:
        await alice.connect(timeout=10)
        room_a = await alice.subscribe(room)
        room_a.on("join", seen.append)
        room_a.on("leave", seen.append)
        await bob.connect(timeout=10)
        room_b = await bob.subscribe(room)
        await events.wait(lambda: any(e.type == "join" and e.user == "bob" for e in seen), what="bob's join")
        members = await room_a.presence()
        assert [(m.user, m.connections, m.info) for m in members] == [("alice", 1, {"name": "Alice"}), ("bob", 1, None)]
        await room_b.unsubscribe()
        assert room_b.state is SubscriptionState.CLOSED
        await events.wait(lambda: any(e.type == "leave" and e.user == "bob" for e in seen), what="bob's leave")
    finally:
        await bob.disconnect()
        await alice.disconnect()


async def test_unauthorized_and_network_failures_are_told_apart(standalone: Standalone) -> None:
    """A connect refused with 401 is reported as `unauthorized` and makes the client fetch a
    fresh token; a port nobody listens on is `network`. The client gets through after both."""
    dead = f"ws://127.0.0.1:{free_port()}/ws"
    tokens = iter(["not-a-jwt", mint_token("frank"), mint_token("frank")])

    async def get_token() -> str:
        return next(tokens)

    # URLs are tried in turn: live (bad token), dead, live (fresh token).
    herald = Herald([standalone.ws_url, dead], get_token=get_token, min_delay=0.05, max_delay=0.1)
    events = Events(herald)
    await herald.connect(timeout=10)
    try:
        kinds = [(d.kind, d.code, d.will_reconnect) for d in events.of("disconnected")]
        assert kinds == [(DisconnectKind.UNAUTHORIZED, 401, True), (DisconnectKind.NETWORK, None, True)]
        assert events.of("disconnected")[0].reason == "unauthorized"
    finally:
        await herald.disconnect()


async def test_token_not_renewable_in_time_reconnects_at_once_after_4001(
    standalone: Standalone, publisher: Publisher
) -> None:
    """With a token that expires in 4 s and a token source that hands out that same token
    until it has expired (nothing to refresh with in band), the server closes with 4001 at
    `exp`; the client reconnects at once with a new token from the source (the 30 s backoff
    floor shows it did not back off), renews the subscription, says it could not recover, and
    messages flow again."""
    tokens: list[str] = []

    async def get_token() -> str:
        if not tokens or time.time() >= (token_expiry(tokens[-1]) or 0):
            tokens.append(mint_token("gina", ttl=4 if not tokens else 3600))
        return tokens[-1]

    news = channel("news")
    herald = Herald(standalone.ws_url, get_token=get_token, min_delay=30, max_delay=60)
    events = Events(herald)
    sub = await herald.subscribe(news)
    recoveries: list[RecoveryFailed] = []
    sub.on("recovery_failed", recoveries.append)
    await herald.connect(timeout=10)
    try:
        await events.wait(lambda: bool(events.of("disconnected")), timeout=10, what="the 4001 close")
        closed = events.of("disconnected")[0]
        assert (closed.kind, closed.code, closed.will_reconnect) == (DisconnectKind.CLOSED, 4001, True)
        await events.wait(lambda: len(events.of("connected")) == 2, timeout=10, what="the reconnect")
        assert len(tokens) == 2, "the reconnect asked the source, which made a new token"
        await events.wait(lambda: bool(recoveries), what="the recovery event")
        assert recoveries == [RecoveryFailed(news, "no_history")]
        message_id = await publisher.publish(news, "after")
        assert (await next_message(sub)).id == message_id
    finally:
        await herald.disconnect()


async def test_disconnect_ends_everything_and_does_not_reconnect(standalone: Standalone) -> None:
    """`disconnect()` closes with 1000: the `async for` ends, requests fail, no reconnect."""
    herald = Herald(standalone.ws_url, token=mint_token("hank"), min_delay=0.01, max_delay=0.02)
    events = Events(herald)
    await herald.connect(timeout=10)
    sub = await herald.subscribe(channel("news"))
    received: list[Message] = []

    async def read() -> None:
        async for message in sub:
            received.append(message)

    reader = asyncio.create_task(read())
    await herald.disconnect()
    await asyncio.wait_for(reader, 5)
    assert herald.state is ConnectionState.DISCONNECTED
    last = events.of("disconnected")[-1]
    assert (last.kind, last.code, last.will_reconnect) == (DisconnectKind.CLIENT, 1000, False)
    with pytest.raises(ClientClosed):
        await herald.publish("chat:x", 1)
    with pytest.raises(ClientClosed):
        await herald.connect()
    assert len(events.of("connected")) == 1


async def test_publisher_errors_carry_status_and_code(standalone: Standalone) -> None:
    """The backend helper publishes batches and raises the server's status and code."""
    async with Publisher(standalone.http_url, API_KEY) as publisher:
        ids = await publisher.publish_batch(
            [PublishMessage(channel("news"), 1), {"channel": channel("news"), "data": 2, "event": "e"}]
        )
        assert len(ids) == 2 and ids[0] < ids[1]
        with pytest.raises(PublishError) as unknown:
            await publisher.publish("nowhere:x", 1)
        assert (unknown.value.status, unknown.value.code) == (422, "unknown_channel")
        with pytest.raises(PublishError) as batch:
            await publisher.publish_batch([PublishMessage("news:ok", 1), PublishMessage("bad name", 2)])
        assert batch.value.code == "invalid_channel" and "messages[1]" in batch.value.message
    async with Publisher(standalone.http_url, "wrong-key-0123456789") as publisher:
        with pytest.raises(PublishError) as unauthorized:
            await publisher.broadcast(1)
        assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")
    async with Publisher(f"http://127.0.0.1:{free_port()}", API_KEY, retries=1, retry_delay=0.01) as publisher:
        with pytest.raises(PublishError) as nobody:
            await publisher.notify("x", 1)
        assert (nobody.value.status, nobody.value.code) == (None, "network")
